"""A one-transaction actor: the least any worker committing once per event must do, on the
service's pool; `process` times it beside the no-op actor and the events."""

from __future__ import annotations

import dramatiq

from workers.jobs.runtime import Runtime
from workers.store import db

# As the worker's boot module does: the runtime (and its broker, with its namespace) is installed
# before the actor is declared on it.
RUNTIME = Runtime.from_env().install()

QUEUE = "bench-transaction"
OUTCOME = "one transaction"


@dramatiq.actor(queue_name=QUEUE)
def one_transaction(event_id: int, emails: bool = True) -> None:
    """Take the same arguments as process_event; on the service's pool, lock the stored event's
    row and write its outcome in one transaction (BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT)."""
    with db.connection(RUNTIME.settings.database_url) as conn, conn.transaction():
        conn.execute(
            "SELECT id, status FROM events WHERE id = %s FOR UPDATE", (event_id,)
        ).fetchone()
        conn.execute(
            "UPDATE events SET status = 'processed', outcome = %s, processed_at = now() "
            "WHERE id = %s",
            (OUTCOME, event_id),
        )
