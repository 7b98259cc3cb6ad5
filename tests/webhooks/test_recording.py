"""Deliveries in flight together share one INSERT and one Redis round trip (group commit)."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.conftest import TEST_DATABASE_URL
from tests.support import broker
from webhooks.recording import GroupCommit, Recorder
from workers.errors import ValueNotStorable
from workers.jobs import broker as jobs_broker
from workers.store import events


class Gate:
    """A work function whose first run waits until told, recording every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[str]) -> list[str | BaseException]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.started.set()
            assert self.release.wait(10)
        return [f"done {item}" for item in items]


def _submit_all(group: GroupCommit[str, str], items: list[str], gate: Gate) -> dict[str, object]:
    outcomes: dict[str, object] = {}

    def submit(item: str) -> None:
        try:
            outcomes[item] = group.submit(item)
        except Exception as exc:  # the test reads what each caller got
            outcomes[item] = exc

    first = threading.Thread(target=submit, args=(items[0],))
    first.start()
    assert gate.started.wait(10)
    others = [threading.Thread(target=submit, args=(item,)) for item in items[1:]]
    for thread in others:
        thread.start()
    time.sleep(0.2)  # every other caller is waiting now
    gate.release.set()
    for thread in [first, *others]:
        thread.join(10)
    return outcomes


def test_callers_that_come_during_a_run_are_run_together_next():
    gate = Gate()
    group: GroupCommit[str, str] = GroupCommit(gate, key=lambda item: item)

    outcomes = _submit_all(group, ["a", "b", "c", "d"], gate)

    assert gate.batches[0] == ["a"]
    assert sorted(gate.batches[1]) == ["b", "c", "d"] and len(gate.batches) == 2
    assert outcomes == {item: f"done {item}" for item in "abcd"}


def test_two_items_with_the_same_key_never_share_a_run():
    gate = Gate()
    group: GroupCommit[str, str] = GroupCommit(gate, key=lambda item: item[0])

    outcomes = _submit_all(group, ["a", "b1", "b2", "c"], gate)

    assert [sorted(batch) for batch in gate.batches[1:]] in (
        [["b1", "c"], ["b2"]],
        [["b2", "c"], ["b1"]],
    )
    assert outcomes == {item: f"done {item}" for item in ["a", "b1", "b2", "c"]}


def test_an_error_of_a_run_is_raised_by_each_of_its_callers_and_the_next_run_goes_on():
    gate = Gate()
    failing = {"run": 1}

    def work(items: list[str]) -> list[str | BaseException]:
        outcome = gate(items)
        if len(gate.batches) == 2 and failing["run"]:
            raise RuntimeError("lost")
        return outcome

    group: GroupCommit[str, str] = GroupCommit(work, key=lambda item: item)
    outcomes = _submit_all(group, ["a", "b", "c"], gate)

    assert outcomes["a"] == "done a"
    assert [str(outcomes[item]) for item in "bc"] == ["lost", "lost"]
    assert group.submit("d") == "done d"  # not stuck


def _event(dedupe_key: str) -> events.NewEvent:
    return events.NewEvent(
        kind="lcn",
        dedupe_key=dedupe_key,
        raw_body=b"LICENSE_CODE=L1",
        content_type="application/x-www-form-urlencoded",
        headers={},
        fields=None,
        signature_algo="sha256",
        key_index=0,
        summary="ACTIVE",
        license_codes=["L1"],
        test=False,
    )


def test_a_batch_with_a_value_the_database_cannot_hold_refuses_that_delivery_only(conn, queued):
    recorder = Recorder(TEST_DATABASE_URL)
    unstorable = secrets.token_hex(4000)  # too large for the dedupe key's index, incompressible

    outcomes = recorder._record([_event("lcn:first"), _event(unstorable), _event("lcn:third")])

    assert isinstance(outcomes[1], ValueNotStorable)
    stored = [outcome.stored for outcome in outcomes if not isinstance(outcome, BaseException)]
    assert [found.inserted for found in stored] == [True, True]
    assert queued() == sorted(found.event_id for found in stored)
    keys = conn.execute("SELECT dedupe_key FROM events ORDER BY id").fetchall()
    assert [row["dedupe_key"] for row in keys] == ["lcn:first", "lcn:third"]


def test_one_statement_stores_new_and_known_events_and_sends_only_the_new(conn, queued):
    recorder = Recorder(TEST_DATABASE_URL)
    known = recorder.record(_event("lcn:known")).stored
    broker.flush_all()

    outcomes = recorder._record([_event("lcn:new"), _event("lcn:known")])

    assert not any(isinstance(outcome, BaseException) for outcome in outcomes)
    new, again = (outcome.stored for outcome in outcomes)  # type: ignore[union-attr]
    assert (new.inserted, again.inserted, again.event_id) == (True, False, known.event_id)
    assert queued() == [new.event_id]
    row = conn.execute("SELECT deliveries FROM events WHERE id = %s", (known.event_id,))
    assert row.fetchone()["deliveries"] == 2


def test_a_stored_event_shows_the_fields_its_body_holds(conn):
    stored = Recorder(TEST_DATABASE_URL).record(_event("lcn:shown")).stored

    assert conn.execute("SELECT fields FROM events").fetchone()["fields"] == {}
    shown = events.get(conn, stored.event_id)
    assert shown is not None and shown["fields"] == {"LICENSE_CODE": ["L1"]}


def test_a_batch_is_sent_even_when_redis_does_not_know_the_dispatch_script(queued, conn):
    known = broker.scripts["dispatch"]
    # The same script under a digest Redis has never seen, as after a restart with no scripts.
    text = known.script.decode() if isinstance(known.script, bytes) else known.script
    fresh = f"-- {secrets.token_hex(8)}\n{text}"
    broker.scripts["dispatch"] = broker.client.register_script(fresh)
    try:
        sent = jobs_broker.send_batch_by_name(
            broker, jobs_broker.PROCESS_EVENT, jobs_broker.EVENTS_QUEUE, [7, 8, 9]
        )
    finally:
        broker.scripts["dispatch"] = known
    assert sent == [7, 8, 9]
    assert queued() == [7, 8, 9]


@pytest.mark.parametrize("count", [1, 3])
def test_a_batch_is_one_round_trip_to_redis(queued, conn, count):
    calls = []
    original = broker.client.connection_pool.get_connection

    def counted(*args, **kwargs):  # one connection taken per round trip
        calls.append(args)
        return original(*args, **kwargs)

    broker.client.connection_pool.get_connection = counted
    try:
        ids = list(range(100, 100 + count))
        jobs_broker.send_batch_by_name(
            broker, jobs_broker.PROCESS_EVENT, jobs_broker.EVENTS_QUEUE, ids
        )
    finally:
        del broker.client.connection_pool.get_connection
    assert len(calls) == 1
    assert queued() == ids


# A script run under gevent, as gunicorn serves the receiver: `group` stores nothing, it records
# each run's items in `batches`.
_UNDER_GEVENT = """
from gevent import monkey

monkey.patch_all()

import time

import gevent

from webhooks.recording import GroupCommit

batches = []
group = GroupCommit(lambda items: batches.append(items) or items, key=lambda item: item)
"""


def _run_under_gevent(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_GEVENT + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_under_gevent_a_run_waits_for_every_request_ready_to_run():
    # Request b reaches the group a few switches after request a began a run: its bytes were
    # still arriving when a yielded.
    printed = _run_under_gevent(
        """
        def later():
            for _ in range(3):
                gevent.sleep(0)
            group.submit("b")

        gevent.joinall([gevent.spawn(later), gevent.spawn(group.submit, "a")], raise_error=True)
        print(batches)
        """
    )

    assert printed == "[['a', 'b']]"


def test_under_gevent_a_run_starts_even_if_the_hub_is_never_idle():
    printed = _run_under_gevent(
        """
        def busy():  # keeps the hub from ever being idle, for at most 10 s
            end = time.monotonic() + 10
            while not batches and time.monotonic() < end:
                gevent.sleep(0)
            print(batches)

        gevent.joinall([gevent.spawn(busy), gevent.spawn(group.submit, "a")], raise_error=True)
        """
    )

    assert printed == "[['a']]"  # the run came while the busy request still ran
