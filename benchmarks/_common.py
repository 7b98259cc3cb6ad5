"""What every benchmark needs: a database and a Redis db of its own, on the configured servers."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import make_conninfo


def own_database_url(name: str) -> str:
    """The benchmark's own database, on the server DATABASE_URL names (or the local one)."""
    server = os.environ.get("DATABASE_URL") or "postgresql://127.0.0.1:5432"
    return make_conninfo(server, dbname=name)


def own_redis_url(db_number: int) -> str:
    """The benchmark's own Redis db, on the server REDIS_URL names (or the local one)."""
    parts = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    return urlunsplit(parts._replace(path=f"/{db_number}"))
