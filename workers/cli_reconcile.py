"""`rinnovo reconcile`: compare the provider's subscriptions and orders with Rinnovo's records."""

from __future__ import annotations

from datetime import UTC, date, datetime

import click

from workers import db, reconcile
from workers.config import Settings
from workers.errors import ConfigError
from workers.provider_api import Client, ProviderApiError

NOT_YET = "applying differences is not available yet; use --dry-run"


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
def reconcile_command(since: str | None, license_code: str | None, dry_run: bool) -> None:
    """Compare what the provider's API holds with Rinnovo's subscriptions and orders."""
    if not dry_run:
        click.echo(f"rinnovo reconcile: {NOT_YET}", err=True)
        raise SystemExit(2)
    start, today = _day(since), datetime.now(UTC).date()
    if start is not None and start > today:
        raise click.BadParameter(f"{start} is in the future", param_hint="--since")
    settings = Settings.from_env()
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
        sweep = reconcile.Sweep(start, today, license_code=license_code, dry_run=True)
        what = f"subscription {license_code}" if license_code else "subscriptions changed"
        click.echo(
            reconcile.visible(
                f"dry run: {what} since {start}, orders of {start} to {today}; nothing is changed"
            )
        )
        try:
            reconcile.run(conn, client, sweep, report=lambda found: click.echo(found.line()))
        except ProviderApiError as exc:
            raise click.ClickException(
                reconcile.visible(f"sweep {sweep.run_id} stopped: {exc}")
            ) from None
    click.echo(sweep.summary())


COMMANDS = [reconcile_command]
