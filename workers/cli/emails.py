"""`rinnovo reminders run` and `rinnovo emails preview|list|resend`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from emails.preview import preview
from emails.render import KINDS, LOCALES, template_locale
from workers.cli.events import _cut, _when, table
from workers.cli.subscriptions import Refused
from workers.errors import BadFilter
from workers.jobs import reminders, runtime
from workers.store import db, suppressions
from workers.store.jsonable import iso
from workers.store.outbox import FAILURES
from workers.store.reports.emails import list_emails
from workers.store.statuses import EMAIL_STATUSES
from workers.terminal import visible


@click.group("reminders")
def reminders_group() -> None:
    """Renewal reminders, automatic-renewal notices and expiries."""


@reminders_group.command("run")
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Run for this UTC day (YYYY-MM-DD): today or a past one the clock missed. Default: today.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only print what the scan would send and expire (any day, even a future one).",
)
def reminders_run(as_of: datetime | None, dry_run: bool) -> None:
    """Run the reminder scan for one day; safe to repeat (nothing is written twice)."""

    today = datetime.now(UTC).date()
    day = as_of.date() if as_of is not None else today
    settings = runtime.current().settings
    if dry_run:
        counts, planned = reminders.plan(settings, day)
        click.echo(f"dry run: what the reminder scan for {day.isoformat()} would send:")
        for draft in planned:
            days_left = (draft.extra or {}).get("days_left")
            when = f" ({days_left} days before)" if days_left is not None else ""
            click.echo(f"  {draft.kind:<20} {draft.source['license_code']}  {draft.fact}{when}")
    else:
        if day > today:
            # A run sends real emails: "expires in 7 days" sent 30 days early would be false.
            raise click.UsageError(
                f"--as-of {day.isoformat()} is in the future: a run sends real emails, so it "
                "runs only for today or a past day; add --dry-run to see what it would send",
            )
        counts = reminders.run(settings, day)
        click.echo(f"reminder scan for {day.isoformat()}:")
    for name, count in counts.items():
        click.echo(f"  {name}: {count}")


@click.group("emails")
def emails_group() -> None:
    """Customer emails."""


@emails_group.command("preview")
@click.argument("kind", type=click.Choice(KINDS))
@click.option(
    "--locale", default=None, help="Language of the email, e.g. it. Default: DEFAULT_LOCALE."
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the HTML body to this file ('-' for standard output) instead of the text.",
)
def emails_preview(kind: str, locale: str | None, html_file: Path | None) -> None:
    """Render KIND with sample data in the configured merchant's voice (MERCHANT_NAME, ...).

    Prints the subject and text body, or writes the HTML body to a file.
    """

    settings = runtime.current().settings
    voice = settings.merchant_voice()
    chosen = locale or settings.default_locale
    if template_locale(chosen) is None:
        raise click.BadParameter(
            f"no templates in {chosen!r}; the locales are: {', '.join(LOCALES)}",
            param_hint="'--locale'" if locale else "DEFAULT_LOCALE",
        )
    if html_file is None:
        click.echo(preview(kind, chosen, "text", voice).rstrip("\n"))
        return
    html = preview(kind, chosen, "html", voice)
    if str(html_file) == "-":
        click.echo(html.rstrip("\n"))
        return
    html_file.write_text(html, encoding="utf-8")
    click.echo(f"wrote the {kind} HTML ({chosen}) to {html_file}")


@emails_group.command("list")
@click.option("--status", type=click.Choice(EMAIL_STATUSES), help="Only emails in this status.")
@click.option(
    "--reason",
    type=click.Choice(FAILURES),
    help="Only failed emails that failed for this reason (interrupted: may have been delivered).",
)
@click.option("--to", "to", metavar="ADDRESS", help="Only emails to this address.")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind of email.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
def emails_list(
    status: str | None, reason: str | None, to: str | None, kind: str | None, limit: int
) -> None:
    """List outbox emails, newest first."""

    try:
        with db.connection(runtime.current().settings.database_url) as conn, conn.transaction():
            page, more = list_emails(
                conn, to=to, kind=kind, status=status, failure=reason, limit=limit
            )
    except BadFilter as exc:
        raise click.UsageError(str(exc)) from None
    if not page:
        click.echo("no emails match")
        return
    rows = [
        [
            str(email.id),
            _when(email.created_at),
            email.kind,
            _cut(email.to_address, 40),
            email.status + (f" ({email.failure})" if email.failure else ""),
            str(email.attempts),
            "-" if email.event_id is None else str(email.event_id),
            _cut(email.last_error, 60),
        ]
        for email in page
    ]
    headers = ["ID", "CREATED (UTC)", "KIND", "TO", "STATUS", "ATTEMPTS", "EVENT", "ERROR"]
    click.echo(table(rows, headers, right={0, 5, 6}))
    if more is not None:
        click.echo(f"(more emails: raise --limit, or narrow the filter; showing {len(page)})")


@emails_group.command("resend")
@click.argument("email_ids", nargs=-1, required=True, type=click.IntRange(1, 2**63 - 1))
def emails_resend(email_ids: tuple[int, ...]) -> None:
    """Send failed emails again, with the same Message-ID.

    An interrupted email may have reached the customer: check the mail server's log for its
    Message-ID first. Exits 1 if any id could not be resent.
    """
    # Deferred: the actors are declared on the broker installed when they are imported, which
    # the command group does at start-up (after ./.env is read).
    from workers.jobs import outbox

    result = outbox.resend(runtime.current().settings.database_url, email_ids)
    for email_id in result.enqueued:
        click.echo(f"email {email_id}: enqueued to be sent again")
    for email_id in result.for_relay:
        click.echo(f"email {email_id}: to be sent again (Redis is unavailable: the relay sends it)")
    for email_id, why in result.refused.items():
        click.echo(f"email {email_id}: not resent, {why}", err=True)
    if result.refused:
        raise SystemExit(1)


@emails_group.command("suppressions")
@click.option("--address", default=None, help="Only this address's suppressions.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
def emails_suppressions(address: str | None, limit: int) -> None:
    """List addresses that unsubscribed, newest first: address, family, when and how."""

    settings = runtime.current().settings
    with db.connection(settings.database_url) as conn:
        rows = suppressions.listing(conn, address=address, limit=limit)
    for row in rows:
        click.echo(
            f"{iso(row['created_at'])}  {visible(row['address'])}  {row['family']}  {row['how']}"
        )
    click.echo(f"{len(rows)} suppression(s)")


@emails_group.command("unsuppress")
@click.argument("address")
def emails_unsuppress(address: str) -> None:
    """Lift every suppression of ADDRESS: its reminders are sent again from now on."""

    settings = runtime.current().settings
    with db.connection(settings.database_url) as conn, conn.transaction():
        lifted = suppressions.lift(conn, address)
    if not lifted:
        raise Refused(f"{visible(address)} has no suppression to lift")
    click.echo(f"lifted {lifted} suppression(s) of {visible(address)}")


COMMANDS = [reminders_group, emails_group]
