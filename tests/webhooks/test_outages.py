"""Outages: Redis or PostgreSQL going away under a real gunicorn receiver."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.support import QUICK_OUTAGE, host_port, signed_ipn
from workers.jobs import dispatch
from workers.ops import samples

pytestmark = pytest.mark.slow  # end to end: real processes, services or a browser


def test_with_redis_down_a_notification_is_still_stored_and_acknowledged_then_relayed_once(
    conn, queued, proxy_factory, receiver_factory
):
    redis_proxy = proxy_factory(*host_port(TEST_REDIS_URL))
    receiver = receiver_factory(REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/15")
    redis_proxy.cut()

    body = signed_ipn(items=(samples.SampleItem(license_ref="LICREDIS01"),))
    response = receiver.post("/ipn", body)

    assert response.status_code == 200
    assert response.text.startswith('<sig algo="sha256"')
    event = conn.execute("SELECT id, status FROM events").fetchone()
    assert event["status"] == "received"
    assert queued() == []
    assert receiver.get("/readyz").status_code == 503

    # Redis is back (the relay runs in this process, which reaches Redis directly).
    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 1
    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 0
    assert queued() == [event["id"]]
    assert conn.execute("SELECT status FROM events").fetchone()["status"] == "enqueued"


def receiver_behind_a_database_proxy(proxy_factory, receiver_factory):
    """A receiver under gunicorn that reaches PostgreSQL through a proxy to cut; both."""
    pg_proxy = proxy_factory(*host_port(TEST_DATABASE_URL))
    dbname = TEST_DATABASE_URL.rsplit("/", 1)[1]
    receiver = receiver_factory(
        DATABASE_URL=f"postgresql://127.0.0.1:{pg_proxy.port}/{dbname}", **QUICK_OUTAGE
    )
    return pg_proxy, receiver


def test_with_the_database_down_the_receiver_answers_503_without_a_receipt_and_writes_nothing(
    conn, queued, proxy_factory, receiver_factory
):
    pg_proxy, receiver = receiver_behind_a_database_proxy(proxy_factory, receiver_factory)
    body = signed_ipn(items=(samples.SampleItem(license_ref="LICPGDOWN1"),))
    assert receiver.get("/readyz").status_code == 200  # the pool has live connections to cut

    pg_proxy.cut()
    response = receiver.post("/ipn", body)

    assert response.status_code == 503
    assert "<sig" not in response.text and "EPAYMENT" not in response.text
    assert receiver.get("/readyz").status_code == 503
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 0
    assert queued() == []

    # The database is back. The provider retries minutes later; by then the pool has reconnected
    # (it backs off between attempts), which /readyz shows.
    pg_proxy.start()
    deadline = time.monotonic() + 60
    while receiver.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    retry = receiver.post("/ipn", body)
    assert retry.status_code == 200
    assert retry.text.startswith('<sig algo="sha256"')
    rows = conn.execute("SELECT id, deliveries FROM events").fetchall()
    assert len(rows) == 1 and rows[0]["deliveries"] == 1
    assert queued() == [rows[0]["id"]]


def test_the_first_delivery_after_the_database_restarts_is_accepted(
    conn, queued, proxy_factory, receiver_factory
):
    pg_proxy, receiver = receiver_behind_a_database_proxy(proxy_factory, receiver_factory)
    first = signed_ipn(items=(samples.SampleItem(license_ref="LICRESTART1"),))
    assert receiver.post("/ipn", first).status_code == 200  # the pool holds a live connection

    pg_proxy.cut()  # the server restarts: every open connection dies with it
    pg_proxy.start()
    second = signed_ipn(items=(samples.SampleItem(license_ref="LICRESTART2"),))
    response = receiver.post("/ipn", second)

    assert response.status_code == 200, response.text
    assert response.text.startswith('<sig algo="sha256"')
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 2
    assert len(queued()) == 2


def _stored_but_never_sent(client, conn) -> tuple[bytes, int]:
    """An acknowledged notification whose message is lost, as if the process died after commit."""
    from tests.support import FORM, broker

    body = signed_ipn(items=(samples.SampleItem(license_ref="LICDIED01"),))
    assert client.post("/ipn", data=body, headers=FORM).status_code == 200
    broker.flush_all()
    event = conn.execute("SELECT id, status FROM events").fetchone()
    assert event["status"] == "enqueued"
    return body, event["id"]


def _overdue(conn, seconds: int) -> None:
    conn.execute(
        "UPDATE events SET enqueued_at = now() - make_interval(secs => %s), due_at = NULL",
        (seconds,),
    )


def test_an_event_stored_but_never_sent_is_sent_by_the_relay_once_its_job_is_overdue(
    client, conn, queued
):
    _, event_id = _stored_but_never_sent(client, conn)

    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 0  # may still be on its way
    _overdue(conn, 25)
    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 1
    assert queued() == [event_id]
    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 0  # sent again once only


def test_while_the_queue_has_a_backlog_the_relay_leaves_overdue_events_to_it(client, conn, queued):
    from workers.jobs.actors import process_event

    _, event_id = _stored_but_never_sent(client, conn)
    _overdue(conn, 25)
    process_event.send(10**9)  # another event's message, still waiting for a worker

    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 0
    _overdue(conn, 16 * 60)
    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 1
    assert queued() == [event_id, 10**9]


def test_the_providers_retry_of_an_event_whose_job_is_overdue_sends_it_again(client, conn, queued):
    from tests.support import FORM

    body, event_id = _stored_but_never_sent(client, conn)
    _overdue(conn, 25)

    assert client.post("/ipn", data=body, headers=FORM).status_code == 200

    assert queued() == [event_id]
    row = conn.execute("SELECT status, deliveries, due_at > now() - interval '5 seconds' AS fresh"
                       " FROM events").fetchone()  # fmt: skip
    assert row == {"status": "enqueued", "deliveries": 2, "fresh": True}
    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 0  # its job is due now


def test_the_providers_retry_of_an_event_on_its_way_or_applied_sends_nothing(client, conn, queued):
    from tests.support import FORM

    body, _ = _stored_but_never_sent(client, conn)
    assert client.post("/ipn", data=body, headers=FORM).status_code == 200  # not overdue yet
    assert queued() == []

    conn.execute("UPDATE events SET status = 'processed'")
    _overdue(conn, 25)
    assert client.post("/ipn", data=body, headers=FORM).status_code == 200
    assert queued() == []
    assert conn.execute("SELECT deliveries FROM events").fetchone()["deliveries"] == 3
