"""SQL for customers, subscriptions, orders and history. The caller owns the transaction."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from workers.store.batch import Part
from workers.store.db import Conn
from workers.store.jsonable import iso, jsonable

# The columns a change may touch, in the order history shows them.
TRACKED = (
    "status",
    "product_code",
    "product",
    "edition",
    "cycle",
    "quantity",
    "auto_renew",
    "test",
    "currency",
    "price_paid",
    "purchase_price",
    "period_start",
    "expires_at",
    "expected_expires_at",
    "policy_mismatch",
    "last_order_ref",
)


def upsert_customer(
    conn: Conn,
    *,
    customer_key: str,
    email: str,
    first_name: str,
    last_name: str,
    company: str,
    locale: str,
    event_id: int,
) -> dict[str, Any]:
    """Create or refresh a customer by the provider's reference (or email); the customer as it
    now stands: id, email, names, locale.

    Only an event at least as new as the last one that set the details may change them, so a
    replayed old order never brings back an old address.
    """
    params = (customer_key, email, first_name, last_name, company, locale, event_id)
    row = conn.execute(_UPSERT_CUSTOMER, (*params, customer_key)).fetchone()
    if row is None:  # created by a transaction that committed after this statement began
        row = conn.execute(
            "SELECT id, email, first_name, last_name, locale FROM customers "
            "WHERE customer_key = %s",
            (customer_key,),
        ).fetchone()
    assert row is not None
    return row


# The upsert, and the known row when there is nothing newer to write, in one statement.
_UPSERT_CUSTOMER = """
    WITH written AS (
        INSERT INTO customers
            (customer_key, email, first_name, last_name, company, locale, last_event_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (customer_key) DO UPDATE SET
            email = EXCLUDED.email,
            first_name = EXCLUDED.first_name,
            last_name = EXCLUDED.last_name,
            company = EXCLUDED.company,
            locale = COALESCE(NULLIF(EXCLUDED.locale, ''), customers.locale),
            last_event_id = EXCLUDED.last_event_id,
            updated_at = now()
        WHERE (customers.last_event_id IS NULL OR customers.last_event_id <= EXCLUDED.last_event_id)
          AND (customers.email, customers.first_name, customers.last_name, customers.company,
               customers.locale)
              IS DISTINCT FROM
              (EXCLUDED.email, EXCLUDED.first_name, EXCLUDED.last_name, EXCLUDED.company,
               COALESCE(NULLIF(EXCLUDED.locale, ''), customers.locale))
        RETURNING id, email, first_name, last_name, locale
    )
    SELECT id, email, first_name, last_name, locale FROM written
    UNION ALL
    SELECT id, email, first_name, last_name, locale FROM customers
    WHERE customer_key = %s AND NOT EXISTS (SELECT FROM written)
"""


def lock(conn: Conn, license_code: str) -> dict[str, Any] | None:
    """Load a subscription and lock its row: one writer per subscription at a time."""
    return conn.execute(
        "SELECT * FROM subscriptions WHERE license_code = %s FOR UPDATE", (license_code,)
    ).fetchone()


def create(conn: Conn, values: dict[str, Any]) -> dict[str, Any] | None:
    """Insert a subscription unless one with that license code exists; the new row, locked."""
    columns = list(values)
    query = sql.SQL(
        "INSERT INTO subscriptions ({}) VALUES ({}) ON CONFLICT (license_code) DO NOTHING "
        "RETURNING *"
    ).format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    return conn.execute(query, [values[c] for c in columns]).fetchone()


@functools.cache
def _update_sql(columns: tuple[str, ...]) -> str:
    """The UPDATE of these columns of one subscription, built once per set of columns."""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(column)) for column in columns
    )
    query = sql.SQL("UPDATE subscriptions SET {}, updated_at = now() WHERE id = %s")
    return query.format(assignments).as_string()


def update(conn: Conn, subscription_id: int, changes: dict[str, Any]) -> None:
    """Write the changed columns of one (already locked) subscription."""
    if changes:
        conn.execute(_update_sql(tuple(changes)).encode(), [*changes.values(), subscription_id])


def add_order(
    conn: Conn,
    *,
    subscription_id: int,
    event_id: int,
    refno: str,
    kind: str,
    order_status: str,
    amount: Decimal,
    currency: str,
) -> bool:
    """Record an order against a subscription; False when that (order, status) was already seen."""
    cur = conn.execute(
        """
        INSERT INTO orders (subscription_id, event_id, refno, kind, order_status, amount, currency)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (refno, subscription_id, order_status) DO NOTHING
        """,
        (subscription_id, event_id, refno, kind, order_status, amount, currency),
    )
    return cur.rowcount == 1


def has_order(conn: Conn, subscription_id: int) -> bool:
    """Whether any order of the subscription is recorded."""
    row = conn.execute(
        "SELECT 1 FROM orders WHERE subscription_id = %s LIMIT 1", (subscription_id,)
    ).fetchone()
    return row is not None


def order_seen(conn: Conn, subscription_id: int, refno: str, statuses: tuple[str, ...]) -> bool:
    """Whether this order already reached one of these statuses for the subscription."""
    row = conn.execute(
        """
        SELECT 1 FROM orders
        WHERE subscription_id = %s AND refno = %s AND order_status = ANY(%s)
        """,
        (subscription_id, refno, list(statuses)),
    ).fetchone()
    return row is not None


_HISTORY = (
    "INSERT INTO subscription_history (subscription_id, event_id, change, before, after, note) "
    "VALUES "
)
_HISTORY_ROW = "(%s, %s, %s, %s, %s, %s)"


def _history_row(
    subscription_id: int,
    event_id: int | None,
    change: str,
    before: dict[str, Any],
    after: dict[str, Any],
    note: str,
) -> tuple[Any, ...]:
    return (
        subscription_id,
        event_id,
        change,
        Jsonb({k: jsonable(v) for k, v in before.items()}),
        Jsonb({k: jsonable(v) for k, v in after.items()}),
        note,
    )


def add_history(
    conn: Conn,
    *,
    subscription_id: int,
    event_id: int | None,
    change: str,
    before: dict[str, Any],
    after: dict[str, Any],
    note: str = "",
) -> None:
    """Record one change to a subscription: what, from which event, before and after."""
    row = _history_row(subscription_id, event_id, change, before, after, note)
    conn.execute((_HISTORY + _HISTORY_ROW).encode(), row)


class Pending:
    """Subscription updates and history rows held back, to be sent together as one statement
    (`take`) before the transaction reads again or ends: what `update` and `add_history` would
    have written one by one, in the same order. Updates of one subscription merge into one."""

    def __init__(self) -> None:
        self.updates: dict[int, dict[str, Any]] = {}
        self.history: list[tuple[Any, ...]] = []

    def __bool__(self) -> bool:
        return bool(self.updates or self.history)

    def update(self, subscription_id: int, changes: dict[str, Any]) -> None:
        """`update`, held back."""
        if changes:
            self.updates.setdefault(subscription_id, {}).update(changes)

    def add_history(
        self,
        *,
        subscription_id: int,
        event_id: int | None,
        change: str,
        before: dict[str, Any],
        after: dict[str, Any],
        note: str = "",
    ) -> None:
        """`add_history`, held back."""
        self.history.append(_history_row(subscription_id, event_id, change, before, after, note))

    def take(self) -> list[Part]:
        """The held-back writes as statement parts, forgotten here."""
        parts: list[Part] = [
            (_update_sql(tuple(changes)), [*changes.values(), subscription_id])
            for subscription_id, changes in self.updates.items()
        ]
        if self.history:
            rows = ", ".join([_HISTORY_ROW] * len(self.history))
            parts.append((_HISTORY + rows, [value for row in self.history for value in row]))
        self.updates, self.history = {}, []
        return parts


def describe(conn: Conn, license_code: str) -> dict[str, Any] | None:
    """One subscription as the admin API shows it: state, customer and full history."""
    if "\x00" in license_code:  # PostgreSQL text cannot hold one, so no license code does
        return None
    row = conn.execute(
        """
        SELECT s.*, c.email, c.first_name, c.last_name, c.company, c.locale
        FROM subscriptions s JOIN customers c ON c.id = s.customer_id
        WHERE s.license_code = %s
        """,
        (license_code,),
    ).fetchone()
    if row is None:
        return None
    history = conn.execute(
        """
        SELECT at, change, event_id, before, after, note FROM subscription_history
        WHERE subscription_id = %s ORDER BY id
        """,
        (row["id"],),
    ).fetchall()
    name = " ".join(part for part in (row["first_name"], row["last_name"]) if part)
    return {
        "license_code": row["license_code"],
        "status": row["status"],
        "product_code": row["product_code"],
        "product": row["product"],
        "edition": row["edition"],
        "cycle": row["cycle"],
        "quantity": row["quantity"],
        "auto_renew": row["auto_renew"],
        "test": row["test"],
        "currency": row["currency"],
        "price_paid": str(row["price_paid"]),
        "purchase_price": None if row["purchase_price"] is None else str(row["purchase_price"]),
        "period_start": iso(row["period_start"]),
        "expires_at": iso(row["expires_at"]),
        "expected_expires_at": iso(row["expected_expires_at"]),
        "policy_mismatch": row["policy_mismatch"],
        "last_order_ref": row["last_order_ref"],
        "customer": {"email": row["email"], "name": name, "locale": row["locale"]},
        "history": [
            {
                "at": iso(h["at"]),
                "change": h["change"],
                "event_id": h["event_id"],
                "before": h["before"],
                "after": h["after"],
                "note": h["note"],
            }
            for h in history
        ],
    }


def emails(conn: Conn, license_code: str, limit: int = 100) -> list[dict[str, Any]]:
    """A subscription's outbox rows, newest first (instants in ISO): sent, held back, or off."""
    rows: list[dict[str, Any]] = conn.execute(
        """
        SELECT e.id, e.kind, e.fact, e.to_address, e.status, e.created_at, e.sent_at,
               e.last_error
        FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
        WHERE s.license_code = %s
        ORDER BY e.id DESC
        LIMIT %s
        """,
        (license_code, limit),
    ).fetchall()
    return [
        row | {"created_at": iso(row["created_at"]), "sent_at": iso(row["sent_at"])} for row in rows
    ]
