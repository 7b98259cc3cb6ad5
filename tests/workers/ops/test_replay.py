"""Replay: today's parser on stored bodies, real workers, real PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from psycopg import sql

from tests.support import FORM, KEY, broker, drain, post_signed, runtime_from_env, runtime_through
from workers.config import Settings
from workers.errors import BadFilter, BrokerUnavailable, EventNotFound
from workers.ops import replay, samples
from workers.protocol import form
from workers.protocol import ipn as ipn_protocol
from workers.store import events
from workers.store.reports.filters import make_filter

CATALOG_TEAM_YEARLY = """
[[product]]
code = "AWDOC-TEAM-Y"
pid = "43812"
name = "AWDoc TEAM (annual)"
product = "AWDoc"
edition = "TEAM"
edition_rank = 1
cycle = "annual"
prices = { EUR = "300.00" }
family = "AWDoc"
policy = "restart"
"""
CATALOG_TEAM_MONTHLY = """
[[product]]
code = "AWDOC-TEAM-M"
pid = "43811"
name = "AWDoc TEAM (monthly)"
product = "AWDoc"
edition = "TEAM"
edition_rank = 1
cycle = "monthly"
prices = { EUR = "30.00" }
family = "AWDoc"
policy = "restart"
"""


def ipn(license_code: str, *, refno: str, code: str = "AWDOC-TEAM-M") -> list[tuple[str, str]]:
    """A completed order for one monthly license, as the provider sends it."""
    item = samples.SampleItem(
        code=code, pid="", name="AWDoc TEAM (monthly)", license_ref=license_code, price="30.00"
    )
    return samples.ipn_pairs(
        items=(item,),
        refno=refno,
        sale_date="2026-01-10 09:00:00",
        email="mario.rossi@example.com",
        extra={"AVANGATE_CUSTOMER_REFERENCE": "CUST-1"},
    )


@pytest.fixture(name="mail_dir")
def mail_dir_fixture(monkeypatch, tmp_path) -> Path:
    """Workers write emails as files here (no SMTP server is configured)."""
    monkeypatch.setenv("MAIL_DIR", str(tmp_path / "mail"))
    monkeypatch.delenv("SMTP_URL", raising=False)
    runtime_from_env()
    yield tmp_path / "mail"


@pytest.fixture(name="catalog_file")
def catalog_file_fixture(monkeypatch, tmp_path, mail_dir) -> Path:
    """A catalog of our own, which at first lacks the monthly product."""
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG_TEAM_YEARLY, encoding="utf-8")
    monkeypatch.setenv("CATALOG", str(path))
    runtime_from_env()
    return path


def add_monthly_product(path: Path) -> None:
    """The fix: the product is added to the catalog file (a new mtime makes it reload)."""
    stat = path.stat()
    path.write_text(CATALOG_TEAM_YEARLY + CATALOG_TEAM_MONTHLY, encoding="utf-8")
    later = stat.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))


def row(conn, event_id: int) -> dict:
    return conn.execute("SELECT * FROM events WHERE id = %s", (event_id,)).fetchone()


def count(conn, table: str) -> int:
    return conn.execute(
        sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table))
    ).fetchone()["n"]


def snapshot(conn) -> dict:
    """Everything a replay could change, besides the event row itself."""
    found = {
        table: conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))
        ).fetchall()
        for table in ("customers", "subscriptions", "orders", "subscription_history", "emails")
    }
    for customer in found["customers"]:
        # Applying an order refreshes the customer from it, which stamps the row even when every
        # value is the same; the values are what must not change.
        del customer["updated_at"]
    return found


def mail_files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def queued_messages() -> list[dict]:
    raw = broker.client.hvals(f"{broker.namespace}:default.msgs")
    return sorted((json.loads(item) for item in raw), key=lambda m: m["args"][0])


def store_event(conn, body: bytes, **overrides: object) -> int:
    """Store a notification as the receiver would, without enqueueing it."""
    fields = overrides["fields"] if "fields" in overrides else form.group(form.parse_form(body))
    values = {
        "kind": "ipn",
        "dedupe_key": f"ipn:{len(body)}:{hash(body)}",
        "raw_body": body,
        "content_type": FORM["Content-Type"],
        "headers": {"User-Agent": "2Checkout IPN"},
        "fields": fields,
        "signature_algo": "sha256",
        "key_index": 0,
        "summary": ipn_protocol.summary(fields),
        "license_codes": ipn_protocol.license_codes(fields),
        "test": False,
    } | overrides
    return events.store(conn, events.NewEvent(**values)).event_id  # type: ignore[arg-type]


def signed(pairs: list[tuple[str, str]]) -> bytes:
    return form.encode(samples.sign_pairs(pairs, KEY))


def test_a_failed_event_succeeds_on_replay_once_the_catalog_knows_its_product(
    client, conn, catalog_file, mail_dir
):
    event_id = post_signed(client, "/ipn", ipn("LIC-LATE", refno="R100"))
    drain()
    failed = row(conn, event_id)
    assert failed["status"] == "failed"
    assert "AWDOC-TEAM-M" in failed["last_error"]
    assert count(conn, "subscriptions") == 0

    add_monthly_product(catalog_file)
    report = replay.replay(Settings.from_env(), [event_id])
    assert (report.event_ids, report.enqueued, report.dry_run) == ([event_id], 1, False)
    drain()

    fixed = row(conn, event_id)
    assert fixed["status"] == "processed"
    assert fixed["last_error"] is None
    assert fixed["attempts"] == failed["attempts"] + 1
    sub = conn.execute("SELECT status, product_code FROM subscriptions").fetchone()
    assert sub == {"status": "active", "product_code": "AWDOC-TEAM-M"}
    sent = conn.execute("SELECT kind, status, event_id FROM emails").fetchall()
    assert sent == [{"kind": "order_confirmation", "status": "sent", "event_id": event_id}]
    assert len(mail_files(mail_dir)) == 1


def test_replaying_a_processed_event_changes_nothing_and_sends_nothing(client, conn, mail_dir):
    event_id = post_signed(client, "/ipn", ipn("LIC-AGAIN", refno="R101"))
    drain()
    assert row(conn, event_id)["status"] == "processed"
    before, files = snapshot(conn), mail_files(mail_dir)
    assert len(before["emails"]) == 1 and len(files) == 1

    report = replay.replay(Settings.from_env(), [event_id])
    assert report.enqueued == 1
    assert row(conn, event_id)["status"] == "enqueued"
    drain()

    after = row(conn, event_id)
    assert after["status"] == "processed"
    assert after["attempts"] == 2
    assert snapshot(conn) == before
    assert mail_files(mail_dir) == files


def test_a_dry_run_says_what_would_change_and_writes_nothing(client, conn, catalog_file, mail_dir):
    event_id = post_signed(client, "/ipn", ipn("LIC-DRY", refno="R102"))
    drain()
    assert row(conn, event_id)["status"] == "failed"
    add_monthly_product(catalog_file)
    stored, before = row(conn, event_id), snapshot(conn)

    report = replay.replay(Settings.from_env(), [event_id], dry_run=True)

    assert report.dry_run is True and report.enqueued == 0
    [preview] = report.previews
    assert preview["event_id"] == event_id
    assert preview["status"] == "processed"
    assert [c["change"] for c in preview["changes"]] == ["created"]
    assert preview["changes"][0]["license_code"] == "LIC-DRY"
    assert [(e["kind"], e["to_address"]) for e in preview["emails"]] == [
        ("order_confirmation", "mario.rossi@example.com")
    ]
    assert row(conn, event_id) == stored
    assert snapshot(conn) == before
    assert queued_messages() == []
    assert mail_files(mail_dir) == []


def test_a_dry_run_of_an_event_that_still_cannot_apply_reports_the_error(
    client, conn, catalog_file
):
    event_id = post_signed(client, "/ipn", ipn("LIC-STILL", refno="R103"))
    drain()
    stored = row(conn, event_id)

    report = replay.replay(Settings.from_env(), [event_id], dry_run=True)

    assert report.previews == [{"event_id": event_id, "error": report.previews[0]["error"]}]
    assert "unknown product" in report.previews[0]["error"]
    assert row(conn, event_id) == stored


def test_a_dry_run_of_a_change_that_arrived_before_its_order_reports_it_and_goes_on(conn):
    pairs = samples.lcn_pairs(
        license_code="LIC-EARLY", expiration_date="2027-01-10", date_updated="2026-01-11 10:00:00"
    )
    body = signed(pairs)
    fields = form.group(form.parse_form(body))
    early = store_event(
        conn, body, kind="lcn", dedupe_key="early", fields=fields, license_codes=["LIC-EARLY"]
    )
    known = store_event(conn, signed(ipn("LIC-KNOWN-1", refno="R115")), dedupe_key="known")

    previews = replay.replay(Settings.from_env(), [early, known], dry_run=True).previews

    assert previews[0]["event_id"] == early
    assert previews[0]["error"].startswith("SubscriptionNotYetKnown: license LIC-EARLY")
    assert (previews[1]["event_id"], previews[1]["status"]) == (known, "processed")
    assert count(conn, "subscriptions") == 0


def test_replay_without_emails_applies_the_state_and_writes_no_outbox_rows(
    client, conn, catalog_file, mail_dir
):
    event_id = post_signed(client, "/ipn", ipn("LIC-QUIET", refno="R104"))
    drain()
    add_monthly_product(catalog_file)

    replay.replay(Settings.from_env(), [event_id], emails=False)
    assert [m["kwargs"] for m in queued_messages()] == [{"emails": False}]
    drain()

    assert row(conn, event_id)["status"] == "processed"
    assert conn.execute("SELECT status FROM subscriptions").fetchone()["status"] == "active"
    assert count(conn, "emails") == 0
    assert mail_files(mail_dir) == []


def test_replay_reads_the_stored_body_with_todays_parser_and_refreshes_the_event(conn):
    body = signed(ipn("LIC-REPARSE", refno="R105"))
    # As an older parser might have stored it: fields lost, summary and licenses wrong.
    old_reading = {"REFNO": ["R105"]}
    event_id = store_event(
        conn, body, fields=old_reading, summary="OLD", license_codes=[], test=True
    )
    conn.execute("UPDATE events SET status = 'processed', processed_at = now() WHERE id = %s",
                 (event_id,))  # fmt: skip

    report = replay.replay(Settings.from_env(), [event_id])

    refreshed = row(conn, event_id)
    assert (report.enqueued, report.refreshed) == (1, 1)
    # The old reading is dropped: the fields shown are read from the body with today's parser.
    assert refreshed["fields"] == {}
    assert events.get(conn, event_id)["fields"] == form.group(form.parse_form(body))
    assert refreshed["summary"] == "COMPLETE REGULAR"
    assert refreshed["license_codes"] == ["LIC-REPARSE"]
    assert refreshed["test"] is False
    assert refreshed["status"] == "enqueued"
    assert refreshed["processed_at"] is None
    assert refreshed["enqueued_at"] is not None
    assert [(m["args"], m["kwargs"]) for m in queued_messages()] == [([event_id], {"emails": True})]


def test_a_dry_run_reports_which_stored_columns_todays_parser_reads_differently(
    client, conn, mail_dir
):
    event_id = post_signed(client, "/ipn", ipn("LIC-COLS", refno="R106"))
    drain()
    conn.execute("UPDATE events SET summary = 'OLD' WHERE id = %s", (event_id,))

    [preview] = replay.replay(Settings.from_env(), [event_id], dry_run=True).previews

    assert preview["refreshed"] == ["summary"]
    assert preview["changes"] == [] and preview["emails"] == []
    assert row(conn, event_id)["summary"] == "OLD"


def test_a_reading_an_older_row_holds_is_compared_with_todays_and_cleared_only_if_it_differs(
    conn,
):
    body = signed(ipn("LIC-HELD", refno="R111"))
    same = store_event(conn, body)  # stored with its fields, as the receiver once did
    today = form.group(form.parse_form(body))
    stale = store_event(
        conn,
        body,
        dedupe_key="ipn:stale",
        fields={"REFNO": ["R111"]},
        summary=ipn_protocol.summary(today),
        license_codes=ipn_protocol.license_codes(today),
    )

    previews = replay.replay(Settings.from_env(), [same, stale], dry_run=True).previews
    assert [preview["refreshed"] for preview in previews] == [[], ["fields"]]

    report = replay.replay(Settings.from_env(), [same, stale])

    assert report.refreshed == 1
    assert (row(conn, same)["fields"], row(conn, stale)["fields"]) == (today, {})
    assert events.get(conn, stale)["fields"] == today


def test_an_event_todays_parser_cannot_read_keeps_its_stored_reading_and_is_reported(conn):
    good = store_event(conn, signed(ipn("LIC-OK", refno="R107")))
    bad = store_event(conn, b"REFNO=1&NAME=%FF%FE", dedupe_key="ipn:bad", fields={"REFNO": ["1"]})
    conn.execute("UPDATE events SET status = 'failed', summary = 'OLD' WHERE id = %s", (bad,))

    report = replay.replay(Settings.from_env(), [good, bad])

    assert report.enqueued == 2
    assert report.errors == [
        {"event_id": bad, "error": "cannot re-parse: field NAME: invalid UTF-8"}
    ]
    kept = row(conn, bad)
    assert (kept["fields"], kept["summary"]) == ({"REFNO": ["1"]}, "OLD")
    # The worker reads the body with the same parser and records the same error on the event.
    assert [m["args"][0] for m in queued_messages()] == [good, bad]


def test_unknown_ids_are_refused_before_anything_changes(conn):
    event_id = store_event(conn, signed(ipn("LIC-KNOWN", refno="R108")))
    stored = row(conn, event_id)

    with pytest.raises(EventNotFound, match="no event with id 999"):
        replay.replay(Settings.from_env(), [event_id, 999])

    assert row(conn, event_id) == stored
    assert queued_messages() == []


def test_a_bulk_replay_enqueues_every_event_across_chunks_once(conn):
    body = signed(ipn("LIC-BULK", refno="R109"))
    total = replay.CHUNK * 2 + 17
    conn.execute(
        """
        INSERT INTO events (kind, dedupe_key, raw_body, content_type, fields, signature_algo,
                            key_index, status)
        SELECT 'ipn', 'bulk:' || g, %s, 'application/x-www-form-urlencoded', '{}', 'sha256', 0,
               'failed'
        FROM generate_series(1, %s) AS g
        """,
        (body, total),
    )
    ids = replay.select_ids(Settings.from_env(), events.EventFilter(), failed_only=True)
    assert len(ids) == total

    report = replay.replay(Settings.from_env(), ids, emails=False)

    assert (report.enqueued, report.refreshed, report.errors) == (total, total, [])
    messages = queued_messages()
    assert [m["args"][0] for m in messages] == ids
    assert {json.dumps(m["kwargs"]) for m in messages} == {'{"emails": false}'}
    assert {m["actor_name"] for m in messages} == {"process_event"}
    statuses = conn.execute("SELECT status, count(*) AS n FROM events GROUP BY status").fetchall()
    assert statuses == [{"status": "enqueued", "n": total}]
    summary = ipn_protocol.summary(form.group(form.parse_form(body)))
    refreshed = conn.execute(
        "SELECT count(*) AS n FROM events WHERE summary = %s AND fields = '{}'", (summary,)
    ).fetchone()
    assert refreshed["n"] == total


def test_when_redis_is_down_a_replay_fails_clearly_and_changes_nothing(conn, proxy_factory):
    event_id = store_event(conn, signed(ipn("LIC-DOWN", refno="R110")), summary="OLD")
    conn.execute("UPDATE events SET status = 'failed', last_error = 'boom' WHERE id = %s",
                 (event_id,))  # fmt: skip
    stored = row(conn, event_id)
    redis_at = broker.client.connection_pool.connection_kwargs
    proxy = proxy_factory(redis_at["host"], redis_at["port"])
    cut_off = runtime_through(proxy).broker
    proxy.cut()

    with pytest.raises(BrokerUnavailable, match="broker unavailable after 0 of 1"):
        replay.replay(Settings.from_env(), [event_id])

    cut_off.client.close()
    assert row(conn, event_id) == stored


def test_select_ids_takes_the_failed_events_a_filter_names_oldest_first(conn):
    first = store_event(conn, signed(ipn("LIC-A", refno="R111")), dedupe_key="a")
    second = store_event(conn, signed(ipn("LIC-B", refno="R112")), dedupe_key="b")
    third = store_event(conn, signed(ipn("LIC-A", refno="R113")), dedupe_key="c")
    conn.execute("UPDATE events SET status = 'failed' WHERE id = ANY(%s)", ([first, second],))
    env = Settings.from_env()

    assert replay.select_ids(env, events.EventFilter(), failed_only=True) == [first, second]
    by_license = make_filter(license_code="LIC-A")
    assert replay.select_ids(env, by_license, failed_only=True) == [first]
    assert replay.select_ids(env, by_license, failed_only=False) == [first, third]
    with pytest.raises(BadFilter, match="status 'processed'"):
        replay.select_ids(env, events.EventFilter(status="processed"), failed_only=True)
