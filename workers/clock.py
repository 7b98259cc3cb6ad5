"""The clock: periodic jobs (relay of unenqueued events, reminder scan) in one small process."""

from __future__ import annotations

import logging

from apscheduler.schedulers.blocking import BlockingScheduler

from workers import dispatch
from workers.config import Settings
from workers.errors import BrokerUnavailable, DatabaseUnavailable

log = logging.getLogger(__name__)

RELAY_EVERY_SECONDS = 60


def relay_job(settings: Settings) -> None:
    """Enqueue events stored but never enqueued; an outage just waits for the next tick."""
    try:
        count = dispatch.relay(settings.database_url)
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        log.warning("relay skipped this tick: %s", exc)
        return
    if count:
        log.info("relay enqueued %d event(s)", count)


def build_scheduler(settings: Settings) -> BlockingScheduler:
    """The schedule. Every job is safe on several clocks at once (row locks, unique rows)."""
    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(
        relay_job,
        "interval",
        seconds=RELAY_EVERY_SECONDS,
        args=[settings],
        id="relay",
        max_instances=1,
        coalesce=True,
    )
    return scheduler


def run(settings: Settings) -> None:
    """Run the clock until interrupted, with one relay pass at start-up."""
    relay_job(settings)
    build_scheduler(settings).start()
