"""A subscription as operators ask about it (the admin API and page describe one with its history
and emails through workers.store.subscriptions)."""

from __future__ import annotations

from typing import Any

from workers.store.db import Conn


def row(conn: Conn, license_code: str) -> dict[str, Any] | None:
    """The subscription's row as it stands, unlocked (what a quote starts from)."""
    return conn.execute(
        "SELECT * FROM subscriptions WHERE license_code = %s", (license_code,)
    ).fetchone()
