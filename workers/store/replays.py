"""SQL of a replay: the stored bodies read again, today's readings stored where they changed, and
the events taken back to `enqueued`. Functions take the connection first; the caller owns the
transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from workers.store.db import Conn

# PostgreSQL compares the readings, so only rows whose reading changed are written and the
# stored fields never need to be loaded into Python. The readings travel as one JSON document:
# an array parameter of JSON values would be escaped element by element, which is slow.
# A notification's fields are not stored but read from its body whenever shown (events.get):
# today's fields are compared with a reading an older row still holds, and such a reading is
# cleared ('{}') when the row is refreshed, so that the row shows today's.
_STORE_READINGS = """
    WITH v AS (
        SELECT r.id, r.fields, r.summary, r.test,
               ARRAY(SELECT jsonb_array_elements_text(r.codes)) AS license_codes
        FROM jsonb_to_recordset(%s::jsonb)
             AS r(id bigint, fields jsonb, summary text, codes jsonb, test boolean)
    )
    UPDATE events AS e
    SET fields = '{}', summary = v.summary, license_codes = v.license_codes, test = v.test
    FROM v
    WHERE e.id = v.id
      AND (CASE WHEN e.fields = '{}' THEN v.fields ELSE e.fields END,
           e.summary, e.license_codes, e.test)
          IS DISTINCT FROM (v.fields, v.summary, v.license_codes, v.test)
    RETURNING e.id
"""


def store_readings(conn: Conn, readings: Sequence[Mapping[str, Any]]) -> int:
    """Store each event's reading ({id, fields, summary, codes, test}) where it differs from the
    one it shows (its fields are read from its body, not stored); how many differed."""
    if not readings:
        return 0
    return len(conn.execute(_STORE_READINGS, (Jsonb(list(readings)),)).fetchall())


def bodies(conn: Conn, event_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The kind and raw body of each of these events, by id."""
    return conn.execute(
        "SELECT id, kind, raw_body FROM events WHERE id = ANY(%s) ORDER BY id", (list(event_ids),)
    ).fetchall()


def existing(conn: Conn, event_ids: Sequence[int]) -> set[int]:
    """Which of these ids name a stored event."""
    rows = conn.execute("SELECT id FROM events WHERE id = ANY(%s)", (list(event_ids),)).fetchall()
    return {row["id"] for row in rows}


def take(conn: Conn, event_ids: Sequence[int], *, by: str) -> list[int]:
    """Lock these events (in id order, so two replays at once take turns instead of deadlocking)
    and move them back to `enqueued`, asked by `by`; the ids that name an event.

    The attempts' history stays in event_attempts; the row shows the latest.
    """
    rows = conn.execute(
        "SELECT id FROM events WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (list(event_ids),)
    ).fetchall()
    taken = [row["id"] for row in rows]
    conn.execute(
        """
        UPDATE events
        SET status = 'enqueued', enqueued_at = now(), processed_at = NULL, enqueued_by = %s
        WHERE id = ANY(%s)
        """,
        (by, taken),
    )
    return taken
