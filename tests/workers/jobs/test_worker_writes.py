"""The worker's path: the event claimed with its subscriptions, writes held back and sent with the
outcome, emails committed already enqueued. It must write exactly what applying statement by
statement writes, in as few statements as it claims."""

from __future__ import annotations

import dataclasses
import os

import psycopg
import pytest
from psycopg import sql

from tests.conftest import TEST_DATABASE_URL
from tests.support import drain, post_signed
from tests.workers.billing.apply.support import ipn, lcn
from workers.billing.apply import apply
from workers.jobs.actors import apply_event, settings
from workers.store import db, events
from workers.store import outbox as store_outbox

TABLES = (
    "event_attempts",
    "orders",
    "subscription_history",
    "emails",
    "subscriptions",
    "customers",
)

# Every row the rules write, without ids and instants that differ from run to run by design.
SNAPSHOT = {
    "subscriptions": """
        SELECT license_code, product_code, status, quantity, auto_renew, price_paid,
               purchase_price, period_start, expires_at, expected_expires_at, policy_mismatch,
               last_order_ref, last_change_at, past_due_since, c.customer_key
        FROM subscriptions s JOIN customers c ON c.id = s.customer_id ORDER BY license_code
    """,
    "history": """
        SELECT s.license_code, h.event_id, h.change, h.before, h.after, h.note
        FROM subscription_history h JOIN subscriptions s ON s.id = h.subscription_id
        ORDER BY h.id
    """,
    "orders": """
        SELECT event_id, refno, kind, order_status, amount, currency FROM orders ORDER BY id
    """,
    "emails": """
        SELECT event_id, kind, fact, to_address, locale, context - 'message_id' AS context
        FROM emails ORDER BY id
    """,
    "attempts": """
        SELECT event_id, requested_by, retry, status, outcome FROM event_attempts ORDER BY id
    """,
    "events": "SELECT id, status, outcome, attempts FROM events ORDER BY id",
    "customers": "SELECT customer_key, email, first_name, last_name, locale FROM customers",
}


def snapshot(conn: psycopg.Connection) -> dict[str, list[dict]]:
    return {name: conn.execute(query).fetchall() for name, query in SNAPSHOT.items()}


def history_of_two_subscriptions(client) -> list[int]:
    """Purchases, renewals, a payment failure and its recovery, a stale LCN and a refund."""
    posts = [
        ("/ipn", ipn("LIC-W1", refno="W1", at="2026-01-10 09:00:00")),
        ("/ipn", ipn("LIC-W2", refno="W2", at="2026-01-11 09:00:00", language="it")),
        ("/lcn", lcn("LIC-W1", expires="2026-02-10 09:00:00", updated="2026-01-12 10:00:00",
                     recurring=True)),
        ("/lcn", lcn("LIC-W1", status="PASTDUE", expires="2026-02-10 09:00:00",
                     updated="2026-02-10 10:00:00", recurring=True)),
        ("/ipn", ipn("LIC-W1", refno="W3", at="2026-02-11 09:00:00", license_type="RENEWAL")),
        ("/lcn", lcn("LIC-W1", expires="2026-03-10 09:00:00", updated="2026-02-11 09:05:00",
                     recurring=True)),
        ("/lcn", lcn("LIC-W1", expires="2026-02-10 09:00:00", updated="2026-01-20 10:00:00")),
        ("/ipn", ipn("LIC-W2", refno="W2", status="REFUND", at="2026-01-15 09:00:00")),
    ]  # fmt: skip
    return [post_signed(client, path, pairs) for path, pairs in posts]


def test_the_worker_writes_what_applying_statement_by_statement_writes(client, conn):
    event_ids = history_of_two_subscriptions(client)
    drain(threads=1)  # in order: the worker's path, writes held back and sent with the outcome
    by_worker = snapshot(conn)
    statuses = [row["status"] for row in by_worker["events"]]
    assert statuses == ["processed"] * 6 + ["ignored", "processed"]  # the stale LCN: a note
    assert any(row["change"] == "stale" for row in by_worker["history"])
    assert by_worker["emails"] and by_worker["attempts"]

    names = sql.SQL(", ").join(map(sql.Identifier, TABLES))
    conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))
    conn.execute("UPDATE events SET status = 'enqueued', attempts = 0, outcome = NULL")
    for event_id in event_ids:  # each write sent as it is made, the outcome after them
        with conn.transaction():
            row = conn.execute("SELECT * FROM events WHERE id = %s FOR UPDATE", (event_id,))
            applied = apply(conn, row.fetchone(), settings())
            events.finish(conn, event_id, status=applied.status, outcome=applied.outcome)
    one_by_one = snapshot(conn)

    assert by_worker == one_by_one


class Statements:
    """Counts the statements sent through psycopg connections (BEGIN and COMMIT aside)."""

    def __init__(self, monkeypatch) -> None:
        self.sent: list[str] = []
        execute = psycopg.Connection.execute

        def counted(conn, query, *args, **kwargs):
            self.sent.append(query.decode() if isinstance(query, bytes) else str(query))
            return execute(conn, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "execute", counted)


def test_an_lcn_is_applied_with_two_statements_and_a_renewal_order_with_four(
    client, conn, monkeypatch
):
    post_signed(client, "/ipn", ipn("LIC-S1", refno="S1", at="2026-01-10 09:00:00"))
    drain()
    change = post_signed(
        client,
        "/lcn",
        lcn("LIC-S1", expires="2026-02-10 09:00:00", updated="2026-01-12 10:00:00", recurring=True),
    )
    renewal = post_signed(
        client,
        "/ipn",
        ipn("LIC-S1", refno="S2", at="2026-02-09 09:00:00", license_type="RENEWAL"),
    )
    statements = Statements(monkeypatch)

    assert apply_event(change, emails=False)
    assert len(statements.sent) == 2  # the claim (event and subscription), the outcome
    assert apply_event(renewal, emails=False)
    assert len(statements.sent) == 2 + 4  # claim, customer, order, the outcome with the writes
    history = conn.execute("SELECT change FROM subscription_history ORDER BY id").fetchall()
    assert [row["change"] for row in history] == ["created", "license", "renewed"]


def test_claiming_an_event_locks_the_subscription_it_names_but_not_once_applied(client, conn):
    post_signed(client, "/ipn", ipn("LIC-C1", refno="C1", at="2026-01-10 09:00:00"))
    drain()
    waiting = post_signed(
        client, "/lcn", lcn("LIC-C1", expires="2026-02-10 09:00:00", updated="2026-01-12 10:00:00")
    )
    lock = "SELECT 1 FROM subscriptions WHERE license_code = 'LIC-C1' FOR UPDATE NOWAIT"
    with db.connection(TEST_DATABASE_URL) as claiming, claiming.transaction():
        claimed = events.claim(claiming, waiting)
        assert claimed is not None and claimed["kind"] == "lcn"
        assert claimed["subscriptions"]["LIC-C1"]["status"] == "active"
        customer = claimed["customers"][claimed["subscriptions"]["LIC-C1"]["customer_id"]]
        assert customer["email"] == "mario.rossi@example.com"
        with pytest.raises(psycopg.errors.LockNotAvailable), conn.transaction():
            conn.execute(lock)
    drain()
    with db.connection(TEST_DATABASE_URL) as claiming, claiming.transaction():
        claimed = events.claim(claiming, waiting)
        assert claimed is not None and claimed["status"] == "processed"
        assert claimed["subscriptions"] == {}
        with conn.transaction():
            assert conn.execute(lock).fetchone()  # a duplicate message holds no subscription
    with db.connection(TEST_DATABASE_URL) as claiming:
        assert events.claim(claiming, 987654) is None


def test_a_worker_commits_its_emails_already_enqueued(client, conn):
    post_signed(client, "/ipn", ipn("LIC-E1", refno="E1", at="2026-01-10 09:00:00"))
    drain()
    row = conn.execute("SELECT status, enqueued_at, due_at FROM emails").fetchone()
    assert row["status"] == "sent"
    assert row["enqueued_at"] is not None and row["due_at"] is not None
    assert store_outbox.due(conn, older_than_seconds=0, stale_after_seconds=20, limit=10) == []


def test_with_redis_down_a_worker_s_emails_are_committed_and_left_for_the_relay(
    client, conn, redis_down
):
    from tests.support import broker

    event_id = post_signed(client, "/ipn", ipn("LIC-E2", refno="E2", at="2026-01-10 09:00:00"))
    broker.flush_all()  # this test applies the event itself

    assert apply_event(event_id) == "LIC-E2: active until 2026-02-10T09:00:00Z"

    row = conn.execute("SELECT id, status, enqueued_at, due_at FROM emails").fetchone()
    assert (row["status"], row["enqueued_at"], row["due_at"]) == ("pending", None, None)
    assert conn.execute("SELECT status FROM events").fetchone()["status"] == "processed"
    due = store_outbox.due(conn, older_than_seconds=0, stale_after_seconds=20, limit=10)
    assert due == [row["id"]]  # the relay sends it once Redis is back


def test_a_delivered_event_may_take_the_catalog_read_within_the_second_a_replay_reads_the_file(
    tmp_path, monkeypatch
):
    from tests.workers.ops.test_replay import CATALOG_TEAM_MONTHLY, CATALOG_TEAM_YEARLY
    from workers.billing.apply import run

    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG_TEAM_YEARLY, encoding="utf-8")
    configured = dataclasses.replace(settings(), catalog_path=str(path))
    first = run.catalog(configured)
    path.write_text(CATALOG_TEAM_YEARLY + CATALOG_TEAM_MONTHLY, encoding="utf-8")
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))

    assert run.catalog(configured, fresh=False) is first  # looked at less than a second ago
    assert run.catalog(configured).get("AWDOC-TEAM-M") is not None  # a replay's: the file now
    path.write_text(CATALOG_TEAM_YEARLY, encoding="utf-8")
    os.utime(path, ns=(later + 10**9, later + 10**9))
    monkeypatch.setattr(run, "CATALOG_RECHECK_SECONDS", 0.0)
    assert run.catalog(configured, fresh=False).get("AWDOC-TEAM-M") is None  # once due, the file


def test_the_claim_reads_customers_by_key_even_as_planned_on_empty_tables(conn):
    # A worker's connection plans the claim once, often while the tables are still empty, and
    # keeps that plan: it must not be one that reads every customer for each event.
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        # The claim's own constant text, its one placeholder written as the statement's $1.
        claim = sql.SQL(events._CLAIM.replace("%s", "$1"))
        conn.execute(sql.SQL("PREPARE claim_plan(bigint) AS {}").format(claim))
        plan = "\n".join(row["QUERY PLAN"] for row in conn.execute("EXPLAIN EXECUTE claim_plan(1)"))
        conn.execute("DEALLOCATE claim_plan")
    assert "Index Scan using customers_pkey on customers" in plan
    assert "Seq Scan" not in plan
