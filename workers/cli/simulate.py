"""`rinnovo simulate`: post correctly signed sample notifications and check their receipts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from workers.errors import RinnovoError
from workers.jobs import runtime
from workers.ops import scenarios
from workers.ops import simulate as sim
from workers.protocol.signature import Algorithm
from workers.terminal import visible

Command = Callable[..., Any]


def _common(command: Command) -> Command:
    """The options every scenario takes: where to post, how to sign, and a dry run."""
    options = [
        click.option(
            "--url",
            default=sim.default_url,
            show_default=f"http://localhost:$PORT, {sim.DEFAULT_PORT} when unset",
            help="The receiver's base URL; the kind's path (/ipn, /lcn, /ins) is added.",
        ),
        click.option(
            "--test/--no-test",
            default=True,
            show_default=True,
            help="Mark it as the provider marks test orders.",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print the notification's fields instead of posting it.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _signed(command: Command) -> Command:
    """The signature algorithms of an IPN or LCN."""
    return click.option(
        "--algorithm",
        "algorithms",
        type=click.Choice([a.value for a in Algorithm]),
        multiple=True,
        help="Sign with this algorithm (repeatable). Default: sha256 and sha3-256.",
    )(command)


def _algorithms(names: tuple[str, ...]) -> tuple[Algorithm, ...]:
    return tuple(Algorithm(name) for name in names) or sim.DEFAULT_ALGORITHMS


def _run(
    scenario: Callable[..., sim.Notification], url: str, dry_run: bool, options: dict[str, Any]
) -> None:
    """Build the scenario's notification, post it and report; exit 1 unless acknowledged."""
    settings = runtime.current().settings
    try:
        notification = scenario(settings, **options)
        for note in notification.notes:
            click.echo(f"note: {visible(note)}")
        ids = f"license {notification.license_code}"
        if notification.reference:
            label = "sale" if notification.kind == "ins" else "order"
            ids += f", {label} {notification.reference}"
        click.echo(visible(f"{notification.description} ({ids})"))
        if dry_run:
            for name, value in notification.pairs:
                click.echo(f"  {name}={visible(value)}")
            return
        result = sim.post(notification, url, settings)
    except RinnovoError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"POST {result.url} -> HTTP {result.status}")
    click.echo(visible(result.body))  # the receiver's answer, whatever it is
    if not result.ok:
        raise click.ClickException(result.problem)
    click.echo("receipt verified" if result.receipt_verified else "acknowledged")


@click.group()
def simulate() -> None:
    """Post correctly signed sample notifications to a receiver and verify its receipts."""


@simulate.command("ipn")
@click.option("--status", default="COMPLETE", show_default=True, help="ORDERSTATUS.")
@click.option("--email", help=f"The customer's address [default: {sim.DEFAULT_EMAIL}].")
@click.option("--product", help="A product code from the catalog [default: the first].")
@click.option("--license", "license_code", help="The license code [default: a new random one].")
@click.option("--locale", default="en", show_default=True, help="The shopper's LANGUAGE.")
@click.option("--quantity", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--currency", help="CURRENCY [default: EUR when the product is priced in it].")
@click.option("--refno", help="The order reference [default: a random one].")
@click.option("--expires", help="IPN_LICENSE_EXP[] [default: one billing period from now].")
@_signed
@_common
def ipn(url: str, dry_run: bool, algorithms: tuple[str, ...], **options: Any) -> None:
    """An order notification (IPN) with any ORDERSTATUS: a new purchase by default."""
    _run(scenarios.ipn, url, dry_run, {**options, "algorithms": _algorithms(algorithms)})


@simulate.command("renewal")
@click.option("--license", "license_code", required=True, help="The license being renewed.")
@click.option("--product", help="The product billed [default: the license's, if known].")
@click.option("--email", help="The customer's address [default: the license's, if known].")
@click.option("--locale", help="The shopper's LANGUAGE [default: the customer's, if known].")
@click.option("--refno", help="The renewal order's reference [default: a random one].")
@click.option("--expires", help="The new expiry [default: the policy's, or a period from now].")
@_signed
@_common
def renewal(url: str, dry_run: bool, algorithms: tuple[str, ...], **options: Any) -> None:
    """A renewal order (IPN_LICENSE_TYPE[]=RENEWAL) for an existing license."""
    _run(scenarios.renewal, url, dry_run, {**options, "algorithms": _algorithms(algorithms)})


@simulate.command("upgrade")
@click.option("--license", "license_code", required=True, help="The license being upgraded.")
@click.option("--product", required=True, help="The product code upgraded to.")
@click.option("--quantity", type=click.IntRange(min=1), help="Units [default: the license's].")
@click.option("--email", help="The customer's address [default: the license's, if known].")
@click.option("--locale", help="The shopper's LANGUAGE [default: the customer's, if known].")
@click.option("--refno", help="The upgrade order's reference [default: a random one].")
@click.option("--expires", help="The new expiry [default: the policy's, or a period from now].")
@_signed
@_common
def upgrade(url: str, dry_run: bool, algorithms: tuple[str, ...], **options: Any) -> None:
    """An upgrade order (IPN_LICENSE_TYPE[]=UPGRADE) moving an existing license to --product."""
    _run(scenarios.upgrade, url, dry_run, {**options, "algorithms": _algorithms(algorithms)})


@simulate.command("refund")
@click.option(
    "--license", "license_code", required=True, help="The license whose order is refunded."
)
@click.option("--refno", help="The order refunded [default: the license's last order, if known].")
@click.option("--product", help="The product [default: the license's, if known].")
@click.option("--email", help="The customer's address [default: the license's, if known].")
@click.option("--locale", help="The shopper's LANGUAGE [default: the customer's, if known].")
@_signed
@_common
def refund(url: str, dry_run: bool, algorithms: tuple[str, ...], **options: Any) -> None:
    """A refund (ORDERSTATUS REFUND, negative totals) of a license's order."""
    _run(scenarios.refund, url, dry_run, {**options, "algorithms": _algorithms(algorithms)})


@simulate.command("lcn")
@click.option("--license", "license_code", required=True, help="The license that changed.")
@click.option(
    "--status",
    default="ACTIVE",
    show_default=True,
    help="STATUS: ACTIVE, PASTDUE, EXPIRED, DISABLED, CANCELED, PENDING ACTIVATION.",
)
@click.option("--expires", help="EXPIRATION_DATE [default: the license's, or a month from now].")
@click.option("--date-updated", help="DATE_UPDATED [default: now].")
@click.option(
    "--recurring/--no-recurring",
    default=None,
    help="RECURRING: automatic renewal on or off [default: the license's, or on].",
)
@click.option(
    "--changed-by", default="SYSTEM", show_default=True, help="CUSTOMER, VENDOR or SYSTEM."
)
@click.option("--email", help="EMAIL [default: the license's, if known].")
@_signed
@_common
def lcn(url: str, dry_run: bool, algorithms: tuple[str, ...], **options: Any) -> None:
    """A license change notification (LCN) for an existing license."""
    _run(scenarios.lcn, url, dry_run, {**options, "algorithms": _algorithms(algorithms)})


@simulate.command("ins")
@click.option(
    "--message-type",
    default="ORDER_CREATED",
    show_default=True,
    help="message_type, e.g. RECURRING_INSTALLMENT_SUCCESS, RECURRING_INSTALLMENT_FAILED.",
)
@click.option("--sale-id", help="sale_id: reuse one to follow up an order [default: random].")
@click.option("--invoice-id", help="invoice_id [default: random].")
@click.option("--product", help="The product code billed [default: the catalog's first].")
@click.option("--email", help=f"customer_email [default: {sim.DEFAULT_EMAIL}].")
@click.option("--locale", default="en", show_default=True, help="customer_language.")
@_common
def ins(url: str, dry_run: bool, **options: Any) -> None:
    """A legacy INS message, signed with the first TWOCHECKOUT_INS_SECRET_WORD."""
    _run(scenarios.ins, url, dry_run, options)


COMMANDS = [simulate]
