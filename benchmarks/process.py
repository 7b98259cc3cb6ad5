"""Processing benchmark: events fully applied per second by the workers, against a no-op actor.

Stores N realistic notifications in a database of the benchmark's own: a COMPLETE IPN opening each
subscription (AWDoc products of the shipped catalog), then LCNs with increasing DATE_UPDATED,
renewal IPNs and an occasional payment failure, interleaved across subscriptions as a live stream
is. It starts the worker processes (`dramatiq workers.jobs.worker`), waits until they are up and
warm, then puts one message per event on the queue at once and times the workers until no event is
left enqueued: once without emails, once with the outbox (and until every email is written). The
batch is staged in Redis beforehand and released in one push, so the figure is the workers' and not
how fast one client enqueues (printed beside it). In the same run the same worker setup drains as
many messages of a no-op actor on a queue of its own; both rates and their ratio are printed. Every
event must end processed or ignored and every subscription as the provider last described it. The
database, the run's Redis namespace and the mail directory are removed afterwards, also on errors
and interruptions.

    .venv/bin/python -m benchmarks.process [--count 5000] [--processes 2] [--threads 16] \
        [--rounds 3]

Each round times both passes on fresh workers, then the no-op actor, and prints the ratios; the
median of the rounds' ratios is printed last (figures vary from run to run on a shared machine).

`--subscriptions` sets how many subscriptions the events spread over (default: count / 10); keep
it well above processes x threads x 3 (the messages in flight at once), or the workers see a
license change before the order it follows and retry it after a backoff, as they would in life.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import uuid4

import dramatiq
import psycopg
import redis
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from benchmarks._common import Snapshot, cpu_by_party, cpu_snapshot
from workers.billing import catalog
from workers.billing.policies import add_period
from workers.billing.products import Product
from workers.ops import samples
from workers.protocol import form, ipn, lcn
from workers.protocol.signature import Algorithm
from workers.store import db, events

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "rinnovo_bench_process"
KEY = "BENCH-PROCESS-KEY"
NOOP_MODULE = "benchmarks._noop_actor"
NOOP_QUEUE = "bench-noop"  # the queue _noop_actor declares; read here without importing it
EVENT_QUEUE = "default"
READY_LINE = "Worker process is ready for action."
# An idle consumer polls Redis with a backoff capped by this (dramatiq's default is 1000 ms):
# capped low so the timed batch is picked up at once instead of after a sleeping worker wakes.
IDLE_POLL_MS = "100"
POLL_SECONDS = 0.02
STALL_SECONDS = 20.0  # no progress for this long: stop waiting and report what is left
BASE = datetime(2025, 1, 1, tzinfo=UTC)
STAMP = "%Y-%m-%d %H:%M:%S"
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


# --- the events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One notification as the provider would post it: its kind and signed field pairs."""

    kind: str
    pairs: list[tuple[str, str]]


@dataclass
class Timeline:
    """One subscription's history as the provider tells it, built one notification at a time."""

    rng: random.Random
    number: int
    product: Product
    customer: int
    language: str
    notifications: list[Notification] = field(default_factory=list)
    clock: datetime = BASE
    expires: datetime = BASE
    recurring: bool = True
    orders: int = 0
    status: str = "active"  # what the subscription should hold once all is applied

    @property
    def license(self) -> str:
        """The subscription's license code."""
        return f"BP{self.number:08d}"

    @property
    def email(self) -> str:
        """The customer's address."""
        return f"customer{self.customer:05d}@example.com"

    def tick(self, at_least: timedelta) -> datetime:
        """Move the provider's clock forward (never back) by at least `at_least`."""
        self.clock += at_least + timedelta(seconds=self.rng.randrange(1, 3600))
        return self.clock

    def order(self, license_type: str, start: datetime, expires: datetime) -> None:
        """A COMPLETE IPN for this license, paid at the current clock."""
        self.orders += 1
        item = samples.SampleItem(
            code=self.product.code,
            pid=self.product.pid,
            name=self.product.name,
            license_ref=self.license,
            quantity=1,
            price=str(self.product.price("EUR")),
            license_type=license_type,
            license_start=start.strftime(STAMP),
            license_exp=expires.strftime(STAMP),
        )
        pairs = samples.ipn_pairs(
            email=self.email,
            language=self.language,
            items=(item,),
            refno=f"{self.number:07d}{self.orders:03d}",
            sale_date=self.clock.strftime(STAMP),
            ipn_date=self.clock.strftime("%Y%m%d%H%M%S"),
            extra={"AVANGATE_CUSTOMER_REFERENCE": str(900_000_000 + self.customer)},
        )
        self.notifications.append(Notification("ipn", pairs))
        self.status = "active"

    def license_change(self, status: str) -> None:
        """An LCN stating the license's whole state as of the current clock."""
        pairs = samples.lcn_pairs(
            license_code=self.license,
            status=status,
            expiration_date=self.expires.strftime(STAMP),
            date_updated=self.clock.strftime(STAMP),
            recurring=self.recurring,
            email=self.email,
            extra={"AVANGATE_CUSTOMER_REFERENCE": str(900_000_000 + self.customer)},
        )
        self.notifications.append(Notification("lcn", pairs))
        self.status = {"ACTIVE": "active", "PASTDUE": "past_due"}[status]

    def purchase(self) -> None:
        """The new license: bought at a random moment of the year."""
        self.clock = BASE + timedelta(
            days=self.rng.randrange(365), seconds=self.rng.randrange(86_400)
        )
        start = self.clock
        self.expires = add_period(start, self.product.cycle)
        self.order("REGULAR", start, self.expires)

    def renewal(self, *, failed_first: bool) -> None:
        """A renewal order a few days before expiry (or after a failed charge), then its LCN."""
        if failed_first:
            self.clock = max(self.clock, self.expires) + timedelta(hours=1)
            self.license_change("PASTDUE")
            self.tick(timedelta(days=1))
        else:
            self.clock = max(self.clock, self.expires - timedelta(days=self.rng.randint(2, 5)))
            self.tick(timedelta(0))
        previous = self.expires
        self.expires = add_period(previous, self.product.cycle)
        self.order("RENEWAL", previous, self.expires)
        self.tick(timedelta(minutes=2))
        self.license_change("ACTIVE")

    def build(self, count: int) -> list[Notification]:
        """`count` notifications: the purchase, then renewals and license changes."""
        self.purchase()
        while len(self.notifications) < count:
            left = count - len(self.notifications)
            roll = self.rng.random()
            if roll < 0.35 and left >= 2:
                self.renewal(failed_first=False)
            elif roll < 0.45 and left >= 3 and self.recurring:
                self.renewal(failed_first=True)
            elif roll < 0.65:
                self.recurring = not self.recurring  # the customer turns auto-renewal off or on
                self.tick(timedelta(hours=1))
                self.license_change("ACTIVE")
            else:
                self.tick(timedelta(hours=1))  # details changed; the license stays as it was
                self.license_change("ACTIVE")
        return self.notifications


@dataclass(frozen=True)
class Expected:
    """Where one subscription must end once every notification is applied."""

    expires_at: datetime
    status: str


def build_stream(
    count: int, subscriptions: int, seed: int
) -> tuple[list[Notification], dict[str, Expected]]:
    """`count` notifications over `subscriptions` subscriptions in arrival order; the end states.

    Each round carries the next notification of every subscription in the same order, so two
    notifications of one subscription are a whole round apart in the queue, as they are hours
    apart in life: the workers rarely see a license change before the one it follows.
    """
    rng = random.Random(seed)
    products = [product for product in catalog.load_default() if product.product == "AWDoc"]
    customers = max(1, subscriptions * 4 // 5)  # some customers hold two subscriptions
    timelines = [
        Timeline(
            rng=rng,
            number=n,
            product=rng.choice(products),
            customer=rng.randrange(customers),
            language=rng.choice(("en", "it")),
        )
        for n in range(subscriptions)
    ]
    built = [
        timeline.build(count // subscriptions + (1 if n < count % subscriptions else 0))
        for n, timeline in enumerate(timelines)
    ]
    stream = []
    for round_number in range(max(len(notifications) for notifications in built)):
        stream += [each[round_number] for each in built if round_number < len(each)]
    expected = {t.license: Expected(t.expires, t.status) for t in timelines}
    return stream, expected


def store_stream(url: str, stream: Sequence[Notification]) -> list[int]:
    """Store every notification as the receiver does, marked enqueued; their ids, in order."""
    modules = {"ipn": ipn, "lcn": lcn}
    ids = []
    with psycopg.connect(url, row_factory=dict_row) as conn, conn.transaction():
        for notification in stream:
            module = modules[notification.kind]
            body = form.encode(samples.sign_pairs(notification.pairs, KEY, (Algorithm.SHA256,)))
            fields = form.group(form.parse_form(body))
            module.validate(fields)
            stored = events.store(
                conn,
                events.NewEvent(
                    kind=notification.kind,
                    dedupe_key=module.dedupe_key(fields),
                    raw_body=body,
                    content_type="application/x-www-form-urlencoded",
                    headers={"User-Agent": "2Checkout", "Remote-Addr": "127.0.0.1"},
                    fields=fields,
                    signature_algo=str(Algorithm.SHA256),
                    key_index=0,
                    summary=module.summary(fields),
                    license_codes=module.license_codes(fields),
                    test=module.is_test(fields),
                ),
            )
            if not stored.inserted:
                raise RuntimeError(f"two generated notifications share a dedupe key ({stored})")
            ids.append(stored.event_id)
        conn.execute("UPDATE events SET status = 'enqueued', enqueued_at = now()")
    return ids


def reset(url: str) -> None:
    """Forget everything the workers applied, so the same events can be applied again."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE orders, subscription_history, emails, email_suppressions, subscriptions, "
            "customers "
            "RESTART IDENTITY"
        )
        conn.execute(
            """
            UPDATE events SET status = 'enqueued', processed_at = NULL, attempts = 0,
                              last_error = NULL, last_traceback = NULL, outcome = NULL
            """
        )
        conn.execute("VACUUM ANALYZE events")


# --- the workers -----------------------------------------------------------------------------


class Stalled(Exception):
    """Nothing moved for too long while waiting for the workers."""


@dataclass
class Workers:
    """A running `dramatiq` command and where its output goes."""

    process: subprocess.Popen[bytes]
    log_path: Path
    description: str

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the workers wrote."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Ask the workers to finish (SIGTERM), then kill their process group if they linger."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what it started
            self.process.wait(timeout=5)


def start_workers(
    module: str, queue: str, *, processes: int, threads: int, env: dict[str, str], log_dir: Path
) -> Workers:
    """Start `dramatiq module` on one queue and wait until every worker process is ready."""
    command = [
        sys.executable, "-m", "dramatiq", module,
        "--processes", str(processes), "--threads", str(threads), "--queues", queue,
    ]  # fmt: skip
    log_path = log_dir / f"{module}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    workers = Workers(process, log_path, " ".join(["dramatiq", *command[3:]]))
    deadline = time.monotonic() + 60
    while workers.log_path.read_text(errors="replace").count(READY_LINE) < processes:
        if process.poll() is not None or time.monotonic() > deadline:
            workers.stop()
            raise RuntimeError(f"workers did not start ({module}):\n{workers.log_tail()}")
        time.sleep(0.05)
    return workers


def unfinished(client: redis.Redis, namespace: str, queue: str) -> int:
    """Messages on a queue not yet acknowledged: waiting, prefetched or being worked on."""
    return int(client.hlen(f"{namespace}:{queue}.msgs"))


def wait_until(remaining: Callable[[], int], what: str) -> float:
    """Poll until `remaining()` is 0; the moment it was. Raises Stalled when nothing moves."""
    last, moved = -1, time.perf_counter()
    while True:
        left = remaining()
        now = time.perf_counter()
        if left == 0:
            return now
        if left != last:
            last, moved = left, now
        elif now - moved > STALL_SECONDS:
            raise Stalled(f"{left:,} {what} left, none finished in {STALL_SECONDS:.0f} s")
        time.sleep(POLL_SECONDS)


def warm_up(send: Callable[[int], object], drained: Callable[[], int], messages: int) -> None:
    """Give every worker thread something to do once (connections opened), and wait for it."""
    for number in range(messages):
        send(-1 - number)
    wait_until(drained, "warm-up messages")


# --- the measurements ------------------------------------------------------------------------


@dataclass
class Pass:
    """What timing one batch of messages measured."""

    label: str
    count: int
    done_seconds: float
    mail_seconds: float | None = None
    emails: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by party

    @property
    def rate(self) -> float:
        """Messages (events) finished per second, end to end."""
        return self.count / self.done_seconds


def stage(
    client: redis.Redis, namespace: str, messages: Sequence[dramatiq.Message[Any]]
) -> list[str]:
    """Store the messages' bodies where the broker keeps them, not yet queued; their queue ids.

    The Redis broker enqueues a message by storing its body in the queue's `.msgs` hash and
    pushing its id on the queue's list. Doing the first part ahead of time and the second for the
    whole batch in one push hands the workers every message at once, so a pass times the workers,
    not how fast one client can enqueue (which `time_sending` measures on its own). No
    middleware of the service's broker acts on enqueueing, so nothing else is skipped.
    """
    ids = []
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            staged = message.copy(options={"redis_message_id": str(uuid4())})
            ids.append(staged.options["redis_message_id"])
            pipe.hset(f"{namespace}:{message.queue_name}.msgs", ids[-1], staged.encode())
        pipe.execute()
    return ids


def release(client: redis.Redis, namespace: str, queue: str, ids: Sequence[str]) -> None:
    """Queue every staged message in one push: the workers see the whole batch at once."""
    client.rpush(f"{namespace}:{queue}", *ids)


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


def time_noop(client: redis.Redis, namespace: str, count: int, workers_pid: int) -> Pass:
    """Hand the workers `count` no-op messages at once; time them until all are acknowledged."""
    from benchmarks._noop_actor import noop

    staged = stage(client, namespace, [noop.message(n, emails=False) for n in range(count)])
    before = cpu_snapshot()
    started = time.perf_counter()
    release(client, namespace, NOOP_QUEUE, staged)
    done = wait_until(lambda: unfinished(client, namespace, NOOP_QUEUE), "no-op messages")
    return Pass("no-op", count, done - started, cpu=cpu_used(before, cpu_snapshot(), workers_pid))


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
    noop.broker.flush(NOOP_QUEUE)
    return count / elapsed


def check_events(url: str, expected: dict[str, Expected]) -> list[str]:
    """Print how the events ended; the problems: events not applied, subscriptions left wrong."""
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        counts = events.counts_by_status(conn)
        retried = conn.execute(
            "SELECT count(*) AS n FROM events WHERE attempts > 1 OR last_error IS NOT NULL"
        ).fetchone()
        stale = conn.execute(
            "SELECT count(*) AS n FROM subscription_history WHERE change = 'stale'"
        ).fetchone()
        bad = conn.execute(
            """
            SELECT id, kind, summary, status, attempts, last_error FROM events
            WHERE status NOT IN ('processed', 'ignored') ORDER BY id
            """
        ).fetchall()
        held = {
            row["license_code"]: Expected(row["expires_at"], row["status"])
            for row in conn.execute("SELECT license_code, expires_at, status FROM subscriptions")
        }
    shown = ", ".join(f"{status} {n:,}" for status, n in counts.items() if n)
    print(f"    events by status: {shown}")
    print(
        f"    retried: {retried['n'] if retried else 0:,}; LCNs found stale (out of order): "
        f"{stale['n'] if stale else 0:,}"
    )
    problems = [
        f"event {row['id']} ({row['kind']} {row['summary']}) {row['status']} after "
        f"{row['attempts']} attempt(s): {row['last_error']}"
        for row in bad
    ]
    wrong = sorted(code for code, end in expected.items() if held.get(code) != end)
    print(
        f"    subscriptions ending as the provider left them: "
        f"{len(expected) - len(wrong):,} of {len(expected):,}"
    )
    problems += [
        f"subscription {code}: {held.get(code)}, expected {expected[code]}" for code in wrong[:10]
    ]
    if len(wrong) > 10:
        problems.append(f"... and {len(wrong) - 10:,} more subscriptions not as expected")
    return problems


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
    """One round: the timed event passes, the no-op pass right after them, what went wrong."""

    passes: list[Pass]
    baseline: Pass
    problems: list[str]  # stalls, dead letters, events not applied, subscriptions left wrong


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
    """Time the event passes (from the same state each), then the no-op actor, on fresh workers."""
    from benchmarks._noop_actor import noop
    from workers.jobs.actors import process_event

    warm = args.processes * args.threads * 4
    workers = start_workers(
        "workers.jobs.worker", EVENT_QUEUE, processes=args.processes, threads=args.threads,
        env=env, log_dir=scratch,
    )  # fmt: skip
    running.append(workers)
    warm_up(
        lambda n: process_event.send(n, emails=False),
        lambda: unfinished(client, namespace, EVENT_QUEUE),
        warm,
    )
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

    workers = start_workers(
        NOOP_MODULE, NOOP_QUEUE, processes=args.processes, threads=args.threads,
        env=env, log_dir=scratch,
    )  # fmt: skip
    running.append(workers)
    warm_up(
        lambda n: noop.send(n, emails=False),
        lambda: unfinished(client, namespace, NOOP_QUEUE),
        warm,
    )
    baseline = time_noop(client, namespace, len(ids), workers.process.pid)
    print_pass(baseline, "messages")
    print_cpu(baseline, "message")
    dead = int(client.hlen(f"{namespace}:{NOOP_QUEUE}.XQ.msgs"))
    if dead:
        problems.append(f"{dead:,} no-op messages were dead-lettered")
    workers.stop()
    running.remove(workers)
    return Round(passes, baseline, problems)


def median_pass(rounds: Sequence[Round], label: str) -> tuple[Pass, Pass]:
    """The pass with this label whose ratio to its round's no-op rate is the median, and that
    no-op pass (the upper middle of an even count)."""
    pairs = [(result, each.baseline) for each in rounds for result in each.passes]
    timed = sorted(
        (pair for pair in pairs if pair[0].label == label),
        key=lambda pair: pair[0].rate / pair[1].rate,
    )
    return timed[len(timed) // 2]


def ratio_line(result: Pass, baseline: Pass) -> str:
    """One pass's rate against the no-op rate of its round."""
    return (
        f"ratio ({result.label}): {result.rate:,.0f} events/s / {baseline.rate:,.0f} no-op "
        f"messages/s = {result.rate / baseline.rate:.3f}"
    )


def run(
    args: argparse.Namespace,
    url: str,
    namespace: str,
    subscriptions: int,
    client: redis.Redis,
    scratch: Path,
) -> list[str]:
    """Store the events, time both worker setups, print the figures; the problems seen."""
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
            for result in rounds[-1].passes:
                print(f"  {ratio_line(result, rounds[-1].baseline)}")

        sending = time_sending(min(len(ids), 5_000))
        print(f"(one client enqueues {sending:,.0f} messages/s with actor.send, as the receiver)")
        sample_events(url, expected, scratch, emails=False)
        if not args.skip_emails:
            sample_events(url, expected, scratch, emails=True)
        print(f"median of {len(rounds)} round(s):")
        for label in dict.fromkeys(result.label for each in rounds for result in each.passes):
            result, baseline = median_pass(rounds, label)
            print(f"  {ratio_line(result, baseline)}")
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
