"""`rinnovo db init` as the release line runs it: create, apply, and apply again harmlessly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import TEST_DATABASE_URL
from workers.store import db

RINNOVO = Path(sys.executable).with_name("rinnovo")


@pytest.fixture
def fresh_url() -> Iterator[str]:
    """A database name nobody has created yet, dropped afterwards."""
    url = make_conninfo(TEST_DATABASE_URL, dbname=f"rinnovo_test_{os.getpid()}_init")
    db.drop_database(url)
    yield url
    db.drop_database(url)


def db_init(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [str(RINNOVO), "db", "init"], env=env, capture_output=True, text=True, timeout=60
    )


def test_db_init_creates_the_database_then_applies_again_keeping_what_is_stored(fresh_url):
    first = db_init(fresh_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "created the database and applied schema.sql"
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO events (kind, dedupe_key, raw_body, content_type, fields, signature_algo,
                                key_index)
            VALUES ('ipn', 'kept', 'REFNO=1', 'application/x-www-form-urlencoded', '{}',
                    'sha256', 0)
            """
        )

    again = db_init(fresh_url)

    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "applied schema.sql"
    with psycopg.connect(fresh_url) as conn:
        kept = conn.execute("SELECT dedupe_key, raw_body FROM events").fetchall()
    assert kept == [("kept", b"REFNO=1")]


def test_stored_bodies_and_fields_are_compressed_with_lz4_where_the_server_has_it(conn):
    row = conn.execute(
        """
        SELECT 'lz4' = ANY(enumvals) AS lz4 FROM pg_settings
        WHERE name = 'default_toast_compression'
        """
    ).fetchone()
    rows = conn.execute(
        """
        SELECT attname AS name, attcompression AS method FROM pg_attribute
        WHERE attrelid = 'events'::regclass AND attname IN ('raw_body', 'fields')
        """
    ).fetchall()
    expected = "l" if row and row["lz4"] else ""  # "": the server's default, pglz
    assert {r["name"]: r["method"] for r in rows} == {"raw_body": expected, "fields": expected}


def test_db_init_against_a_server_that_does_not_answer_fails_with_a_clear_message():
    result = db_init("postgresql://127.0.0.1:9/rinnovo?connect_timeout=2")

    assert result.returncode != 0
    assert "cannot reach PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_init_widens_two_decimal_amounts_of_an_older_database_keeping_them(fresh_url):
    assert db_init(fresh_url).returncode == 0
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        # The database as it was when amounts were cut to two decimals.
        conn.execute("ALTER TABLE subscriptions ALTER COLUMN price_paid TYPE numeric(14, 2)")
        conn.execute("ALTER TABLE orders ALTER COLUMN amount TYPE numeric(14, 2)")
        conn.execute(
            "INSERT INTO customers (email, customer_key) VALUES ('a@example.com', 'k') RETURNING id"
        )
        conn.execute(
            """
            INSERT INTO subscriptions (license_code, customer_id, product_code, product, status,
                                       price_paid)
            SELECT 'LIC-OLD', id, 'P', 'P', 'active', 12.34 FROM customers
            """
        )

    again = db_init(fresh_url)
    assert again.returncode == 0, again.stderr
    assert db_init(fresh_url).returncode == 0  # and again: nothing left to change

    with psycopg.connect(fresh_url, autocommit=True) as conn:
        types = conn.execute(
            """
            SELECT table_name, format_type(atttypid, atttypmod) FROM information_schema.columns
            JOIN pg_attribute ON attrelid = table_name::regclass AND attname = column_name
            WHERE (table_name, column_name)
                  IN (('subscriptions', 'price_paid'), ('orders', 'amount'))
            ORDER BY table_name
            """
        ).fetchall()
        assert types == [("orders", "numeric"), ("subscriptions", "numeric")]
        conn.execute("UPDATE subscriptions SET price_paid = 1.234 WHERE license_code = 'LIC-OLD'")
        kept = conn.execute("SELECT price_paid::text FROM subscriptions").fetchone()
    assert kept == ("1.234",)


def test_db_init_lets_an_older_outbox_hold_suppressed_and_off_emails(fresh_url):
    assert db_init(fresh_url).returncode == 0
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        # The outbox as it was before emails could be suppressed or switched off.
        conn.execute("ALTER TABLE emails DROP CONSTRAINT emails_status_check")
        conn.execute(
            "ALTER TABLE emails ADD CONSTRAINT emails_status_check "
            "CHECK (status IN ('pending', 'sending', 'sent', 'failed'))"
        )

    again = db_init(fresh_url)
    assert again.returncode == 0, again.stderr
    assert db_init(fresh_url).returncode == 0

    with psycopg.connect(fresh_url, autocommit=True) as conn:
        definition = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'emails_status_check'"
        ).fetchone()
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'subscriptions' AND column_name = 'past_due_since'"
        ).fetchall()
    assert definition is not None and "'suppressed'" in definition[0] and "'off'" in definition[0]
    assert columns == [("past_due_since",)]


def test_db_init_dates_the_episode_of_a_subscription_already_past_due(fresh_url):
    assert db_init(fresh_url).returncode == 0
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        customer = conn.execute(
            "INSERT INTO customers (email, customer_key) VALUES ('p@example.com', 'p') RETURNING id"
        ).fetchone()[0]
        # A subscription that became past due before past_due_since existed.
        conn.execute(
            """
            INSERT INTO subscriptions (license_code, customer_id, product_code, product, status,
                                       updated_at)
            VALUES ('PASTDUE001', %s, 'AWDOC-TEAM-M', 'AWDoc', 'past_due', '2026-11-20T08:00:00Z')
            """,
            (customer,),
        )

    assert db_init(fresh_url).returncode == 0

    with psycopg.connect(fresh_url, autocommit=True) as conn:
        since = conn.execute(
            "SELECT past_due_since FROM subscriptions WHERE license_code = 'PASTDUE001'"
        ).fetchone()[0]
    assert since == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def test_each_database_url_is_served_by_a_pool_of_its_own(database_url, fresh_url):
    db.init_db(fresh_url)
    try:
        with db.connection(database_url) as first, db.connection(fresh_url) as second:
            names = [
                c.execute("SELECT current_database() AS name").fetchone()["name"]
                for c in (first, second)
            ]
    finally:
        db.close_pool(fresh_url)
    assert names == [conninfo_to_dict(url)["dbname"] for url in (database_url, fresh_url)]


def test_the_pool_opens_with_the_size_set_for_its_url(fresh_url):
    db.init_db(fresh_url)
    db.size_pool(fresh_url, 3)
    pool = db.get_pool(fresh_url)
    try:
        assert (pool.min_size, pool.max_size) == (1, 3)
    finally:
        db.close_pool(fresh_url)
