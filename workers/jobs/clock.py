"""The clock: periodic jobs (relay of unenqueued events, reminder scan, reconciliation with the
provider's API) in one small process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.blocking import BlockingScheduler

from workers.config import Settings
from workers.errors import BrokerUnavailable, ConfigError, DatabaseUnavailable
from workers.jobs import dispatch, outbox, reconcile, reminders
from workers.provider_api import ProviderApiError

log = logging.getLogger(__name__)

# Within the recovery objective: an overdue job is sent again at most this long after the grace.
RELAY_EVERY_SECONDS = 10
EMAIL_RELAY_EVERY_SECONDS = 10
# Hourly for "today" (UTC): a run finds what earlier runs wrote and writes nothing twice, and a
# subscription skipped because a worker held it is caught an hour later.
REMINDERS_MINUTE = 7
# Hourly, away from the reminder scan: subscriptions whose expected notification never came.
WATCHDOG_MINUTE = 37


def _relay(name: str, relay: Callable[[str], int], settings: Settings) -> None:
    try:
        relay(settings.database_url)  # logs what it enqueued
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        log.warning("%s skipped this tick: %s", name, exc)


def relay_job(settings: Settings) -> None:
    """Enqueue events stored but never enqueued; an outage just waits for the next tick."""
    _relay("relay", dispatch.relay, settings)


def email_relay_job(settings: Settings) -> None:
    """Enqueue emails the broker never took (or lost); an outage just waits for the next tick."""
    _relay("email relay", outbox.relay, settings)


def reminder_job(settings: Settings) -> None:
    """Run the reminder scan for today (UTC); an outage or a bad setting waits for the next run."""
    today = datetime.now(UTC).date()
    try:
        reminders.run(settings, today)  # logs what it wrote
    except (DatabaseUnavailable, ConfigError) as exc:
        log.warning("reminder scan for %s stopped: %s", today.isoformat(), exc)


def _sweep(
    name: str, sweep: Callable[[Settings], reconcile.Sweep | None], settings: Settings
) -> None:
    """Run a sweep of the provider's API (recorded in reconcile_runs, failed or not); a refusal or
    an outage waits for the next run."""
    try:
        done = sweep(settings)
    except (ProviderApiError, DatabaseUnavailable, ConfigError) as exc:
        log.warning("%s stopped: %s", name, exc)
    else:
        if done is not None:
            log.info("%s %s: %s", name, done.run_id, done.summary())


def reconcile_job(settings: Settings) -> None:
    """The daily sweep of every subscription the provider changed since the last one."""
    _sweep("reconcile sweep", reconcile.daily, settings)


def watchdog_job(settings: Settings) -> None:
    """Look up at the provider the subscriptions whose expected notification never came."""
    _sweep("expected-notification watchdog", reconcile.watchdog, settings)


def _reconcile_jobs(scheduler: BlockingScheduler, settings: Settings) -> None:
    """The sweep at RECONCILE_AT and the hourly watchdog; both off without the merchant code."""
    if not settings.merchant_code:
        return
    if settings.reconcile_at is not None:
        scheduler.add_job(
            reconcile_job,
            "cron",
            hour=settings.reconcile_at.hour,
            minute=settings.reconcile_at.minute,
            args=[settings],
            id="reconcile",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=60 * 60,
        )
    scheduler.add_job(
        watchdog_job,
        "cron",
        minute=WATCHDOG_MINUTE,
        args=[settings],
        id="watchdog",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=30 * 60,
    )


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
    scheduler.add_job(
        email_relay_job,
        "interval",
        seconds=EMAIL_RELAY_EVERY_SECONDS,
        args=[settings],
        id="email_relay",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        reminder_job,
        "cron",
        minute=REMINDERS_MINUTE,
        args=[settings],
        id="reminders",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=30 * 60,
    )
    _reconcile_jobs(scheduler, settings)
    return scheduler


def quiet_scheduler() -> None:
    """Keep APScheduler's warnings and errors (a job that raised, a missed run), not its chatter.

    It logs two info lines per job run: with relays every 10 s they bury what the jobs say.
    """
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def run(settings: Settings) -> None:
    """Run the clock until interrupted, with one pass of every job at start-up."""
    quiet_scheduler()
    relay_job(settings)
    email_relay_job(settings)
    reminder_job(settings)
    build_scheduler(settings).start()
