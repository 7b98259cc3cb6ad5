"""Many worker processes, one truth: concurrent processing ends where a sequential run ends."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
from psycopg import sql

from tests.support import post_signed
from workers.billing.apply import SubscriptionNotYetKnown, apply
from workers.jobs.actors import process_event, settings
from workers.ops import samples

pytestmark = pytest.mark.slow  # end to end: real processes, services or a browser

SUBSCRIPTIONS = 30
LCNS_EACH = 8
STATE = (
    "license_code, status, auto_renew, expires_at, expected_expires_at, policy_mismatch, "
    "last_change_at, product_code, quantity"
)
TABLES = "emails, subscription_history, orders, subscriptions, customers"


def _events(client) -> list[int]:
    rng = random.Random(20261122)
    notifications = []
    for n in range(SUBSCRIPTIONS):
        code = f"LIC-CONC-{n:03d}"
        item = samples.SampleItem(
            code="AWDOC-TEAM-Y",
            license_ref=code,
            price="300.00",
            license_start="2026-01-01 00:00:00",
            license_exp="2027-01-01 00:00:00",
        )
        notifications.append(
            (
                "/ipn",
                samples.ipn_pairs(
                    items=(item,),
                    refno=f"RC{n}",
                    sale_date="2026-01-01 00:00:00",
                    extra={"AVANGATE_CUSTOMER_REFERENCE": f"C{n % 7}"},
                ),
            )
        )
        for k in range(LCNS_EACH):
            notifications.append(
                (
                    "/lcn",
                    samples.lcn_pairs(
                        license_code=code,
                        status=rng.choice(["ACTIVE", "PASTDUE", "DISABLED", "EXPIRED"]),
                        expiration_date=f"2027-{rng.randint(1, 12):02d}-01 00:00:00",
                        date_updated=f"2026-02-{k + 1:02d} {rng.randint(0, 23):02d}:00:00",
                        recurring=rng.random() < 0.5,
                    ),
                )
            )
    rng.shuffle(notifications)  # interleaved, LCNs even before their order
    return [post_signed(client, path, pairs) for path, pairs in notifications]


def _snapshot(conn) -> list[dict]:
    query = sql.SQL("SELECT {} FROM subscriptions ORDER BY license_code").format(sql.SQL(STATE))
    return conn.execute(query).fetchall()


def test_two_worker_processes_reach_the_state_of_a_sequential_run(client, conn, tmp_path):
    event_ids = _events(client)
    assert len(event_ids) == SUBSCRIPTIONS * (1 + LCNS_EACH)

    # The sequential reference: every event applied one by one, orders first where an LCN
    # arrived before its order (as the workers' retries do).
    pending = sorted(event_ids)
    while pending:
        retry = []
        for event_id in pending:
            with conn.transaction():
                row = conn.execute("SELECT * FROM events WHERE id = %s", (event_id,)).fetchone()
                try:
                    apply(conn, row, settings(), emails=False)
                except SubscriptionNotYetKnown:
                    retry.append(event_id)
        assert len(retry) < len(pending)
        pending = retry
    sequential = _snapshot(conn)
    assert len(sequential) == SUBSCRIPTIONS

    conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(sql.SQL(TABLES)))
    conn.execute("UPDATE events SET status = 'enqueued', attempts = 0")
    from tests.support import broker

    broker.flush_all()
    for event_id in event_ids:
        process_event.send(event_id, emails=False)

    env = {**os.environ, "MAIL_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "workers.jobs.worker",
                "--processes",
                "1",
                "--threads",
                "4",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            left = conn.execute(
                "SELECT count(*) AS n FROM events WHERE status IN ('received', 'enqueued')"
            ).fetchone()["n"]
            if left == 0:
                break
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)

    statuses = conn.execute("SELECT status, count(*) AS n FROM events GROUP BY status").fetchall()
    assert {row["status"] for row in statuses} <= {"processed", "ignored"}, statuses
    assert _snapshot(conn) == sequential
