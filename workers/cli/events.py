"""`rinnovo events`: list, show and replay the notifications received."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from workers.config import Settings
from workers.errors import BadFilter, EventNotFound
from workers.jobs import runtime
from workers.ops import replay
from workers.store import db, events
from workers.store.events import EventFilter
from workers.store.reports import events as reports
from workers.store.reports.emails import EmailRow
from workers.store.reports.filters import is_empty, make_filter
from workers.store.statuses import EVENT_STATUSES
from workers.terminal import visible

MAX_ID = 2**63 - 1
EVENT_ID = click.IntRange(1, MAX_ID)


def _settings() -> Settings:
    return runtime.current().settings


def _filter(**criteria: str | None) -> EventFilter:
    try:
        return make_filter(**criteria)
    except BadFilter as exc:
        raise click.UsageError(str(exc)) from None


def _when(value: str | None) -> str:
    """An ISO 8601 UTC time as operators read it: `2026-01-31 10:00:00`."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def _cut(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str], right: set[int]) -> str:
    """Rows as aligned columns under a header line; columns in `right` are right-aligned."""
    rows = [[visible(cell) for cell in row] for row in rows]  # cells come from notifications
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


@click.group("events")
def events_group() -> None:
    """The event log: list, show and replay notifications."""


@events_group.command("list")
@click.option("--status", type=click.Choice(EVENT_STATUSES), help="Only events in this status.")
@click.option("--kind", type=click.Choice(events.KINDS), help="Only this kind of notification.")
@click.option("--license", "license_code", metavar="CODE", help="Only events about this license.")
@click.option("--since", metavar="DATE", help="Received at or after (YYYY-MM-DD or ISO time, UTC).")
@click.option("--until", metavar="DATE", help="Received before (a bare date includes that day).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
def list_events(
    status: str | None,
    kind: str | None,
    license_code: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    """List events, newest first."""
    flt = _filter(status=status, kind=kind, license_code=license_code, since=since, until=until)
    with db.connection(_settings().database_url) as conn, conn.transaction():
        page, more = reports.list_events(conn, flt, limit=limit)
    if not page:
        click.echo("no events match")
        return
    rows = [
        [
            str(event.id),
            _when(event.received_at),
            event.kind,
            event.status,
            _cut(event.summary + (" [test]" if event.test else ""), 28),
            _cut(",".join(event.license_codes), 24),
            str(event.attempts),
            _cut(event.last_error, 60),
        ]
        for event in page
    ]
    headers = ["ID", "RECEIVED (UTC)", "KIND", "STATUS", "SUMMARY", "LICENSE", "ATTEMPTS", "ERROR"]
    click.echo(table(rows, headers, right={0, 6}))
    if more is not None:
        click.echo(f"(more events: raise --limit, or narrow the filter; showing {len(page)})")


def _section(title: str, lines: Sequence[str]) -> list[str]:
    return ["", title, *(f"  {line}" for line in lines)] if lines else []


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{key} {json.dumps(value, ensure_ascii=False)}" for key, value in values.items()
    )


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _change_line(change: dict[str, Any]) -> str:
    """One change as `LICENSE change: column before → after, ...  (note)`."""
    before, after = change.get("before") or {}, change.get("after") or {}
    if before:
        moves = ", ".join(
            f"{key} {_value(before.get(key))} → {_value(after.get(key))}" for key in after
        )
    else:  # a creation: there is no "before" worth showing
        moves = ", ".join(f"{key} {_value(value)}" for key, value in after.items())
    note = f"  ({change['note']})" if change.get("note") else ""
    return f"{change.get('license_code', '')} {change['change']}: {moves or '-'}{note}"


def _summary_lines(detail: reports.EventDetail) -> list[str]:
    """The event's heading and how it stands."""
    head = f"Event {detail.id}  {detail.kind}  {detail.summary or '(no summary)'}"
    if detail.test:
        head += "  [test order]"
    status = detail.status + (f": {detail.outcome}" if detail.outcome else "")
    return [
        head,
        f"  status        {status}",
        f"  received      {_when(detail.received_at)} UTC, delivered {detail.deliveries} "
        f"time(s), last {_when(detail.last_delivery_at)}",
        f"  enqueued      {_when(detail.enqueued_at)}",
        f"  {events.FINISHED_LABELS.get(detail.status, 'Processed').lower():<13} "
        f"{_when(detail.processed_at)}",
        f"  attempts      {detail.attempts}",
        f"  licenses      {', '.join(detail.license_codes) or '-'}",
        f"  dedupe key    {detail.dedupe_key}",
    ]


def _request_lines(detail: reports.EventDetail) -> list[str]:
    """How the request verified, its headers, and its fields (the blank ones counted)."""
    algo, key = detail.verification["signature_algo"], detail.verification["key_index"]
    verified = f"signature verified: {algo}, configured key #{key + 1}"
    lines = _section("Verification", [verified + (" (a previous key)" if key else "")])
    lines += _section("Headers", [f"{name}: {value}" for name, value in detail.headers.items()])
    fields = detail.fields
    shown = {name: values for name, values in fields.items() if any(values)}
    width = max((len(name) for name in shown), default=0)
    field_lines = [f"{name.ljust(width)}  {' | '.join(values)}" for name, values in shown.items()]
    if len(shown) < len(fields):
        field_lines.append(f"({len(fields) - len(shown)} blank field(s) not shown)")
    return lines + _section(f"Fields ({len(fields)})", field_lines)


def _attempt_line(attempt: dict[str, Any]) -> str:
    return f"{_when(attempt['at'])}  {attempt['status']:<10}  {events.requested_by(attempt)}" + (
        f": {_cut(attempt['outcome'], 100)}" if attempt["outcome"] else ""
    )


def _email_line(email: EmailRow) -> str:
    return (
        f"#{email.id}  {email.kind} to {email.to_address} ({email.locale}): {email.status}"
        + (f" {_when(email.sent_at)}" if email.sent_at else "")
        + (f", attempts {email.attempts}" if email.attempts else "")
        + (f", last error: {_cut(email.last_error, 80)}" if email.last_error else "")
    )


def describe(detail: reports.EventDetail) -> str:
    """One event as `events show` prints it: sections an operator reads top to bottom."""
    lines = _summary_lines(detail) + _request_lines(detail)
    history = detail.attempt_history
    lines += _section(f"Attempts ({len(history)})", [_attempt_line(a) for a in history])
    if detail.last_error:
        trace = (detail.last_traceback or "").rstrip().splitlines()
        lines += _section("Last error", [detail.last_error, *trace])
    lines += _section(
        f"State changes ({len(detail.changes)})",
        [f"{_when(change['at'])}  {_change_line(change)}" for change in detail.changes],
    ) or ["", "State changes: none"]
    emails = [_email_line(email) for email in detail.emails]
    lines += _section(f"Emails ({len(emails)})", emails) or ["", "Emails: none"]
    # Each entry is one line: a newline or ESC inside a value is shown, never acted on.
    return "\n".join(visible(line) for line in lines)


@events_group.command("show")
@click.argument("event_id", type=EVENT_ID)
@click.option("--raw", is_flag=True, help="Also print the raw body as received.")
def show_event(event_id: int, raw: bool) -> None:
    """Show one event: headers, fields, verification, attempts, last error, what it caused."""
    with db.connection(_settings().database_url) as conn, conn.transaction():
        detail = reports.event_detail(conn, event_id)
    if detail is None:
        raise click.ClickException(f"no event with id {event_id}")
    click.echo(describe(detail))
    if raw:
        click.echo("\nRaw body\n  " + visible(detail.raw_body))


def _preview_lines(preview: dict[str, Any]) -> list[str]:
    event_id = preview["event_id"]
    if "error" in preview:
        return [f"event {event_id}: would fail: {preview['error']}"]
    lines = [f"event {event_id}: would be {preview['status']}: {preview['outcome']}"]
    if preview.get("refreshed"):
        lines.append(f"  today's parser changes: {', '.join(preview['refreshed'])}")
    lines += [f"  {_change_line(change)}" for change in preview["changes"]]
    lines += [
        f"  email {email['kind']} to {email['to_address']} ({email['locale']}) for {email['fact']}"
        for email in preview["emails"]
    ]
    if not preview["changes"] and not preview["emails"]:
        lines.append("  nothing would change")
    return lines


def _progress(line: str) -> None:
    """Progress goes to stderr: stdout carries only the command's result."""
    click.echo(visible(line), err=True)


@events_group.command("replay")
@click.argument("event_ids", nargs=-1, type=EVENT_ID)
@click.option("--failed", is_flag=True, help="Every event whose retries are exhausted.")
@click.option("--kind", type=click.Choice(events.KINDS), help="Every event of this kind.")
@click.option("--license", "license_code", metavar="CODE", help="Every event about this license.")
@click.option("--since", metavar="DATE", help="Received at or after (YYYY-MM-DD or ISO time, UTC).")
@click.option("--until", metavar="DATE", help="Received before (a bare date includes that day).")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--no-emails", is_flag=True, help="Apply state but write no emails.")
def replay_events(
    event_ids: tuple[int, ...],
    failed: bool,
    kind: str | None,
    license_code: str | None,
    since: str | None,
    until: str | None,
    dry_run: bool,
    no_emails: bool,
) -> None:
    """Re-parse events with today's code and apply them again: by id, --failed, or a filter.

    Replaying an event already processed changes nothing and sends nothing.
    """
    flt = _filter(kind=kind, license_code=license_code, since=since, until=until)
    by_filter = failed or not is_empty(flt)
    if event_ids and by_filter:
        raise click.UsageError("give event ids or a filter (--failed, --kind, ...), not both")
    if not event_ids and not by_filter:
        raise click.UsageError(
            "say which events: ids, --failed, --kind, --license, --since, --until"
        )
    settings = _settings()
    ids = list(event_ids) or replay.select_ids(settings, flt, failed_only=failed)
    if not ids:
        click.echo("no events match; nothing replayed")
        return
    try:
        report = replay.replay(
            settings,
            ids,
            dry_run=dry_run,
            emails=not no_emails,
            progress=None if dry_run else _progress,
        )
    except EventNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        for preview in report.previews:
            click.echo("\n".join(visible(line) for line in _preview_lines(preview)))
        click.echo(f"dry run: {len(report.previews)} event(s) previewed, nothing was changed")
        return
    for error in report.errors:
        click.echo(f"event {error['event_id']}: {visible(error['error'])}", err=True)
    click.echo(
        f"replayed {report.enqueued} event(s)"
        + (" without emails" if no_emails else "")
        + f"; today's parser changed the stored reading of {report.refreshed}"
    )


COMMANDS = [events_group]
