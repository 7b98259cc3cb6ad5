"""GET /metrics: Prometheus text that moves with what the receiver and the database see."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REDIS_NAMESPACE, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.support import FORM, QUICK_OUTAGE, host_port, signed_ipn
from webhooks import metrics
from workers.ops import samples
from workers.protocol import form

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Scrape:
    """Every sample of a scrape, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: Scrape, name: str, **labels: str) -> float:
    """One sample's value, 0 when the series is not there yet."""
    return scrape.get((name, frozenset(labels.items())), 0.0)


def _store_event(conn, *, status: str, age_seconds: int, key: str) -> None:
    conn.execute(
        """
        INSERT INTO events (kind, dedupe_key, status, raw_body, content_type, fields,
                            signature_algo, key_index, received_at)
        VALUES ('lcn', %s, %s, '', 'application/x-www-form-urlencoded', '{}', 'sha256', 0,
                now() - make_interval(secs => %s))
        """,
        (key, status, age_seconds),
    )


def test_the_scrape_is_prometheus_text_with_every_documented_family(client, conn):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "rinnovo_events",
        "rinnovo_event_queue_lag_seconds",
        "rinnovo_emails",
        "rinnovo_email_queue_lag_seconds",
        "rinnovo_subscriptions",
        "rinnovo_policy_mismatches",
        "rinnovo_metrics_source_up",
        "rinnovo_notifications_received",
        "rinnovo_receipt_latency_seconds",
    } <= names
    scrape = parse(response.text)
    assert value(scrape, "rinnovo_metrics_source_up", source="database") == 1
    assert value(scrape, "rinnovo_metrics_source_up", source="redis") == 1


def test_an_accepted_notification_moves_the_counter_the_latency_histogram_and_events_by_status(
    client, conn
):
    before = parse(client.get("/metrics").text)

    assert client.post("/ipn", data=signed_ipn(), headers=FORM).status_code == 200

    after = parse(client.get("/metrics").text)
    received = "rinnovo_notifications_received_total"
    assert value(after, received, kind="ipn", outcome="accepted") == (
        value(before, received, kind="ipn", outcome="accepted") + 1
    )
    count = "rinnovo_receipt_latency_seconds_count"
    assert value(after, count, kind="ipn") == value(before, count, kind="ipn") + 1
    inf = "rinnovo_receipt_latency_seconds_bucket"
    assert value(after, inf, kind="ipn", le="+Inf") == value(before, inf, kind="ipn", le="+Inf") + 1
    assert value(after, "rinnovo_receipt_latency_seconds_sum", kind="ipn") > value(
        before, "rinnovo_receipt_latency_seconds_sum", kind="ipn"
    )
    assert value(before, "rinnovo_events", status="enqueued") == 0
    assert value(after, "rinnovo_events", status="enqueued") == 1


def test_each_refusal_and_each_duplicate_is_counted_under_its_own_outcome(client, conn):
    received = "rinnovo_notifications_received_total"
    before = parse(client.get("/metrics").text)
    body = signed_ipn()
    pairs = form.parse_form(body)
    tampered = form.encode([(n, "EUR" if n == "CURRENCY" else v) for n, v in pairs][:-1])
    tampered += b"&SIGNATURE_SHA2_256=" + b"0" * 64
    malformed = form.encode(
        samples.sign_pairs(samples.ipn_pairs(ipn_date="yesterday"), "AABBCCDDEEFF")
    )

    assert client.post("/ipn", data=body, headers=FORM).status_code == 200
    assert client.post("/ipn", data=body, headers=FORM).status_code == 200
    assert client.post("/ipn", data=tampered, headers=FORM).status_code == 400
    assert client.post("/lcn", data=malformed, headers=FORM).status_code == 400
    assert (
        client.post("/ins", data=b"{}", headers={"Content-Type": "application/json"}).status_code
        == 415
    )

    after = parse(client.get("/metrics").text)
    expected = {
        ("ipn", "accepted"): 1,
        ("ipn", "duplicate"): 1,
        ("ipn", "bad_signature"): 1,
        ("lcn", "malformed"): 1,
        ("ins", "unsupported_media_type"): 1,
    }
    for (kind, outcome), moved in expected.items():
        assert (
            value(after, received, kind=kind, outcome=outcome)
            - value(before, received, kind=kind, outcome=outcome)
            == moved
        ), (kind, outcome)
    # Only acknowledged deliveries have a receipt latency: the accepted one and the duplicate.
    count = "rinnovo_receipt_latency_seconds_count"
    assert value(after, count, kind="ipn") - value(before, count, kind="ipn") == 2


def test_queue_lag_is_the_age_of_the_oldest_event_not_yet_applied(client, conn):
    assert value(parse(client.get("/metrics").text), "rinnovo_event_queue_lag_seconds") == 0

    _store_event(conn, status="processed", age_seconds=3600, key="lcn:done")
    _store_event(conn, status="enqueued", age_seconds=90, key="lcn:waiting")
    _store_event(conn, status="received", age_seconds=20, key="lcn:new")

    scrape = parse(client.get("/metrics").text)
    assert 90 <= value(scrape, "rinnovo_event_queue_lag_seconds") < 120
    assert value(scrape, "rinnovo_events", status="processed") == 1
    assert value(scrape, "rinnovo_events", status="enqueued") == 1
    assert value(scrape, "rinnovo_events", status="received") == 1
    assert value(scrape, "rinnovo_events", status="failed") == 0


def test_emails_subscriptions_and_policy_mismatches_are_read_from_the_database(client, conn):
    customer = conn.execute(
        "INSERT INTO customers (email, customer_key) VALUES ('a@example.com', 'a') RETURNING id"
    ).fetchone()["id"]
    subscription_ids = []
    for code, status, mismatch in [
        ("LIC1", "active", True),
        ("LIC2", "active", False),
        ("LIC3", "expired", True),
    ]:
        subscription_ids.append(
            conn.execute(
                """
                INSERT INTO subscriptions (license_code, customer_id, product_code, product,
                                           status, policy_mismatch)
                VALUES (%s, %s, 'AWDOC-TEAM-M', 'AWDoc', %s, %s) RETURNING id
                """,
                (code, customer, status, mismatch),
            ).fetchone()["id"]
        )
    for fact, status, age in [
        ("1", "sent", 0),
        ("2", "sent", 0),
        ("3", "failed", 0),
        ("4", "pending", 300),
    ]:
        conn.execute(
            """
            INSERT INTO emails (subscription_id, kind, fact, to_address, locale, status,
                                message_id, created_at)
            VALUES (%s, 'order_confirmation', %s, 'a@example.com', 'en', %s, %s,
                    now() - make_interval(secs => %s))
            """,
            (subscription_ids[0], fact, status, f"<{fact}@rinnovo>", age),
        )

    scrape = parse(client.get("/metrics").text)

    assert value(scrape, "rinnovo_emails", status="sent") == 2
    assert value(scrape, "rinnovo_emails", status="failed") == 1
    assert value(scrape, "rinnovo_emails", status="pending") == 1
    assert value(scrape, "rinnovo_emails", status="sending") == 0
    assert 300 <= value(scrape, "rinnovo_email_queue_lag_seconds") < 330
    assert value(scrape, "rinnovo_subscriptions", status="active") == 2
    assert value(scrape, "rinnovo_subscriptions", status="expired") == 1
    assert value(scrape, "rinnovo_policy_mismatches") == 2


def test_counts_add_up_across_gunicorn_worker_processes(conn, receiver_factory):
    # A namespace of its own, so that no other test's counts share the hash.
    receiver = receiver_factory(workers=3, REDIS_NAMESPACE=f"{REDIS_NAMESPACE}-workers")
    received = "rinnovo_notifications_received_total"
    before = value(parse(receiver.get("/metrics").text), received, kind="ipn", outcome="accepted")

    bodies = [signed_ipn() for _ in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda body: receiver.post("/ipn", body).status_code, bodies))
    assert statuses == [200] * 12

    # Each worker writes its counts within a second (metrics.FLUSH_EVERY) of recording them.
    deadline = time.monotonic() + 10 * metrics.FLUSH_EVERY
    scrape = parse(receiver.get("/metrics").text)
    while value(scrape, received, kind="ipn", outcome="accepted") < before + 12:
        assert time.monotonic() < deadline, "the workers' counts did not reach Redis"
        time.sleep(0.1)
        scrape = parse(receiver.get("/metrics").text)
    for _ in range(3):  # whichever worker process answers the scrape, it sees all twelve
        scrape = parse(receiver.get("/metrics").text)
        assert value(scrape, received, kind="ipn", outcome="accepted") == before + 12
        assert value(scrape, "rinnovo_receipt_latency_seconds_count", kind="ipn") == before + 12
        assert value(scrape, "rinnovo_events", status="enqueued") == 12


def test_with_redis_cut_off_deliveries_are_still_received_and_the_scrape_says_redis_is_down(
    conn, proxy_factory, receiver_factory
):
    redis_proxy = proxy_factory(*host_port(TEST_REDIS_URL))
    receiver = receiver_factory(REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/15")
    assert receiver.post("/ipn", signed_ipn()).status_code == 200
    counted = parse(receiver.get("/metrics").text)
    assert value(counted, "rinnovo_metrics_source_up", source="redis") == 1

    redis_proxy.cut()
    assert receiver.post("/ipn", signed_ipn()).status_code == 200
    response = receiver.get("/metrics")

    assert response.status_code == 200
    scrape = parse(response.text)
    assert value(scrape, "rinnovo_metrics_source_up", source="redis") == 0
    assert value(scrape, "rinnovo_metrics_source_up", source="database") == 1
    assert value(scrape, "rinnovo_events", status="enqueued") == 1
    assert value(scrape, "rinnovo_events", status="received") == 1
    assert not any(name == "rinnovo_notifications_received_total" for name, _ in scrape)


def test_with_the_database_cut_off_the_scrape_still_answers_and_says_the_database_is_down(
    conn, proxy_factory, receiver_factory
):
    pg_proxy = proxy_factory(*host_port(TEST_DATABASE_URL))
    dbname = TEST_DATABASE_URL.rsplit("/", 1)[1]
    receiver = receiver_factory(
        DATABASE_URL=f"postgresql://127.0.0.1:{pg_proxy.port}/{dbname}", **QUICK_OUTAGE
    )
    assert receiver.get("/readyz").status_code == 200

    pg_proxy.cut()
    response = receiver.get("/metrics")

    assert response.status_code == 200
    scrape = parse(response.text)
    assert value(scrape, "rinnovo_metrics_source_up", source="database") == 0
    assert value(scrape, "rinnovo_metrics_source_up", source="redis") == 1
    assert not any(name == "rinnovo_events" for name, _ in scrape)


def test_counts_recorded_while_redis_is_gone_are_kept_and_written_once_it_is_back(
    proxy_factory,
):
    proxy = proxy_factory(*host_port(TEST_REDIS_URL))
    client = redis.Redis(port=proxy.port, db=15, socket_timeout=1, socket_connect_timeout=1)
    counters = metrics.ReceiverCounters(client, key="rinnovo:metrics:test-outage", flush_every=60)
    try:
        counters.record("ipn", "accepted", 0.003)
        assert counters.flush() is True
        proxy.cut()
        counters.record("ipn", "accepted", 0.02)
        counters.record("lcn", "malformed")
        assert counters.flush() is False
        counters.record("ipn", "duplicate", 0.004)
        proxy.start()

        assert counters.flush() is True
        assert counters.flush() is True  # nothing left: nothing is written twice
        assert counters.read() == {
            "deliveries|ipn|accepted": "2",
            "deliveries|ipn|duplicate": "1",
            "deliveries|lcn|malformed": "1",
            "latency|ipn|0.005": "2",
            "latency|ipn|0.025": "1",
            "latency_sum|ipn": "0.027",
        }
    finally:
        client.delete(counters.key)
        client.close()


@pytest.mark.parametrize(
    ("kind", "outcome", "field"),
    [
        ("ipn", "accepted", "deliveries|ipn|accepted"),
        ("favicon.ico", "too_large", "deliveries|other|too_large"),
        ("lcn", "something_new", "deliveries|lcn|other"),
    ],
)
def test_labels_outside_the_known_kinds_and_outcomes_are_counted_as_other(
    kind: str, outcome: str, field: str
):
    client = redis.Redis.from_url(TEST_REDIS_URL)
    counters = metrics.ReceiverCounters(client, key="rinnovo:metrics:test-labels")
    try:
        counters.record(kind, outcome)
        assert counters.read() == {field: "1"}
    finally:
        client.delete(counters.key)
        client.close()


def test_latency_buckets_are_cumulative_in_the_exposition():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    counters = metrics.ReceiverCounters(client, key="rinnovo:metrics:test-buckets")
    try:
        for seconds in (0.004, 0.02, 0.02, 3.0, 45.0):
            counters.record("lcn", "accepted", seconds)
        (latency,) = [
            family
            for family in counters.families(counters.read())
            if family.name == "rinnovo_receipt_latency_seconds"
        ]
        buckets = {s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket")}
        assert buckets["0.005"] == 1
        assert buckets["0.025"] == 3
        assert buckets["2.5"] == 3
        assert buckets["5.0"] == 4
        assert buckets["30.0"] == 4
        assert buckets["+Inf"] == 5
        (total,) = [s.value for s in latency.samples if s.name.endswith("_sum")]
        assert total == pytest.approx(48.044)
    finally:
        client.delete(counters.key)
        client.close()
