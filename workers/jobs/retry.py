"""Retry policies, and what a running job knows of its own retry (the relays' thresholds follow it).

Dramatiq holds a failed job's retry as a delayed message, in Redis and then in one worker's
memory: a worker killed, or one that loses Redis, loses it, and a retry the broker refused is
dropped. So the row keeps the truth instead: when a job fails transiently, the row records the
latest instant its retry can start (`due_at`: the retry policy's longest delay, jitter included)
and, for emails, which job that retry is (`retry_job`). The relays send again whatever is overdue,
and a stray copy of an older job finds another job named and leaves the row to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dramatiq import Message
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long an actor retries: dramatiq's options, in one place."""

    max_retries: int
    min_backoff_ms: int
    max_backoff_ms: int

    def actor_options(self) -> dict[str, Any]:
        """The options of `@dramatiq.actor` that carry this policy."""
        return {
            "max_retries": self.max_retries,
            "min_backoff": self.min_backoff_ms,
            "max_backoff": self.max_backoff_ms,
        }


# The largest delay is 30 s for both: once a fault ends (the database or the SMTP server back),
# every retry comes within half a minute, whatever the length of the outage. Many retries (22.5 s
# apart on average once at the cap) keep the windows as they were: about two hours for an event,
# about a day for an email.
EVENTS = RetryPolicy(max_retries=320, min_backoff_ms=2_000, max_backoff_ms=30_000)
EMAILS = RetryPolicy(max_retries=3_840, min_backoff_ms=5_000, max_backoff_ms=30_000)


def latest_delay_ms(retries: int, min_backoff_ms: int, max_backoff_ms: int) -> int:
    """The longest delay dramatiq's Retries middleware can choose before retry number `retries`+1.

    It draws `min * 2**retries * uniform(1, 2)`, and 50-100 % of the maximum beyond it.
    """
    ceiling = min(max_backoff_ms, DEFAULT_MAX_BACKOFF)
    return min(min_backoff_ms * 2 ** min(retries, 32) * 2, ceiling)


@dataclass(frozen=True)
class Job:
    """The running job: its name in the row (`token`), its retry's, and when that retry is due."""

    token: str | None  # "<message id>/<retry number>"; None outside a worker
    next_token: str | None
    retry_within_seconds: float  # the latest the retry can start, after a failure now
    final: bool  # no retry is left


def job_of(message: Message[Any] | None, policy: RetryPolicy) -> Job:
    """The job a worker runs for `message` (None: outside a worker), by the message's options
    over the actor's policy."""
    if message is None:
        return Job(token=None, next_token=None, retry_within_seconds=0.0, final=True)
    options: dict[str, Any] = message.options
    retries: int = options.get("retries", 0)
    max_retries: int = options.get("max_retries", policy.max_retries)
    delay = latest_delay_ms(
        retries,
        options.get("min_backoff", policy.min_backoff_ms),
        options.get("max_backoff", policy.max_backoff_ms),
    )
    return Job(
        token=f"{message.message_id}/{retries}",
        next_token=f"{message.message_id}/{retries + 1}",
        retry_within_seconds=delay / 1000,
        final=retries >= max_retries,
    )
