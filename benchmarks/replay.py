"""Bulk replay benchmark: how long `rinnovo events replay --failed` takes for many events.

Stores N failed IPN events (each its own signed body) in a database of the benchmark's own, then
times the steps of replaying them, as `replay.replay` takes them: selecting the ids, moving the
rows back to `enqueued` with one message per event handed to Redis (what the workers wait for),
then re-parsing every stored body with today's parser and storing the readings that changed.
For comparison it also times enqueueing messages one at a time, as `actor.send` does. The
database and the Redis db are removed afterwards; no worker runs, so the messages stay queued
until the cleanup.

    .venv/bin/python -m benchmarks.replay [--count 100000] [--stale]

`--stale` stores the events with empty parsed fields, as if an older parser had lost them, so
every row is also rewritten with what today's parser reads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from benchmarks._common import own_database_url, own_redis_url

DB_NAME = "rinnovo_bench_replay"
REDIS_DB = 13


def database_url() -> str:
    """The benchmark's own database."""
    return own_database_url(DB_NAME)


def redis_url() -> str:
    """The benchmark's own Redis db."""
    return own_redis_url(REDIS_DB)


# The broker is built from REDIS_URL when first imported: point it at the benchmark's db first.
os.environ["DATABASE_URL"] = database_url()
os.environ["REDIS_URL"] = redis_url()

import psycopg  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from workers.config import Settings  # noqa: E402
from workers.jobs.runtime import Runtime  # noqa: E402

broker = Runtime.from_env().install().broker  # before the actors: declared on it

from workers.jobs.actors import process_event  # noqa: E402
from workers.ops import replay, samples  # noqa: E402
from workers.protocol import form, ipn  # noqa: E402
from workers.store import db  # noqa: E402
from workers.store.events import EventFilter  # noqa: E402

KEY = "BENCH-REPLAY-KEY"


def store_failed_events(url: str, count: int, *, stale: bool) -> None:
    """Store `count` distinct signed IPNs as failed events, fast (COPY)."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        columns = (
            "kind, dedupe_key, raw_body, content_type, fields, signature_algo, key_index, "
            "summary, license_codes, status, attempts, last_error"
        )
        with cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for number in range(count):
                item = samples.SampleItem(code="AWDOC-TEAM-M", license_ref=f"B{number:09d}")
                pairs = samples.ipn_pairs(items=(item,), refno=str(10_000_000 + number))
                body = form.encode(samples.sign_pairs(pairs, KEY))
                fields = form.group(form.parse_form(body))
                copy.write_row(
                    (
                        "ipn",
                        f"bench:{number}",
                        body,
                        "application/x-www-form-urlencoded",
                        Jsonb({} if stale else fields),
                        "sha256",
                        0,
                        ipn.summary(fields),
                        ipn.license_codes(fields),
                        "failed",
                        1,
                        "PermanentEventError: unknown product AWDOC-TEAM-M",
                    )
                )


def one_at_a_time(count: int) -> float:
    """Seconds to enqueue `count` messages with one Redis round trip each (`actor.send`)."""
    started = time.perf_counter()
    for number in range(count):
        process_event.send_with_options(args=(number,), kwargs={"emails": True})
    elapsed = time.perf_counter() - started
    broker.flush_all()
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="events to replay")
    parser.add_argument("--stale", action="store_true", help="every row's fields need a rewrite")
    args = parser.parse_args(argv)

    url = database_url()
    db.drop_database(url)
    db.init_db(url)
    broker.client.flushdb()
    try:
        started = time.perf_counter()
        store_failed_events(url, args.count, stale=args.stale)
        print(f"stored {args.count:,} failed events in {time.perf_counter() - started:.1f} s")

        sample = min(args.count, 10_000)
        single = one_at_a_time(sample)
        estimate = single * args.count / sample
        print(
            f"one message at a time: {sample:,} in {single:.2f} s "
            f"({sample / single:,.0f}/s; {args.count:,} would take {estimate:.1f} s)"
        )

        # The steps `replay.replay` takes, timed one by one: select, hand over, store readings.
        settings = Settings.from_env()
        started = time.perf_counter()
        ids = replay.select_ids(settings, EventFilter(), failed_only=True)
        selected = time.perf_counter() - started
        started = time.perf_counter()
        enqueued = replay.enqueue(settings, ids)
        handed = time.perf_counter() - started
        started = time.perf_counter()
        changed, errors = replay.refresh(settings, ids)
        refreshed = time.perf_counter() - started

        queued = broker.client.hlen(f"{broker.namespace}:default.msgs")
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM events WHERE status = 'enqueued'").fetchone()
        rows = row[0] if row else 0
        print(f"selected {len(ids):,} failed event ids in {selected:.2f} s")
        print(
            f"enqueued {enqueued:,} events in {handed:.2f} s ({enqueued / handed:,.0f}/s: "
            "rows back to `enqueued`, one message each, pipelined)"
        )
        print(
            f"re-parsed {len(ids):,} stored bodies in {refreshed:.2f} s "
            f"({len(ids) / refreshed:,.0f}/s; {changed:,} readings changed, "
            f"{len(errors)} unreadable)"
        )
        print(f"replay total: {selected + handed + refreshed:.1f} s")
        print(f"check: {queued:,} messages in Redis, {rows:,} rows enqueued")
        return 0 if queued == rows == enqueued == args.count else 1
    finally:
        broker.client.flushdb()
        broker.close()
        db.close_pool()
        db.drop_database(url)


if __name__ == "__main__":
    sys.exit(main())
