"""The least a durable receiver can do: commit each body to PostgreSQL, then answer.

`ingest` runs it beside the bare endpoint to show what one durable write per request costs on
the machine at hand, with no parsing, verification, dedupe or broker: a ceiling for any receiver
that commits before it acknowledges.
"""

from __future__ import annotations

import os

import psycopg
from flask import Flask, Response, request

BODY = "OK"

app = Flask(__name__)
_conn: psycopg.Connection | None = None


def create_table(database_url: str) -> None:
    """Create the table once, before serving: concurrent CREATE TABLE IF NOT EXISTS can collide."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_bodies (id bigserial PRIMARY KEY, body bytea)"
        )


def _connection() -> psycopg.Connection:
    global _conn
    if _conn is None:  # one per worker process, opened after gunicorn forks it
        _conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    return _conn


@app.post("/ipn")
def receive() -> Response:
    """Commit the body in one autocommit INSERT and answer a fixed short text."""
    _connection().execute(
        "INSERT INTO bench_bodies (body) VALUES (%s)", (request.get_data(cache=False),)
    )
    return Response(BODY, status=200, mimetype="text/plain")
