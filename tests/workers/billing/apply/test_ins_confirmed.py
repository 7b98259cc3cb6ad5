"""INS messages the provider's API confirms: a refund, a renewal, a change of automatic renewal is
applied only as the provider's own records state it (and as it says, without the API)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fake_provider import FakeProvider, order, subscription
from tests.support import FORM, drain, runtime_from_env
from tests.workers.jobs.reconciling import stamp, sub_row, today
from workers.ops import samples
from workers.protocol import form

INS_LICENSE = "2CO-5001-AWDOC-TEAM-M"


def ins(message_type: str, **values: str) -> list[tuple[str, str]]:
    return samples.ins_pairs(
        message_type=message_type,
        sale_id="5001",
        invoice_id=values.pop("invoice_id", "6001"),
        secret_word="tango",
        customer_email="cliente@example.it",
        items=[("AWDoc TEAM (monthly)", "AWDOC-TEAM-M", "30.00", values.pop("next_date", ""))],
        extra={"invoice_status": "approved", "item_rec_status_1": "live", **values},
    )


def post_ins(client, pairs: list[tuple[str, str]]) -> None:
    assert client.post("/ins", data=form.encode(pairs), headers=FORM).status_code == 200


@pytest.fixture
def legacy_sale(client, conn, fake) -> FakeProvider:
    """A legacy (INS) sale Rinnovo holds, with the API configured for the workers too."""
    runtime_from_env()
    post_ins(client, ins("ORDER_CREATED", next_date=f"{today() + timedelta(days=20)}"))
    drain()
    assert sub_row(conn, INS_LICENSE)["status"] == "active"
    yield fake


def ins_event(conn) -> dict[str, Any]:
    return conn.execute(
        "SELECT status, attempts, last_error FROM events WHERE kind = 'ins' ORDER BY id DESC"
    ).fetchone()


def test_an_ins_refund_the_provider_does_not_confirm_fails_with_the_provider_s_state(
    legacy_sale, client, conn
):
    legacy_sale.add_order(order("5001", ordered=stamp(datetime.now(UTC)), status="COMPLETE"))
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    event = ins_event(conn)
    assert event["status"] == "failed"
    assert event["last_error"] == (
        "PermanentEventError: INS REFUND_ISSUED not confirmed: the provider's order 5001 is "
        "COMPLETE, not refunded"
    )
    assert sub_row(conn, INS_LICENSE)["status"] == "active"
    assert "/rest/6.0/orders/5001/" in legacy_sale.paths()


def test_an_ins_refund_the_provider_confirms_is_applied(legacy_sale, client, conn):
    legacy_sale.add_order(order("5001", ordered=stamp(datetime.now(UTC)), status="REFUND"))
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    assert ins_event(conn)["status"] == "processed"
    assert sub_row(conn, INS_LICENSE)["status"] == "refunded"


def test_an_ins_renewal_is_applied_only_when_the_provider_s_subscription_expires_so(
    legacy_sale, client, conn
):
    renewed_to = today() + timedelta(days=50)
    legacy_sale.add_order(
        order("5001", ordered=stamp(datetime.now(UTC)), references=("SUB0005001",))
    )
    legacy_sale.add_subscription(subscription("SUB0005001", expires=f"{today()}"), today())
    post_ins(
        client, ins("RECURRING_INSTALLMENT_SUCCESS", invoice_id="6002", next_date=f"{renewed_to}")
    )
    drain()
    event = ins_event(conn)
    assert event["status"] == "failed" and event["last_error"].endswith(
        f"the provider's order 5001 has {today()} as expiry, not {renewed_to}"
    )
    assert sub_row(conn, INS_LICENSE)["expires_at"].date() == today() + timedelta(days=20)

    legacy_sale.add_subscription(subscription("SUB0005001", expires=f"{renewed_to}"), today())
    post_ins(
        client, ins("RECURRING_INSTALLMENT_SUCCESS", invoice_id="6003", next_date=f"{renewed_to}")
    )
    drain()
    assert ins_event(conn)["status"] == "processed"
    assert sub_row(conn, INS_LICENSE)["expires_at"].date() == renewed_to


def test_with_the_api_unreachable_an_ins_refund_is_retried_like_any_transient_failure(
    legacy_sale, client, conn, monkeypatch
):
    from workers.billing.apply import ins as ins_rules

    monkeypatch.setattr(ins_rules, "CONFIRM_SECONDS", 0.5)  # one attempt, then the event waits
    legacy_sale.add_order(order("5001", ordered=stamp(datetime.now(UTC)), status="REFUND"))
    legacy_sale.fail_next(1, "503")
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    event = ins_event(conn)
    assert (event["status"], event["attempts"]) == ("processed", 2)
    assert sub_row(conn, INS_LICENSE)["status"] == "refunded"


def test_without_the_api_an_ins_refund_is_applied_as_it_says(client, conn, monkeypatch):
    monkeypatch.delenv("TWOCHECKOUT_MERCHANT_CODE", raising=False)
    runtime_from_env()
    post_ins(client, ins("ORDER_CREATED", next_date=f"{today() + timedelta(days=20)}"))
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    assert sub_row(conn, INS_LICENSE)["status"] == "refunded"


def test_an_ins_automatic_renewal_change_is_applied_only_as_the_provider_states_it(
    legacy_sale, client, conn
):
    legacy_sale.add_order(
        order("5001", ordered=stamp(datetime.now(UTC)), references=("SUB0005001",))
    )
    legacy_sale.add_subscription(subscription("SUB0005001", recurring=True), today())
    post_ins(client, ins("RECURRING_STOPPED", invoice_id="6002"))
    drain()
    event = ins_event(conn)
    assert event["status"] == "failed" and event["last_error"].endswith(
        "the provider's order 5001 has automatic renewal on, not off"
    )
    assert sub_row(conn, INS_LICENSE)["auto_renew"] is True

    legacy_sale.add_subscription(subscription("SUB0005001", recurring=False), today())
    post_ins(client, ins("RECURRING_STOPPED", invoice_id="6003"))
    drain()
    assert ins_event(conn)["status"] == "processed"
    assert sub_row(conn, INS_LICENSE)["auto_renew"] is False
