"""A no-op actor on the service's broker setup: the baseline `process` compares event work with."""

from __future__ import annotations

import dramatiq

import workers.jobs.broker  # noqa: F401  # sets the broker (and its namespace) before the actor exists

QUEUE = "bench-noop"


@dramatiq.actor(queue_name=QUEUE)
def noop(event_id: int, emails: bool = True) -> None:
    """Take the same arguments as process_event and do nothing with them."""
