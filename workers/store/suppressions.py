"""Addresses that unsubscribed from a family of emails: recorded, listed and lifted."""

from __future__ import annotations

from typing import Any

from workers.errors import BadFilter
from workers.store.db import Conn

HOW = ("one-click", "page")


def customer(conn: Conn, customer_id: int) -> dict[str, Any] | None:
    """The customer a token names (email and locale), or None when there is none."""
    row: dict[str, Any] | None = conn.execute(
        "SELECT id, email, locale FROM customers WHERE id = %s", (customer_id,)
    ).fetchone()
    return row


def record(conn: Conn, customer_id: int, family: str, how: str) -> bool:
    """Suppress `family` for the customer's address; False when the customer does not exist.

    A second request keeps the first record (when and how it was asked).
    """
    if how not in HOW:
        raise ValueError(f"unknown way of unsubscribing {how!r}")
    found = conn.execute(
        """
        INSERT INTO email_suppressions (address, family, customer_id, how)
        SELECT lower(email), %s, id, %s FROM customers WHERE id = %s
        ON CONFLICT (address, family) DO NOTHING
        RETURNING address
        """,
        (family, how, customer_id),
    ).fetchone()
    return found is not None or customer(conn, customer_id) is not None


def lift(conn: Conn, address: str) -> int:
    """Lift every suppression of `address`; how many there were."""
    rows = conn.execute(
        "DELETE FROM email_suppressions WHERE address = lower(%s) RETURNING family",
        (address.strip(),),
    ).fetchall()
    return len(rows)


def listing(conn: Conn, *, address: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Suppressions, newest first (only `address`'s when given); BadFilter for a NUL in it."""
    if address is not None and "\x00" in address:
        raise BadFilter("address contains a NUL character")
    rows: list[dict[str, Any]] = conn.execute(
        """
        SELECT address, family, how, created_at FROM email_suppressions
        WHERE %(address)s::text IS NULL OR address = lower(%(address)s)
        ORDER BY created_at DESC, address, family
        LIMIT %(limit)s
        """,
        {"address": address.strip() if address else None, "limit": limit},
    ).fetchall()
    return rows


def find(conn: Conn, address: str, family: str) -> dict[str, Any] | None:
    """The suppression of `family` for `address` (when and how it was asked), or None."""
    row: dict[str, Any] | None = conn.execute(
        """
        SELECT family, how, created_at FROM email_suppressions
        WHERE address = lower(%s) AND family = %s
        """,
        (address, family),
    ).fetchone()
    return row
