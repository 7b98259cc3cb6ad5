"""Recovery benchmark: how long after each kind of fault ends every order is applied and emailed.

Runs the receiver (gunicorn), two worker processes (dramatiq) and the clock as in production,
each under a supervisor that restarts it, on a database of the benchmark's own reached through a
cuttable proxy, a private redis-server and a private SMTP server (tests/faults.py). For each kind
of fault in turn, a provider posts signed orders at a steady rate and retries each until it is
acknowledged; the fault strikes after a few seconds, and the posting stops when the fault ends.
Printed per fault: from the end of the fault to the last event applied and to the last email
delivered (0 when everything was done before the fault ended), the provider's retries, and the
emails failed as interrupted. The objective is 60 s for each. Nothing here touches the shared
Redis; the database and every private server are removed afterwards, also on errors.

    .venv/bin/python -m benchmarks.recovery [--rate 30] [--outage 10] [--smtp-outage 30]

At a low rate a kill seldom catches a message in a worker's hands or an event between its commit
and its send, and the figures show only the restart; 30 orders a second catches some.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from benchmarks._common import own_database_url
from tests.faults import Rig
from workers.store import db

DB_NAME = "rinnovo_bench_recovery"
OBJECTIVE_SECONDS = 60.0
LEAD_SECONDS = 3.0  # steady traffic before the fault strikes
SETTLE_TIMEOUT = 300.0


KILL_EVERY_SECONDS = 2.0


@dataclass
class Fault:
    """One kind of fault: how it starts, how it ends, how long it lasts.

    A fault without an end (a kill) strikes again every KILL_EVERY_SECONDS while it lasts, and
    ends with its last strike.
    """

    name: str
    strike: Callable[[Rig], None]
    end: Callable[[Rig], None] | None
    seconds: float


def kill_a_worker(rig: Rig) -> None:
    """SIGKILL the worker that has gone longest without being killed."""
    worker = min(rig.workers, key=lambda w: w.restarts)
    worker.kill()


def faults(outage: float, smtp_outage: float) -> list[Fault]:
    return [
        Fault("workers SIGKILLed", kill_a_worker, None, outage),
        Fault("Redis killed, back empty", lambda r: r.redis.kill(), lambda r: r.redis.start(),
              outage),
        Fault("database unreachable", lambda r: r.database.cut(), lambda r: r.database.start(),
              outage),
        Fault("SMTP server down", lambda r: r.smtp.stop(), lambda r: r.smtp.start(), smtp_outage),
        Fault("web process SIGKILLed", lambda r: r.web.kill(), None, outage),
    ]  # fmt: skip


def strike(rig: Rig, fault: Fault) -> None:
    """Bring the fault on, keep it for its time, and end it."""
    if fault.end is not None:
        fault.strike(rig)
        time.sleep(fault.seconds)
        fault.end(rig)
        return
    began = time.monotonic()
    while True:
        fault.strike(rig)
        if time.monotonic() + KILL_EVERY_SECONDS > began + fault.seconds:
            return
        time.sleep(KILL_EVERY_SECONDS)


def run_fault(rig: Rig, fault: Fault, rate: float, first: int) -> dict[str, object]:
    """Feed orders through one fault; the recovery figures."""
    count = max(1, int(rate * (LEAD_SECONDS + fault.seconds)))
    retries_before, acknowledged_before = rig.retries, len(rig.acknowledged)
    interrupted_before = interrupted(rig)
    feeder = rig.feed(count, LEAD_SECONDS + fault.seconds, start=first)
    time.sleep(LEAD_SECONDS)
    strike(rig, fault)
    ended = time.time()
    feeder.join(timeout=SETTLE_TIMEOUT)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not rig.settled():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{fault.name}: not settled: {rig.state()}")
        time.sleep(0.5)
    state = rig.state()
    last_event: datetime | None = state["events_last"]
    return {
        "fault": fault.name,
        "seconds": fault.seconds,
        "orders": len(rig.acknowledged) - acknowledged_before,
        "events": max(0.0, last_event.timestamp() - ended) if last_event else 0.0,
        "emails": max(0.0, rig.smtp.mailbox.last_at - ended),
        "retries": rig.retries - retries_before,
        "interrupted": interrupted(rig) - interrupted_before,
    }


def interrupted(rig: Rig) -> int:
    return int(rig.state()["emails"].get("failed/interrupted", 0))


def check(rig: Rig) -> None:
    """Every order applied once, every email sent once or failed as interrupted."""
    with psycopg.connect(rig.database_url, row_factory=dict_row) as conn:
        events = conn.execute("SELECT status, count(*) AS n FROM events GROUP BY 1").fetchall()
        emails = conn.execute("SELECT message_id, status, failure FROM emails").fetchall()
    assert {row["status"] for row in events} == {"processed"}, events
    assert sum(row["n"] for row in events) == len(rig.acknowledged)
    received = rig.smtp.mailbox.received
    for email in emails:
        times = received[email["message_id"]]
        assert times == 1 if email["status"] == "sent" else times <= 1, (email, times)
        assert email["status"] == "sent" or email["failure"] == "interrupted", email


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=30.0, help="orders per second")
    parser.add_argument("--outage", type=float, default=10.0, help="Redis and database outage")
    parser.add_argument("--smtp-outage", type=float, default=30.0, help="SMTP server outage")
    args = parser.parse_args()

    database_url = own_database_url(DB_NAME)
    db.drop_database(database_url)
    db.init_db(database_url)
    rig = Rig(database_url)
    try:
        rig.wait_ready()
        time.sleep(2.0)  # the workers and the clock start too
        results = []
        first = 0
        for fault in faults(args.outage, args.smtp_outage):
            results.append(run_fault(rig, fault, args.rate, first))
            first += 100_000
            print(f"  {fault.name}: done", flush=True)
        check(rig)
    finally:
        rig.close()
        db.close_pool()
        db.drop_database(database_url)

    print(
        f"\nRecovery after each fault (objective {OBJECTIVE_SECONDS:.0f} s), {args.rate:g} orders/s"
    )
    print(f"{'fault':<26} {'lasted':>7} {'orders':>7} {'events':>8} {'emails':>8} "
          f"{'retries':>8} {'interrupted':>12}")  # fmt: skip
    for row in results:
        print(
            f"{row['fault']:<26} {row['seconds']:>6.0f}s {row['orders']:>7} "
            f"{row['events']:>7.1f}s {row['emails']:>7.1f}s {row['retries']:>8} "
            f"{row['interrupted']:>12}"
        )
    worst = max(max(float(row["events"]), float(row["emails"])) for row in results)  # type: ignore[arg-type]
    verdict = "within" if worst <= OBJECTIVE_SECONDS else "OVER"
    print(f"worst: {worst:.1f} s, {verdict} the objective; every order applied and emailed once")


if __name__ == "__main__":
    main()
