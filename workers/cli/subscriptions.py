"""`rinnovo quote ...` and `rinnovo subscriptions show`: policies and state, for a person."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from workers.billing import dunning, policies
from workers.billing.apply.run import catalog as current_catalog
from workers.billing.apply.run import terms as terms_of
from workers.billing.statuses import STATUSES
from workers.config import Settings
from workers.jobs import runtime
from workers.store import db
from workers.store import subscriptions as subs
from workers.store.jsonable import iso
from workers.store.reports import subscriptions as subscription_reports
from workers.store.reports.runs import overdue
from workers.terminal import visible


def _at(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _load(settings: Settings, license_code: str) -> dict[str, Any]:
    with db.connection(settings.database_url) as conn:
        row = subscription_reports.row(conn, license_code)
    if row is None:
        raise click.ClickException(f"no subscription with license code {license_code}")
    return row


class Refused(click.ClickException):
    """The question was understood and the answer is no: exit status 3, not an error's 1."""

    exit_code = 3

    def show(self, file: Any = None) -> None:
        """Print the refusal as the command's result, on standard output."""
        click.echo(f"refused: {self.format_message()}", file=file)


def _print_quote(quote: policies.Quote) -> None:
    if not quote.allowed:
        raise Refused(visible(quote.reason))
    click.echo(f"policy:       {quote.policy}")
    click.echo(f"credit:       {quote.credit} {quote.currency}")
    click.echo(f"new price:    {quote.new_price} {quote.currency}")
    if quote.renewal_price:
        click.echo(f"renewal:      {quote.renewal_price} {quote.currency}")
    click.echo(f"amount due:   {quote.amount_due} {quote.currency}")
    click.echo(f"new period:   {iso(quote.new_period_start)} -> {iso(quote.new_expires_at)}")
    click.echo(f"why:          {visible(quote.explanation)}")


@click.group()
def quote() -> None:
    """What an upgrade or a renewal would cost and change, by the product's policy."""


@quote.command("upgrade")
@click.argument("license_code")
@click.option("--to", "target", required=True, help="Product code, or an edition of the same line.")
@click.option("--cycle", type=click.Choice(["monthly", "annual"]), help="Billing cycle wanted.")
@click.option("--quantity", type=click.IntRange(min=1), help="Units wanted (default: as now).")
@click.option("--at", "at", help="ISO time of the upgrade (default: now).")
def quote_upgrade(
    license_code: str, target: str, cycle: str | None, quantity: int | None, at: str | None
) -> None:
    """Quote upgrading LICENSE_CODE."""
    settings = runtime.current().settings
    row = _load(settings, license_code)
    catalog = current_catalog(settings)
    current = catalog.get(row["product_code"])
    if current is None:
        raise click.ClickException(f"product {row['product_code']} is not in the catalog")
    product = catalog.find_target(current, target, cycle)
    if product is None:
        raise click.ClickException(f"no single product matches --to {target!r}")
    terms = terms_of(row)
    _print_quote(policies.quote_upgrade(terms, current, product, _at(at), quantity=quantity))


@quote.command("renew")
@click.argument("license_code")
@click.option("--at", "at", help="ISO time of the payment (default: now).")
def quote_renew(license_code: str, at: str | None) -> None:
    """Quote renewing LICENSE_CODE by hand (or automatically, if its auto-renew is on)."""
    settings = runtime.current().settings
    row = _load(settings, license_code)
    product = current_catalog(settings).get(row["product_code"])
    if product is None:
        raise click.ClickException(f"product {row['product_code']} is not in the catalog")
    _print_quote(
        policies.quote_renewal(terms_of(row), product, _at(at), automatic=bool(row["auto_renew"]))
    )


@click.group("subscriptions")
def subscriptions_group() -> None:
    """Subscriptions as Rinnovo holds them."""


@subscriptions_group.command("show")
@click.argument("license_code")
@click.option("--json", "as_json", is_flag=True, help="The admin API's JSON instead of text.")
def show(license_code: str, as_json: bool) -> None:
    """Show one subscription, its customer and its history."""
    settings = runtime.current().settings
    with db.connection(settings.database_url) as conn:
        described = subs.describe(conn, license_code)
    if described is None:
        raise click.ClickException(f"no subscription with license code {license_code}")
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    customer = described["customer"]
    lines = [
        ("license", described["license_code"]),
        ("status", described["status"] + ("  (test)" if described["test"] else "")),
        ("product", f"{described['product']} {described['edition']} ({described['product_code']})"),
        ("cycle", f"{described['cycle']} x {described['quantity']}"),
        ("auto-renew", "on" if described["auto_renew"] else "off"),
        ("expires", described["expires_at"] or "-"),
        (
            "expected",
            (described["expected_expires_at"] or "-")
            + ("  MISMATCH: check with the provider" if described["policy_mismatch"] else ""),
        ),
        ("customer", f"{customer['name']} <{customer['email']}> [{customer['locale'] or '-'}]"),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<12}{visible(value)}")
    click.echo("history:")
    for entry in described["history"]:
        changed = (
            ", ".join(
                f"{key} {entry['before'].get(key)!s} -> {value!s}"
                for key, value in entry["after"].items()
            )
            if entry["before"]
            else "created"
        )
        source = f"event {entry['event_id']}" if entry["event_id"] else "clock"
        click.echo(visible(f"  {entry['at']}  {entry['change']:<10} {source:<10} {changed}"))
        if entry["note"]:
            click.echo(f"  {'':20}  {visible(entry['note'])}")


@subscriptions_group.command("list")
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    default=None,
    help="Only subscriptions in this status; past_due ones show where they are in the dunning "
    "sequence.",
)
@click.option(
    "--overdue",
    is_flag=True,
    help="Only auto-renewing subscriptions whose renewal, LCN or failure never came after their "
    "expiry (EXPECTED_NOTIFICATION_GRACE).",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
def list_subscriptions(status: str | None, overdue: bool, limit: int) -> None:
    """List subscriptions: license, status, expiry, and a past-due one's dunning position."""
    if overdue and status is not None:
        raise click.UsageError("--overdue and --status are two different lists: choose one")
    settings = runtime.current().settings
    if overdue:
        _list_overdue(settings, limit)
        return

    with db.connection(settings.database_url) as conn:
        rows = dunning.listing(conn, status, limit)
    for row in rows:
        expires = iso(row["expires_at"]) or "-"
        where = dunning.position(settings, row)
        line = f"{visible(row['license_code']):<20} {row['status']:<9} expires {expires}"
        click.echo(f"{line}  {where}" if where else line)
    click.echo(f"{len(rows)} subscription(s)")


def _list_overdue(settings: Settings, limit: int) -> None:
    """Subscriptions whose expected notification is missing, most recently due first."""
    with db.connection(settings.database_url) as conn:
        rows = overdue(conn, settings.expected_notification_grace, limit=limit)
    for row in rows:
        click.echo(
            visible(
                f"{row.license_code}  {row.status:<8} {row.product_code}  "
                f"expired {iso(row.expires_at)}, auto-renew on, no notification since"
            )
        )
    hours = settings.expected_notification_grace.total_seconds() / 3600
    click.echo(f"{len(rows)} subscription(s) overdue by more than {hours:g} hour(s)")


COMMANDS = [quote, subscriptions_group]
