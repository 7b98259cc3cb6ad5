"""Processing benchmark: events fully applied per second by the workers, against a no-op actor
and an actor that only commits one transaction per event.

Stores N realistic notifications in a database of the benchmark's own: a COMPLETE IPN opening each
subscription (AWDoc products of the shipped catalog), then LCNs with increasing DATE_UPDATED,
renewal IPNs and an occasional payment failure, interleaved across subscriptions as a live stream
is. It starts the worker processes (`dramatiq workers.jobs.worker`), waits until they are up and
warm, then puts one message per event on the queue at once and times the workers until no event is
left enqueued: once without emails, once with the outbox (and until every email is written). The
batch is staged in Redis beforehand and released in one push, so the figure is the workers' and not
how fast one client enqueues (printed beside it). In the same run the same worker setup drains as
many messages of a no-op actor on a queue of its own, then as many of a one-transaction actor
(`_transaction_actor`: on the service's pool, BEGIN, lock the event's row, write its outcome,
COMMIT; the least a worker committing once per event does, its ceiling). The rates and their
ratios are printed: events/no-op (the goal), one transaction/no-op, events/one transaction. Every
event must end processed or ignored and every subscription as the provider last described it. The
database, the run's Redis namespace and the mail directory are removed afterwards, also on errors
and interruptions.

    .venv/bin/python -m benchmarks.process [--count 5000] [--processes 2] [--threads 16] \
        [--rounds 3]

Each round times both passes on fresh workers, then each actor on fresh workers, and prints the
ratios; the median of each over the rounds is printed last (figures vary on a shared machine).

`--subscriptions` sets how many subscriptions the events spread over (default: count / 10); keep
it well above processes x threads x 3 (the messages in flight at once), or the workers see a
license change before the order it follows and retry it after a backoff, as they would in life.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psycopg
import redis
from dramatiq import Actor
from psycopg.conninfo import make_conninfo

from benchmarks._common import Snapshot, cpu_by_party, cpu_snapshot
from benchmarks._stream import Expected, build_stream, check_events, reset, store_stream
from benchmarks._workers import (
    Stalled,
    Workers,
    release,
    stage,
    start_workers,
    unfinished,
    wait_until,
    warm_up,
)
from workers.store import db

DB_NAME = "rinnovo_bench_process"
EVENT_QUEUE = "default"
# An idle consumer polls Redis with a backoff capped by this (dramatiq's default is 1000 ms):
# capped low so the timed batch is picked up at once instead of after a sleeping worker wakes.
IDLE_POLL_MS = "100"
# Subscriptions whose every event is applied in the benchmark's own process, one at a time, to
# count round trips and CPU per event (a whole history each: purchases, renewals, LCNs).
SAMPLE_SUBSCRIPTIONS = 30


def database_url() -> str:
    """The benchmark's own database, on the server DATABASE_URL names (or the local one)."""
    server = os.environ.get("DATABASE_URL") or "postgresql://127.0.0.1:5432"
    return make_conninfo(server, dbname=DB_NAME)


def redis_url() -> str:
    """The Redis server REDIS_URL names (or the local one); the run keeps to its own namespace."""
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


# --- the measurements ------------------------------------------------------------------------


@dataclass
class Pass:
    """What timing one batch of messages measured."""

    label: str
    count: int
    done_seconds: float
    unit: str = "events"
    mail_seconds: float | None = None
    emails: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by party

    @property
    def rate(self) -> float:
        """Messages (events) finished per second, end to end."""
        return self.count / self.done_seconds


def time_events(
    client: redis.Redis,
    namespace: str,
    url: str,
    ids: Sequence[int],
    *,
    emails: bool,
    workers_pid: int,
) -> Pass:
    """Hand the workers every event at once; time them until none is left enqueued (and mailed)."""
    from workers.jobs.actors import process_event

    staged = stage(client, namespace, [process_event.message(i, emails=emails) for i in ids])
    with psycopg.connect(url, autocommit=True) as conn:

        def left(query: str) -> Callable[[], int]:
            def count() -> int:
                row = conn.execute(query).fetchone()
                return int(row[0]) if row else 0

            return count

        before = cpu_snapshot()
        started = time.perf_counter()
        release(client, namespace, EVENT_QUEUE, staged)
        done = wait_until(left("SELECT count(*) FROM events WHERE status = 'enqueued'"), "events")
        result = Pass("with emails" if emails else "no emails", len(ids), done - started)
        result.cpu = cpu_used(before, cpu_snapshot(), workers_pid)
        if emails:
            mailed = wait_until(
                left("SELECT count(*) FROM emails WHERE status IN ('pending', 'sending')"),
                "emails",
            )
            result.mail_seconds = mailed - started
            result.emails = left("SELECT count(*) FROM emails")()
    return result


def time_messages(
    client: redis.Redis, namespace: str, actor: Actor, label: str, ids: Sequence[int], pid: int
) -> Pass:
    """Hand the workers a message of `actor` per event at once; time them until all are
    acknowledged."""
    staged = stage(client, namespace, [actor.message(i, emails=False) for i in ids])
    before = cpu_snapshot()
    started = time.perf_counter()
    release(client, namespace, actor.queue_name, staged)
    done = wait_until(lambda: unfinished(client, namespace, actor.queue_name), f"{label} messages")
    return Pass(
        label, len(ids), done - started, unit="messages", cpu=cpu_used(before, cpu_snapshot(), pid)
    )


PARTIES = ("workers", "postgres", "redis", "benchmark", "other")


def cpu_used(before: Snapshot | None, after: Snapshot | None, workers_pid: int) -> dict[str, float]:
    """CPU seconds between two snapshots by party: the worker processes, PostgreSQL, Redis."""
    if before is None or after is None:
        return {}
    roots = {workers_pid: "workers", os.getpid(): "benchmark"}
    return cpu_by_party(before, after, database=DB_NAME, roots=roots, parties=list(PARTIES))


def print_cpu(result: Pass, unit: str) -> None:
    """The CPU each party spent per message of a pass."""
    if result.cpu:
        shares = ", ".join(
            f"{party} {result.cpu[party] * 1000 / result.count:.3f}" for party in PARTIES
        )
        print(f"    CPU ms per {unit}: {shares}")


def count_round_trips(trace: str) -> int:
    """Round trips in a libpq trace: every time the server answers what the client sent."""
    trips, sent = 0, False
    for line in trace.splitlines():
        words = line.split("\t", 2)  # [timestamp,] direction, length, message
        direction = words[0] if words[0] in ("F", "B") else words[1] if len(words) > 1 else ""
        if direction == "F":
            sent = True
        elif direction == "B" and sent:
            trips, sent = trips + 1, False
    return trips


def process_cpu(pid: int) -> float:
    """CPU seconds a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = text[text.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def sample_events(url: str, expected: dict[str, Expected], scratch: Path, *, emails: bool) -> None:
    """Apply a few subscriptions' whole histories in this process, one event at a time, and print
    the round trips to PostgreSQL and the CPU (worker code and its backend) per event."""
    from psycopg import pq

    from workers.jobs import actors

    reset(url)
    codes = sorted(expected)[:SAMPLE_SUBSCRIPTIONS]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id FROM events WHERE license_codes && %s ORDER BY id", (codes,)
        ).fetchall()
    ids = [row[0] for row in rows]
    db.close_pool()
    pool = db.get_pool(url, max_size=1)  # every event on the one traced connection
    trace_path = scratch / "libpq.trace"
    with trace_path.open("w") as trace_file:  # open until libpq stops writing to it
        with pool.connection() as conn:
            backend = conn.pgconn.backend_pid
            conn.pgconn.trace(trace_file.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        server_before, started = process_cpu(backend), time.process_time()
        for event_id in ids:
            actors.apply_event(event_id, emails=emails)
        client_cpu = time.process_time() - started
        server_cpu = process_cpu(backend) - server_before
        with pool.connection() as conn:
            conn.pgconn.untrace()
    db.close_pool()
    trips = count_round_trips(trace_path.read_text(errors="replace"))
    print(
        f"    one at a time in this process ({len(ids):,} events of {len(codes)} subscriptions, "
        f"{'with' if emails else 'no'} emails): {trips / len(ids):.2f} round trips per event; "
        f"CPU ms per event: worker {client_cpu * 1000 / len(ids):.3f}, "
        f"its PostgreSQL backend {server_cpu * 1000 / len(ids):.3f}"
    )


def time_sending(count: int) -> float:
    """Messages per second one client enqueues with `actor.send`, as the receiver does."""
    from benchmarks._noop_actor import noop

    started = time.perf_counter()
    for number in range(count):
        noop.send(number, emails=False)
    elapsed = time.perf_counter() - started
    noop.broker.flush(noop.queue_name)
    return count / elapsed


def print_pass(result: Pass, unit: str) -> None:
    """One pass's figures."""
    print(
        f"  {result.label}: {result.count:,} {unit} in {result.done_seconds:.2f} s = "
        f"{result.rate:,.0f} {unit}/s"
    )
    if result.mail_seconds is not None:
        print(
            f"    and {result.emails:,} emails written, the last {result.mail_seconds:.2f} s "
            f"after the first message ({result.count / result.mail_seconds:,.0f} events/s "
            "counting the emails)"
        )


def delete_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every Redis key of the run's namespace; how many."""
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    return int(client.delete(*keys)) if keys else 0


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Round:
    """One round: the timed event passes, the actors' passes right after them, what went wrong."""

    passes: list[Pass]
    baseline: Pass  # the no-op actor
    transaction: Pass  # the one-transaction actor
    problems: list[str]  # stalls, dead letters, events not applied, subscriptions left wrong


def fresh_workers(
    module: str,
    actor: Actor,
    args: argparse.Namespace,
    client: redis.Redis,
    namespace: str,
    env: dict[str, str],
    scratch: Path,
    running: list[Workers],
) -> Workers:
    """Start the benchmark's worker setup on the actor's queue and warm it up with its messages."""
    workers = start_workers(
        module, actor.queue_name, processes=args.processes, threads=args.threads,
        env=env, log_dir=scratch,
    )  # fmt: skip
    running.append(workers)
    warm_up(
        lambda n: actor.send(n, emails=False),
        lambda: unfinished(client, namespace, actor.queue_name),
        args.processes * args.threads * 4,
    )
    return workers


def time_round(
    args: argparse.Namespace,
    url: str,
    namespace: str,
    ids: Sequence[int],
    expected: dict[str, Expected],
    client: redis.Redis,
    env: dict[str, str],
    scratch: Path,
    running: list[Workers],
) -> Round:
    """Time the event passes (from the same state each), then the no-op actor and the
    one-transaction actor (on the same events, reset), each on fresh workers."""
    from benchmarks._noop_actor import noop
    from benchmarks._transaction_actor import one_transaction
    from workers.jobs.actors import process_event

    setup = (args, client, namespace, env, scratch, running)
    workers = fresh_workers("workers.jobs.worker", process_event, *setup)
    passes: list[Pass] = []
    problems: list[str] = []
    try:
        for emails in (False,) if args.skip_emails else (False, True):
            reset(url)
            passes.append(
                time_events(
                    client, namespace, url, ids, emails=emails, workers_pid=workers.process.pid
                )
            )
            print_pass(passes[-1], "events")
            print_cpu(passes[-1], "event")
            problems += check_events(url, expected)
    except Stalled as exc:
        problems.append(str(exc))
        problems += check_events(url, expected)
        print(f"  the workers' last lines:\n{workers.log_tail()}")
    workers.stop()
    running.remove(workers)

    timed = []
    for actor, label in ((noop, "no-op"), (one_transaction, "one transaction")):
        reset(url)  # the events enqueued again: the one-transaction actor locks and updates them
        workers = fresh_workers(actor.fn.__module__, actor, *setup)
        timed.append(time_messages(client, namespace, actor, label, ids, workers.process.pid))
        print_pass(timed[-1], "messages")
        print_cpu(timed[-1], "message")
        dead = int(client.hlen(f"{namespace}:{actor.queue_name}.XQ.msgs"))
        if dead:
            problems.append(f"{dead:,} {label} messages were dead-lettered")
        workers.stop()
        running.remove(workers)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE status = 'enqueued'").fetchone()
    if row and row[0]:
        problems.append(f"{row[0]:,} events not updated by the one-transaction actor")
    return Round(passes, timed[0], timed[1], problems)


def median_pair(pairs: Sequence[tuple[Pass, Pass]]) -> tuple[Pass, Pass]:
    """The pair (a pass, the one it is compared with) whose ratio of rates is the median (the
    upper middle of an even count)."""
    return sorted(pairs, key=lambda pair: pair[0].rate / pair[1].rate)[len(pairs) // 2]


def ratio_line(name: str, result: Pass, against: Pass) -> str:
    """One pass's rate against another's (of the same round)."""
    return (
        f"{name}: {result.rate:,.0f} {result.unit}/s / {against.rate:,.0f} {against.label} "
        f"{against.unit}/s = {result.rate / against.rate:.3f}"
    )


def ratio_lines(rounds: Sequence[Round]) -> list[str]:
    """The ratios of one round, or the median of each over several: events/no-op (the goal), one
    transaction/no-op (the ceiling of any worker committing once per event), events/one
    transaction."""
    labels = dict.fromkeys(result.label for each in rounds for result in each.passes)

    def pairs(label: str, against: str) -> list[tuple[Pass, Pass]]:
        """The event passes of a label, each with its round's pass named `against`."""
        return [(p, getattr(r, against)) for r in rounds for p in r.passes if p.label == label]

    compared = [(f"ratio ({label})", pairs(label, "baseline")) for label in labels]
    compared.append(("one transaction/no-op", [(r.transaction, r.baseline) for r in rounds]))
    compared += [
        (f"events/one transaction ({label})", pairs(label, "transaction")) for label in labels
    ]
    return [ratio_line(name, *median_pair(found)) for name, found in compared]


def run(
    args: argparse.Namespace,
    url: str,
    namespace: str,
    subscriptions: int,
    client: redis.Redis,
    scratch: Path,
) -> list[str]:
    """Store the events, time the workers and both actors, print the figures; the problems seen."""
    env = dict(os.environ)
    env.pop("SMTP_URL", None)  # emails are written as files
    env.pop("CATALOG", None)  # the events name products of the shipped catalog
    env.update(MAIL_DIR=str(scratch / "mail"), dramatiq_worker_timeout=IDLE_POLL_MS)
    # As the Procfile's WORKER_THREADS does: a pool of one connection per thread and a few more.
    env.update(WORKER_THREADS=str(args.threads))
    running: list[Workers] = []
    problems: list[str] = []
    try:
        db.drop_database(url)
        db.init_db(url)
        started = time.perf_counter()
        stream, expected = build_stream(args.count, subscriptions, args.seed)
        ids = store_stream(url, stream)
        kinds = {kind: sum(1 for n in stream if n.kind == kind) for kind in ("ipn", "lcn")}
        print(
            f"stored {len(ids):,} events over {subscriptions:,} subscriptions "
            f"({kinds['ipn']:,} IPN, {kinds['lcn']:,} LCN) in {time.perf_counter() - started:.1f} s"
        )

        # The actors are declared on the broker installed when they are imported: this run's.
        from workers.jobs.runtime import Runtime

        Runtime.from_env().install()
        rounds = []
        for number in range(1, args.rounds + 1):
            print(f"round {number} of {args.rounds}:")
            rounds.append(
                time_round(args, url, namespace, ids, expected, client, env, scratch, running)
            )
            problems += [f"round {number}: {problem}" for problem in rounds[-1].problems]
            print("\n".join(f"  {line}" for line in ratio_lines(rounds[-1:])))

        sending = time_sending(min(len(ids), 5_000))
        print(f"(one client enqueues {sending:,.0f} messages/s with actor.send, as the receiver)")
        sample_events(url, expected, scratch, emails=False)
        if not args.skip_emails:
            sample_events(url, expected, scratch, emails=True)
        print(f"median of {len(rounds)} round(s):")
        print("\n".join(f"  {line}" for line in ratio_lines(rounds)))
    finally:
        for workers in running:
            workers.stop()
        delete_namespace(client, namespace)
        db.close_pool()
        db.drop_database(url)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5_000, help="events (and no-op messages)")
    parser.add_argument("--subscriptions", type=int, default=0, help="default: count / 10")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker process")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated events")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median ratio is shown")
    parser.add_argument("--skip-emails", action="store_true", help="only the pass without emails")
    args = parser.parse_args(argv)
    subscriptions = min(args.subscriptions or max(1, args.count // 10), args.count)

    url = database_url()
    namespace = f"rinnovo-bench-{os.getpid()}"
    # The broker reads these when first imported (by the actor modules, inside the passes).
    os.environ.update(DATABASE_URL=url, REDIS_URL=redis_url(), REDIS_NAMESPACE=namespace)
    # Every email is signed with these; without them the emails wait and the pass never ends.
    os.environ.setdefault("MERCHANT_NAME", "Benchmark Shop")
    os.environ.setdefault("SUPPORT_EMAIL", "support@example.com")
    signal.signal(signal.SIGTERM, _interrupted)
    client = redis.Redis.from_url(redis_url())
    problems: list[str] = []
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="rinnovo-bench-") as scratch:
            problems = run(args, url, namespace, subscriptions, client, Path(scratch))
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        client.close()
    print(f"run took {time.perf_counter() - began:.0f} s")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
