"""The `rinnovo` command line.

It speaks to a person: a command's result goes to standard output, log lines (JSON) to standard
error, and at default verbosity only warnings and errors are logged (`-v` info, `-vv` debug).
Exit statuses: 0 done, 1 an error (one line on standard error, no traceback), 2 a usage error
(a bad option or argument), 3 refused (a quote the policy refuses).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
from dotenv import load_dotenv

from workers.config import Settings
from workers.errors import RinnovoError
from workers.jobs import dispatch, runtime
from workers.jobs.runtime import Runtime
from workers.logs import configure_logging
from workers.store import db as database
from workers.terminal import visible

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)
# Libraries whose retries are chatter for a person: the command's own error says what failed.
_QUIET_AT_DEFAULT = ("psycopg.pool",)


def _settings() -> Settings:
    return runtime.current().settings


class _Group(click.Group):
    """The top group: Rinnovo's own errors become one line and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning a RinnovoError into a ClickException (exit status 1)."""
        try:
            return super().invoke(ctx)
        except RinnovoError as exc:
            raise click.ClickException(visible(str(exc))) from None


def _verbosity(verbose: int) -> int:
    """The log level for `-v` given `verbose` times (warnings only without it)."""
    return _LEVELS[min(verbose, len(_LEVELS) - 1)]


def _log_at(level: int) -> None:
    """Log JSON to stderr at `level`; below info, libraries' retry chatter is left out too."""
    configure_logging(level)
    for name in _QUIET_AT_DEFAULT:
        logging.getLogger(name).setLevel(logging.ERROR if level > logging.INFO else logging.NOTSET)


@click.group(cls=_Group)
@click.option(
    "-v", "--verbose", count=True, help="Log more: -v info, -vv debug (default: warnings)."
)
def cli(verbose: int) -> None:
    """Rinnovo: 2Checkout notifications in, subscriptions and customer emails out."""
    _log_at(_verbosity(verbose))
    # Built here, after main() read ./.env: the commands' pool and broker, set before any of
    # them imports the actors (declared on the broker installed then).
    Runtime.from_env().install()


@cli.group()
def db() -> None:
    """The database."""


@db.command("init")
def db_init() -> None:
    """Create the database if it is missing and apply schema.sql (safe to run again)."""

    url = _settings().database_url
    created = database.init_db(url)
    click.echo(("created the database and applied" if created else "applied") + " schema.sql")


@cli.command()
@click.pass_context
def clock(ctx: click.Context) -> None:
    """Run the scheduler: the relay of stored-but-unenqueued events and the reminder scan."""
    # Deferred: APScheduler stays out of every other command's start-up, and the actors are
    # declared on the broker the group installs at start-up, so they are imported after it.
    from workers.jobs import clock as scheduler

    # A service, not a command a person waits on: it logs what it does at info level at least.
    root = ctx.find_root().params.get("verbose", 0)
    _log_at(min(_verbosity(root), logging.INFO))
    scheduler.run(_settings())


@cli.command()
@click.option(
    "--older-than", default=0.0, show_default=True, help="Only events stored this many seconds ago."
)
def relay(older_than: float) -> None:
    """Enqueue now every event that was stored but never enqueued."""
    count = dispatch.relay(_settings().database_url, older_than_seconds=older_than)
    click.echo(f"enqueued {count} event(s)")


# Each area of the CLI lives in its own module and registers its group here.
_COMMAND_MODULES: tuple[str, ...] = (
    "workers.cli.events",
    "workers.cli.reconcile",
    "workers.cli.emails",
    "workers.cli.simulate",
    "workers.cli.subscriptions",
)


def _register() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Entry point of the console script: reads ./.env (the environment wins), then runs."""
    load_dotenv(Path.cwd() / ".env", override=False)
    cli()
