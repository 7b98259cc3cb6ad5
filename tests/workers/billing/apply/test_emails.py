"""The amounts the emails of orders, upgrades and refunds state: what the provider charged.

End to end: signed notifications over the receiver, a real worker, stored state."""

from __future__ import annotations

from emails.render import render
from tests.support import drain, post_signed
from tests.workers.billing.apply.support import (
    VOICE,
    email_context,
    ipn,
)


def test_a_renewal_email_states_the_order_total_with_its_tax_not_the_unit_price(client, conn):
    post_signed(client, "/ipn", ipn("LIC-TAX", refno="R40", at="2026-01-01 00:00:00"))
    post_signed(
        client,
        "/ipn",
        ipn("LIC-TAX", refno="R41", at="2026-01-31 10:00:00", license_type="RENEWAL"),
    )
    drain(threads=1)
    context = email_context(conn, "renewal_confirmation", "LIC-TAX")
    # 30.00 + 22 % VAT: the customer was charged 36.60.
    assert (context["amount"], context["tax"]) == ("36.60", "6.60")
    text = render("renewal_confirmation", "it", context | VOICE).text
    assert "36,60" in text and "6,60" in text and "30,00" not in text


def test_an_upgrade_email_states_what_the_provider_charged_with_its_tax(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn("LIC-UPTAX", refno="R42", at="2026-01-01 00:00:00", exp="2026-02-01 00:00:00"),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-UPTAX",
            code="AWDOC-BUSINESS-Y",
            price="585.00",
            refno="R43",
            at="2026-01-16 12:00:00",
            exp="2027-01-16 12:00:00",
            license_type="UPGRADE",
        ),
    )
    drain(threads=1)
    context = email_context(conn, "upgrade_confirmation", "LIC-UPTAX")
    assert (context["credit"], context["amount"], context["tax"]) == ("15.00", "713.70", "128.70")
    rendered = render("upgrade_confirmation", "en", context | VOICE)
    assert "713.70" in rendered.text and "713.70" in rendered.html
    assert "585.00" not in rendered.text


def test_a_refund_email_states_the_amount_the_refund_notification_carries(client, conn):
    post_signed(client, "/ipn", ipn("LIC-REFUND", refno="R44", at="2026-01-10 00:00:00"))
    drain()
    refund = ipn("LIC-REFUND", status="REFUND", refno="R44", at="2026-01-12 00:00:00")
    # A partial refund: the provider refunds 10.00 of the 36.60 paid.
    refund = [
        (name, "-10.00" if name in ("IPN_TOTAL[]", "IPN_TOTALGENERAL") else value)
        for name, value in refund
    ]
    post_signed(client, "/ipn", refund)
    drain()
    assert email_context(conn, "refund_notice", "LIC-REFUND")["amount"] == "10.00"
