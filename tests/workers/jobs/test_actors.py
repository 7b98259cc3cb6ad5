"""The process_event actor: retries, the final `failed` status, and running twice."""

from __future__ import annotations

from tests.conftest import TEST_DATABASE_URL
from tests.support import drain, post_signed
from workers.jobs.actors import apply_event, process_event
from workers.ops import samples


def _lcn_for_unknown_license(client) -> int:
    pairs = samples.lcn_pairs(
        license_code="LIC-NEVER-ORDERED",
        expiration_date="2027-01-01 00:00:00",
        date_updated="2026-11-22 10:00:00",
    )
    return post_signed(client, "/lcn", pairs)


def test_a_transient_failure_is_retried_and_the_last_attempt_marks_the_event_failed(client, conn):
    event_id = _lcn_for_unknown_license(client)
    conn.execute("UPDATE events SET status = 'enqueued' WHERE id = %s", (event_id,))
    from tests.support import broker

    broker.flush_all()  # drop the receiver's message: this one carries short retry options
    process_event.send_with_options(args=(event_id,), max_retries=2, min_backoff=10, max_backoff=20)
    drain()

    row = conn.execute("SELECT * FROM events WHERE id = %s", (event_id,)).fetchone()
    assert row["status"] == "failed"
    assert row["attempts"] == 3
    assert row["last_error"].startswith("SubscriptionNotYetKnown: license LIC-NEVER-ORDERED")
    assert "Traceback" in row["last_traceback"]
    attempts = conn.execute(
        "SELECT requested_by, retry, status, outcome FROM event_attempts ORDER BY id"
    ).fetchall()
    assert [(a["requested_by"], a["retry"], a["status"]) for a in attempts] == [
        ("delivery", 0, "retrying"),
        ("delivery", 1, "retrying"),
        ("delivery", 2, "failed"),
    ]
    assert all(a["outcome"].startswith("SubscriptionNotYetKnown") for a in attempts)


def test_running_the_actor_twice_for_one_event_applies_it_once(client, conn):
    item = samples.SampleItem(license_ref="LIC-ACT-TWICE")
    event_id = post_signed(client, "/ipn", samples.ipn_pairs(items=(item,), refno="A1"))
    drain()
    assert apply_event(event_id) is None  # already processed: nothing left to do
    assert conn.execute("SELECT count(*) AS n FROM subscription_history").fetchone()["n"] == 1
    assert conn.execute("SELECT count(*) AS n FROM emails").fetchone()["n"] == 1


def test_an_event_that_does_not_exist_is_a_no_op(conn):
    assert apply_event(987654) is None


def test_an_event_the_relay_hands_over_is_recorded_as_the_relay_s_attempt(client, conn):
    from tests.support import broker
    from workers.jobs import dispatch

    item = samples.SampleItem(license_ref="LIC-RELAYED")
    event_id = post_signed(client, "/ipn", samples.ipn_pairs(items=(item,), refno="A2"))
    broker.flush_all()  # as if Redis had refused the receiver's message
    conn.execute("UPDATE events SET status = 'received' WHERE id = %s", (event_id,))

    assert dispatch.relay(TEST_DATABASE_URL, older_than_seconds=0) == 1
    drain()

    attempt = conn.execute("SELECT * FROM event_attempts WHERE event_id = %s", (event_id,))
    assert [(a["requested_by"], a["status"]) for a in attempt.fetchall()] == [
        ("relay", "processed")
    ]
