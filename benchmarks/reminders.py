"""Reminder scan benchmark: one day's scan over 1,000,000 subscriptions, 10,000 of them due.

Creates a database of its own (and uses a Redis db of its own), fills it with generate_series,
runs the scan for today three ways, prints wall time and peak memory, and drops the database:

- the first run of the day (everything due is written, expired and enqueued);
- the next hourly run (nothing new: what it costs to find that out);
- the first run again from a clean outbox under tracemalloc (peak Python memory).

    .venv/bin/python -m benchmarks.reminders [--subscriptions 1000000] [--due 10000]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from datetime import UTC, date, datetime, timedelta

from benchmarks._common import own_database_url, own_redis_url

DB_NAME = "rinnovo_bench_reminders"
REDIS_DB = 14


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
from psycopg import sql  # noqa: E402

from workers.config import Settings  # noqa: E402
from workers.jobs.runtime import Runtime  # noqa: E402

broker = Runtime.from_env().install().broker  # before the actors: declared on it

from workers.jobs import reminders  # noqa: E402
from workers.store import db  # noqa: E402
from workers.store import reminders as store_reminders  # noqa: E402

CUSTOMERS = 100_000
# The due subscriptions, by what is due: (share of --due, status, auto_renew, days from today).
DUE_MIX = (
    (0.25, "active", False, 30),  # renewal reminder, 30 days
    (0.25, "active", False, 7),  # renewal reminder, 7 days
    (0.15, "past_due", False, 1),  # renewal reminder, 1 day
    (0.25, "active", True, 7),  # automatic-renewal notice
    (0.10, "active", False, -3),  # expired three days ago: expire + expiry notice
)


def fill(url: str, subscriptions: int, due: int, today: date) -> None:
    """Insert customers and subscriptions; only `due` of them are due on `today`."""
    background = subscriptions - due
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO customers (email, first_name, last_name, locale, customer_key)
            SELECT 'customer' || g || '@example.com', 'Name' || g, 'Surname',
                   CASE WHEN g %% 2 = 0 THEN 'it' ELSE 'en' END, 'c' || g
            FROM generate_series(1, %s::int) AS g
            """,
            (CUSTOMERS,),
        )
        # Three in four are live and expire 2 to 700 days from now, skipping the due days
        # (7 and 30); the rest are expired, canceled or refunded, with expiries in the past.
        conn.execute(
            """
            INSERT INTO subscriptions (license_code, customer_id, product_code, product, edition,
                cycle, quantity, status, auto_renew, currency, price_paid, expires_at,
                last_order_ref, period_start)
            SELECT 'L' || g, 1 + g %% %(customers)s, 'DOCFLOW-BIZ', 'DocFlow', 'BUSINESS',
                   'annual', 1 + g %% 50,
                   (ARRAY['active', 'active', 'past_due', 'expired', 'active', 'canceled',
                          'active', 'refunded'])[1 + g %% 8],
                   g %% 3 = 0, 'EUR', 1000,
                   CASE WHEN g %% 8 IN (3, 5, 7)
                        THEN %(today)s::timestamptz - make_interval(days => 1 + g %% 700)
                        ELSE %(today)s::timestamptz
                             + make_interval(days => 2 + (g %% 698)
                                 + CASE WHEN 2 + (g %% 698) >= 7 THEN 1 ELSE 0 END
                                 + CASE WHEN 2 + (g %% 698) >= 29 THEN 1 ELSE 0 END)
                             + make_interval(secs => g %% 86400)
                   END,
                   'R' || g,
                   %(today)s::timestamptz - interval '300 days'
            FROM generate_series(1, %(background)s::int) AS g
            """,
            {"customers": CUSTOMERS, "background": background, "today": today},
        )
        start = background
        for share, status, auto_renew, days in DUE_MIX:
            count = round(due * share)
            conn.execute(
                """
                INSERT INTO subscriptions (license_code, customer_id, product_code, product,
                    edition, cycle, quantity, status, auto_renew, currency, price_paid,
                    expires_at, last_order_ref, period_start)
                SELECT 'L' || g, 1 + g %% %(customers)s, 'DOCFLOW-BIZ', 'DocFlow', 'BUSINESS',
                       'annual', 1, %(status)s, %(auto_renew)s, 'EUR', 1000,
                       %(today)s::timestamptz + make_interval(days => %(days)s)
                           + make_interval(secs => g %% 86400),
                       'R' || g,
                       %(today)s::timestamptz - interval '300 days'
                FROM generate_series(%(first)s::int, %(last)s::int) AS g
                """,
                {
                    "customers": CUSTOMERS,
                    "status": status,
                    "auto_renew": auto_renew,
                    "today": today,
                    "days": days,
                    "first": start + 1,
                    "last": start + count,
                },
            )
            start += count
        conn.execute("VACUUM ANALYZE")


def reset(url: str) -> None:
    """Undo a scan: empty the outbox and bring back the subscriptions it expired."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute(
            """
            UPDATE subscriptions s SET status = h.before ->> 'status'
            FROM subscription_history h WHERE h.subscription_id = s.id AND h.change = 'expired'
            """
        )
        conn.execute("DELETE FROM subscription_history")
        conn.execute("DELETE FROM emails")
    broker.flush_all()


def plan(url: str, today: date) -> str:
    """The executed plan of one reminder range query, to show it walks the partial index."""
    lo = reminders.day_start(today + timedelta(days=7))
    params = {
        "lo": lo,
        "hi": lo + timedelta(days=1),
        "lifetime": reminders.LIFETIME_FROM,
        "after_at": lo,
        "after_id": 0,
        "auto_renew": False,
        "kind": "renewal_reminder",
        "suffix": "/7",
        "begun_by": reminders.day_start(today),
        "limit": reminders.BATCH,
    }
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}").format(store_reminders.DUE),
            params,
        ).fetchall()
        conn.rollback()  # release the row locks the query took
    return "\n".join("    " + row[0] for row in rows)


def timed(settings: Settings, today: date) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    counts = reminders.run(settings, today)
    return time.perf_counter() - started, counts


def main() -> None:
    """Build the data, run the scans, print the figures, drop the database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=10_000)
    args = parser.parse_args()
    url = database_url()
    today = datetime.now(UTC).date()
    db.drop_database(url)
    db.init_db(url)
    broker.flush_all()
    try:
        started = time.perf_counter()
        fill(url, args.subscriptions, args.due, today)
        print(
            f"filled {args.subscriptions:,} subscriptions ({args.due:,} due on "
            f"{today.isoformat()}) in {time.perf_counter() - started:.1f} s"
        )
        settings = Settings.from_env()

        first, counts = timed(settings, today)
        rss_after_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        again, nothing = timed(settings, today)
        print(f"written: {counts}")
        print(f"first run of the day:  {first:6.2f} s  ({args.due / first:,.0f} due/s)")
        print(f"next hourly run:       {again:6.2f} s  (writes {sum(nothing.values())})")

        reset(url)
        tracemalloc.start()
        timed(settings, today)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"peak Python memory (tracemalloc) during a first run: {peak / 2**20:.1f} MiB")
        scale = 1 if sys.platform != "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
        print(
            f"peak RSS of the process after the first run: {rss_after_first / 1024 / scale:.0f} MiB"
        )
        reset(url)
        print("plan of one reminder range (7 days ahead, executed):")
        print(plan(url, today))
    finally:
        broker.flush_all()
        db.close_pool()
        db.drop_database(url)


if __name__ == "__main__":
    main()
