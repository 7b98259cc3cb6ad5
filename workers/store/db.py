"""The database: one connection pool per process, schema setup, and psycopg errors made ours."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from workers.errors import DatabaseUnavailable, ValueNotStorable

Conn = psycopg.Connection[DictRow]  # every pooled connection returns rows as dicts
T = TypeVar("T")

# Errors that mean "the server cannot serve now", beside a lost or refused connection (class 08,
# or no SQLSTATE at all: libpq's own): shutting down, starting up, out of connection slots.
OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})

SCHEMA_LOCK_ID = 7_267_001  # advisory lock: two `db init` at once apply the schema one by one

# One pool per database URL, opened on first use, so a URL passed later is never served by a pool
# opened for another; the size each URL's pool gets when it opens, and how long a caller waits for
# one of its connections (the runtime sets them).
_pools: dict[str, ConnectionPool[Conn]] = {}
_sizes: dict[str, int] = {}
_timeouts: dict[str, float] = {}
_pool_lock = threading.Lock()
DEFAULT_POOL_SIZE = 12
DEFAULT_POOL_TIMEOUT = 5.0


def schema_path() -> Path:
    """Where schema.sql is: beside the packages in a checkout."""
    return Path(__file__).resolve().parents[2] / "schema.sql"


def size_pool(database_url: str, max_size: int, *, timeout: float = DEFAULT_POOL_TIMEOUT) -> None:
    """The size of the pool for `database_url` when it opens, and the seconds a caller waits for
    one of its connections before the database counts as unavailable (an open pool keeps both)."""
    with _pool_lock:
        _sizes[database_url] = max_size
        _timeouts[database_url] = timeout


def get_pool(database_url: str, *, max_size: int | None = None) -> ConnectionPool[Conn]:
    """The pool for `database_url`, opened on first use with `max_size` or the size set for the
    URL (after a fork: each gunicorn worker has its own)."""
    with _pool_lock:
        pool = _pools.get(database_url)
        if pool is None:
            pool = _pools[database_url] = ConnectionPool(
                database_url,
                min_size=1,
                max_size=max_size or _sizes.get(database_url, DEFAULT_POOL_SIZE),
                kwargs={"row_factory": dict_row, "connect_timeout": 5},
                # No check on checkout (a round trip per use): a connection that died while
                # idle fails its statement, and `once_more` runs it again on a fresh one;
                # max_idle retires connections before servers or firewalls drop them.
                max_idle=60.0,
                timeout=_timeouts.get(database_url, DEFAULT_POOL_TIMEOUT),
                open=True,
                name="rinnovo",
            )
        return pool


def close_pool(database_url: str | None = None) -> None:
    """Close the pool for `database_url`, or every pool of the process (tests, clean shutdown)."""
    with _pool_lock:
        urls = list(_pools) if database_url is None else [database_url]
        pools = [_pools.pop(url) for url in urls if url in _pools]
    for pool in pools:
        pool.close()


@contextlib.contextmanager
def connection(database_url: str) -> Iterator[Conn]:
    """A pooled connection; the caller owns the transaction. Outages become DatabaseUnavailable."""
    try:
        with get_pool(database_url).connection() as conn:
            yield conn
    except PoolTimeout as exc:
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
    except psycopg.OperationalError as exc:
        if not is_outage(exc):
            # A value too large for an index is 54000, an OperationalError too, but retrying
            # it would be answered the same forever.
            if exc.sqlstate and exc.sqlstate.startswith("54"):
                raise ValueNotStorable(_first_line(exc)) from exc
            raise
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
    except psycopg.DataError as exc:
        raise ValueNotStorable(_first_line(exc)) from exc


def is_outage(exc: psycopg.Error) -> bool:
    """Whether an error means PostgreSQL cannot be reached or cannot serve right now."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in OUTAGE_STATES


def _first_line(exc: psycopg.Error) -> str:
    return f"value not storable: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"


@contextlib.contextmanager
def statement(database_url: str) -> Iterator[Conn]:
    """A pooled connection in autocommit: one statement is its own transaction, one round trip."""
    with connection(database_url) as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            with contextlib.suppress(psycopg.Error):  # a broken connection is discarded anyway
                conn.autocommit = False


def once_more(database_url: str, work: Callable[[Conn], T]) -> T:
    """Run `work` on a pooled connection in autocommit; if that connection turns out dead (the
    server restarted since the pool opened it), run it once more on a fresh one.

    Meant for one idempotent statement, such as the receiver's INSERT ... ON CONFLICT: without
    it, the first request after a restart would fail (503) on the connection the restart killed.
    """
    try:
        with statement(database_url) as conn:
            return work(conn)
    except DatabaseUnavailable as exc:
        if not isinstance(exc.__cause__, psycopg.OperationalError):
            raise  # no connection could be had at all: the server is down, not restarted
        # The other idle connections most likely died the same way: replace them all now.
        get_pool(database_url).check()
    with statement(database_url) as conn:
        return work(conn)


def _admin_conninfo(database_url: str) -> tuple[str, str]:
    params = conninfo_to_dict(database_url)
    name = str(params.get("dbname") or params.get("user") or "postgres")
    return make_conninfo(database_url, dbname="postgres"), name


def create_database(database_url: str) -> bool:
    """Create the database named in the URL if it does not exist; True when it was created."""
    admin, name = _admin_conninfo(database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created by a concurrent `db init`
        return True


def drop_database(database_url: str) -> None:
    """Drop the database named in the URL (tests only)."""
    admin, name = _admin_conninfo(database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def apply_schema(conn: psycopg.Connection) -> None:
    """Apply schema.sql in one transaction; every statement in it is idempotent."""
    text = schema_path().read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))
        conn.execute(text.encode())  # a trusted file of statements, not a value


def init_db(database_url: str) -> bool:
    """Create the database if missing and apply the schema; True when the database was created."""
    try:
        created = create_database(database_url)
        with psycopg.connect(database_url) as conn:
            apply_schema(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}".strip()) from exc
    return created


def commit_unwaited(conn: Conn) -> None:
    """Let the caller's transaction commit without waiting for the disk (synchronous_commit
    off): for a write whose loss in a crash costs nothing but doing it again."""
    conn.execute("SET LOCAL synchronous_commit = off")


def read_only(conn: Conn) -> None:
    """Make the caller's transaction, just begun, read only."""
    conn.execute("SET TRANSACTION READ ONLY")


def ping(database_url: str) -> None:
    """Raise DatabaseUnavailable unless the database answers."""
    with connection(database_url) as conn:
        conn.execute("SELECT 1")
