"""`rinnovo reconcile`: compare the provider's subscriptions and orders with Rinnovo's records."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import click

from workers.errors import ConfigError
from workers.jobs import reconcile, runtime
from workers.provider_api import Client, ProviderApiError
from workers.store import db
from workers.store.db import Conn
from workers.store.reports.runs import outcomes
from workers.terminal import visible

POLL_SECONDS = 0.5


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        message = f"not a YYYY-MM-DD date: {value!r}"
        raise click.BadParameter(message, param_hint="--since") from None


@click.command("reconcile")
@click.option("--since", metavar="DATE", help="First day (default: the day before the last sweep).")
@click.option("--license", "license_code", metavar="CODE", help="Only this subscription.")
@click.option("--dry-run", is_flag=True, help="Print the differences and change nothing.")
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the workers to apply the differences before the summary.",
)
def reconcile_command(
    since: str | None, license_code: str | None, dry_run: bool, wait_seconds: float
) -> None:
    """Compare what the provider's API holds with Rinnovo's subscriptions and orders, and apply
    every difference through the workers (as a notification is), unless --dry-run."""
    start, today = _day(since), datetime.now(UTC).date()
    if start is not None and start > today:
        raise click.BadParameter(f"{start} is in the future", param_hint="--since")
    settings = runtime.current().settings
    try:
        client = Client.from_settings(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    with client, db.statement(settings.database_url) as conn:
        start = start or reconcile.default_start(conn)
        if start is None:
            raise click.ClickException(
                "no sweep has succeeded yet and no notification is stored: "
                "pass --since DATE (the first day to compare)"
            )
        sweep = reconcile.Sweep(start, today, license_code=license_code, dry_run=dry_run)
        what = f"subscription {license_code}" if license_code else "subscriptions changed"
        then = (
            "nothing is changed"
            if dry_run
            else "each difference is stored as a reconciliation event and applied by the workers"
        )
        header = f"{what} since {start}, orders of {start} to {today}; {then}"
        click.echo(visible(f"{'dry run' if dry_run else 'sweep'}: {header}"))
        try:
            reconcile.run(
                conn,
                client,
                sweep,
                report=lambda found: click.echo(found.line()),
                enqueue=reconcile.dispatcher(settings.database_url),
            )
        except ProviderApiError as exc:
            raise click.ClickException(visible(f"sweep {sweep.run_id} stopped: {exc}")) from None
        if dry_run:
            click.echo(sweep.summary())
            return
        click.echo(f"{sweep.summary()}; {_applied(conn, sweep, wait_seconds)}")


def _applied(conn: Conn, sweep: reconcile.Sweep, wait_seconds: float) -> str:
    """How the sweep's events fared, once the workers applied them all or the wait is over."""
    deadline = time.monotonic() + wait_seconds
    found = outcomes(conn, sweep.run_id)
    while found.waiting and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        found = outcomes(conn, sweep.run_id)
    waiting = f", {found.waiting} waiting for the workers" if found.waiting else ""
    return f"{found.applied} applied, {found.failed} failed{waiting}"


COMMANDS = [reconcile_command]
