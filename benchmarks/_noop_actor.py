"""A no-op actor on the service's broker setup: the baseline `process` compares event work with."""

from __future__ import annotations

import dramatiq

from workers.jobs.runtime import Runtime

# As the worker's boot module does: the runtime (and its broker, with its namespace) is installed
# before the actor is declared on it.
Runtime.from_env().install()

QUEUE = "bench-noop"


@dramatiq.actor(queue_name=QUEUE)
def noop(event_id: int, emails: bool = True) -> None:
    """Take the same arguments as process_event and do nothing with them."""
