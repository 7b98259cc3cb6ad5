"""Notifications as the provider sends them, for the rules' tests, and how their results read."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support import FORM
from workers.jobs.actors import settings
from workers.ops import samples
from workers.protocol import form
from workers.store import subscriptions

# What the mailer adds at sending time: the merchant's signature and support line.
VOICE = settings().merchant_voice()


def ipn(
    license_code: str,
    *,
    status: str = "COMPLETE",
    code: str = "AWDOC-TEAM-M",
    refno: str,
    at: str,
    start: str = "",
    exp: str = "",
    price: str = "30.00",
    quantity: int = 1,
    license_type: str = "REGULAR",
    language: str = "en",
    test: bool = False,
    fraud: str = "APPROVED",
    currency: str = "EUR",
) -> list[tuple[str, str]]:
    """An IPN for one license, with the order's times and the license's dates."""
    item = samples.SampleItem(
        code=code,
        pid="",
        name=code,
        license_ref=license_code,
        quantity=quantity,
        price=price,
        license_type=license_type,
        license_start=start,
        license_exp=exp,
    )
    return samples.ipn_pairs(
        status=status,
        items=(item,),
        refno=refno,
        sale_date=at,
        language=language,
        test=test,
        currency=currency,
        email="mario.rossi@example.com",
        extra={"AVANGATE_CUSTOMER_REFERENCE": "CUST-1", "FRAUD_STATUS": fraud},
    )


def lcn(
    license_code: str,
    *,
    status: str = "ACTIVE",
    expires: str,
    updated: str,
    recurring: bool = False,
) -> list[tuple[str, str]]:
    return samples.lcn_pairs(
        license_code=license_code,
        status=status,
        expiration_date=expires,
        date_updated=updated,
        recurring=recurring,
    )


def state(conn, license_code: str) -> dict:
    described = subscriptions.describe(conn, license_code)
    assert described is not None
    return described


def event(conn, event_id: int) -> dict:
    return conn.execute("SELECT * FROM events WHERE id = %s", (event_id,)).fetchone()


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ins(message_type: str, **kwargs) -> list[tuple[str, str]]:
    return samples.ins_pairs(
        message_type=message_type,
        sale_id="5001",
        invoice_id=kwargs.pop("invoice_id", "6001"),
        secret_word="tango",
        customer_email="cliente@example.it",
        customer_language="it",
        items=[
            ("AWDoc TEAM (monthly)", "AWDOC-TEAM-M", "30.00", kwargs.pop("next_date", "2026-02-10"))
        ],
        timestamp=kwargs.pop("timestamp", "2026-01-10 00:00:00"),
        extra=kwargs.pop("extra", {"invoice_status": "approved", "item_rec_status_1": "live"}),
    )


def post_ins(client, pairs) -> None:
    response = client.post("/ins", data=form.encode(pairs), headers=FORM)
    assert response.status_code == 200


def email_context(conn, kind: str, license_code: str) -> dict:
    row = conn.execute(
        """
        SELECT e.context FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
        WHERE e.kind = %s AND s.license_code = %s
        """,
        (kind, license_code),
    ).fetchone()
    assert row is not None, f"no {kind} email for {license_code}"
    return row["context"]
