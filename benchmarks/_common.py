"""What every benchmark needs: a database and a Redis db of its own, on the configured servers."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent


def own_database_url(name: str) -> str:
    """The benchmark's own database, on the server DATABASE_URL names (or the local one)."""
    server = os.environ.get("DATABASE_URL") or "postgresql://127.0.0.1:5432"
    return make_conninfo(server, dbname=name)


def own_redis_url(db_number: int) -> str:
    """The benchmark's own Redis db, on the server REDIS_URL names (or the local one)."""
    parts = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    return urlunsplit(parts._replace(path=f"/{db_number}"))


def procfile_gunicorn_options(*, drop: tuple[str, ...] = ("--bind", "--workers")) -> list[str]:
    """The gunicorn options of the Procfile's `web:` line (worker class, deadlines, logger).

    Options in `drop` (with their values) and the app target are left out, so a caller serving
    another app or port runs it the way production does.
    """
    line = next(
        line.removeprefix("web:")
        for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("web:")
    )
    words = shlex.split(line)
    assert words[0] == "gunicorn", line
    options: list[str] = []
    rest = iter(words[1:-1])  # the last word is the app target
    for word in rest:
        if word in (*drop, "--access-logfile"):  # the caller decides where it listens and logs
            next(rest)
        else:
            options.append(word)
    return options
