"""Several writes sent as one statement: data-modifying CTEs, one round trip, one parse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.store.db import Conn

# One write: its SQL (built from trusted text and quoted identifiers only) and its parameters.
Part = tuple[str, Sequence[Any]]


def ctes(parts: Sequence[Part]) -> tuple[str, list[Any]]:
    """The parts as data-modifying CTEs to open a WITH list ("w0 AS (...), "), and their
    parameters. Every part sees the statement's snapshot: none may read what another writes."""
    text = "".join(f"w{n} AS ({query}), " for n, (query, _) in enumerate(parts))
    return text, [value for _, values in parts for value in values]


def execute(conn: Conn, parts: Sequence[Part]) -> None:
    """Send the parts as one statement, the last the main one (nothing when there is none)."""
    if not parts:
        return
    *before, (last, last_params) = parts
    head, params = ctes(before)
    query = f"WITH {head.removesuffix(', ')} {last}" if before else last
    conn.execute(query.encode(), [*params, *last_params])
