"""The `rinnovo` command line."""

from __future__ import annotations

import logging
import sys

import click

from workers.config import Settings
from workers.errors import RinnovoError
from workers.logs import configure_logging
from workers.terminal import visible


def _settings() -> Settings:
    return Settings.from_env()


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def cli(verbose: bool) -> None:
    """Rinnovo: 2Checkout notifications in, subscriptions and customer emails out."""
    configure_logging(logging.DEBUG if verbose else logging.INFO)


@cli.group()
def db() -> None:
    """The database."""


@db.command("init")
def db_init() -> None:
    """Create the database if it is missing and apply schema.sql (safe to run again)."""
    from workers import db as database

    url = _settings().database_url
    created = database.init_db(url)
    click.echo(("created the database and applied" if created else "applied") + " schema.sql")


@cli.command()
def clock() -> None:
    """Run the scheduler: the relay of stored-but-unenqueued events and the reminder scan."""
    from workers import clock as scheduler

    scheduler.run(_settings())


@cli.command()
@click.option(
    "--older-than", default=0.0, show_default=True, help="Only events stored this many seconds ago."
)
def relay(older_than: float) -> None:
    """Enqueue now every event that was stored but never enqueued."""
    from workers import dispatch

    count = dispatch.relay(_settings().database_url, older_than_seconds=older_than)
    click.echo(f"enqueued {count} event(s)")


# Each area of the CLI lives in its own module and registers its group here.
_COMMAND_MODULES: tuple[str, ...] = (
    "workers.cli_events",
    "workers.cli_emails",
    "workers.cli_simulate",
    "workers.cli_subscriptions",
)


def _register() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Entry point of the console script: domain errors become one clear line and exit status 1."""
    try:
        cli(standalone_mode=True)
    except RinnovoError as exc:
        click.echo(f"rinnovo: {visible(exc)}", err=True)
        sys.exit(1)
