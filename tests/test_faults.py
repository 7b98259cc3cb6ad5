"""The recovery objective under faults: every acknowledged order applied and emailed, once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tests.faults import Rig

ORDERS = 240
FEED_SECONDS = 24.0
SETTLE_SECONDS = 120.0  # a bound for the test, well past the 60 s objective; not a measurement


def run_schedule(steps: list[tuple[float, Callable[[], None]]]) -> threading.Thread:
    """Run each step at its second from now, in a thread of its own."""

    def run() -> None:
        began = time.monotonic()
        for at, step in sorted(steps, key=lambda item: item[0]):
            time.sleep(max(0.0, began + at - time.monotonic()))
            step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_with_workers_killed_and_redis_smtp_and_the_database_down_every_order_is_applied_and_emailed_once(  # noqa: E501
    conn, database_url
):
    rig = Rig(database_url)
    try:
        rig.wait_ready()
        feeder = rig.feed(ORDERS, FEED_SECONDS)
        worker0, worker1 = rig.workers
        faults = run_schedule(
            [
                *((at, (worker0 if n % 2 else worker1).kill)
                  for n, at in enumerate((2.0, 4.5, 7.0, 9.5, 12.0, 14.5, 17.0))),
                (3.0, rig.smtp.stop), (13.0, rig.smtp.start),
                (6.0, rig.redis.kill), (11.0, rig.redis.start),
                (15.0, rig.database.cut), (19.0, rig.database.start),
                (21.0, rig.web.kill),
            ]
        )  # fmt: skip
        faults.join()
        feeder.join(timeout=SETTLE_SECONDS)
        assert not feeder.is_alive(), "the provider could not get every order acknowledged"
        deadline = time.monotonic() + SETTLE_SECONDS
        while not rig.settled():
            assert time.monotonic() < deadline, (rig.state(), rig.output())
            time.sleep(1.0)

        assert len(rig.acknowledged) == ORDERS
        state = rig.state()
        assert state["events"] == {"processed": ORDERS}, state
        emails = conn.execute("SELECT message_id, status, failure FROM emails").fetchall()
        assert len(emails) == ORDERS
        received = rig.smtp.mailbox.received
        for email in emails:
            times = received[email["message_id"]]
            if email["status"] == "sent":
                assert times == 1, email
            else:  # killed mid-delivery: it may have reached the server, once at most
                assert (email["status"], email["failure"], times <= 1) == (
                    "failed",
                    "interrupted",
                    True,
                ), email
        assert set(received) <= {email["message_id"] for email in emails}
        assert all(worker.restarts for worker in rig.workers) and rig.web.restarts == 1
    finally:
        rig.close()
