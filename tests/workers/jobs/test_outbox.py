"""Tests for the email outbox: writing rows once, their context, dispatch and the relay."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from emails.contexts import COMMON_KEYS, REQUIRED_KEYS, sample_context
from emails.render import KINDS, render
from tests.conftest import TEST_DATABASE_URL
from workers.config import Settings
from workers.errors import BrokerUnavailable, ConfigError
from workers.jobs import actors, outbox
from workers.store import outbox as store_outbox

EXPIRES = datetime(2030, 6, 30, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    return dataclasses.replace(
        Settings.from_env(),
        mail_from="DocFlow <billing@docflow.example>",
        renewal_url="https://shop.example/renew?l={license_code}&p={product_code}&e={email}",
        portal_url="https://secure.2checkout.com/myaccount/",
        default_locale="en",
    )


def subscription(conn: psycopg.Connection, **values: Any) -> int:
    """Insert a customer and an active subscription; the subscription's id."""
    customer = {
        "email": values.pop("email", "giulia.rossi+docs@example.com"),
        "first_name": values.pop("first_name", "Giulia"),
        "last_name": values.pop("last_name", "Rossi"),
        "locale": values.pop("locale", "it_IT"),
    }
    customer_id = conn.execute(
        """
        INSERT INTO customers (email, first_name, last_name, locale, customer_key)
        VALUES (%(email)s, %(first_name)s, %(last_name)s, %(locale)s, gen_random_uuid()::text)
        RETURNING id
        """,
        customer,
    ).fetchone()["id"]
    row = {
        "license_code": "DF7K2M9QX4",
        "product_code": "DOCFLOW-BIZ",
        "product": "DocFlow",
        "edition": "BUSINESS",
        "cycle": "annual",
        "quantity": 10,
        "status": "active",
        "auto_renew": False,
        "test": False,
        "currency": "EUR",
        "price_paid": Decimal("1000.00"),
        "expires_at": EXPIRES,
        "last_order_ref": "170623894",
    } | values
    return conn.execute(
        """
        INSERT INTO subscriptions (license_code, customer_id, product_code, product, edition,
            cycle, quantity, status, auto_renew, test, currency, price_paid, expires_at,
            last_order_ref)
        VALUES (%(license_code)s, %(customer_id)s, %(product_code)s, %(product)s, %(edition)s,
            %(cycle)s, %(quantity)s, %(status)s, %(auto_renew)s, %(test)s, %(currency)s,
            %(price_paid)s, %(expires_at)s, %(last_order_ref)s)
        RETURNING id
        """,
        row | {"customer_id": customer_id},
    ).fetchone()["id"]


def kind_extra(kind: str) -> dict[str, Any]:
    """The kind-specific values of the sample context (what the lifecycle passes as `extra`)."""
    sample = sample_context(kind)
    return {key: sample[key] for key in REQUIRED_KEYS[kind] if key not in COMMON_KEYS}


def email_row(conn: psycopg.Connection, email_id: int) -> dict[str, Any]:
    return conn.execute("SELECT * FROM emails WHERE id = %s", (email_id,)).fetchone()


def test_an_email_is_written_with_the_full_context_recipient_locale_and_a_message_id(
    conn, settings
):
    sub_id = subscription(conn)

    email_id = store_outbox.add(
        conn, settings, subscription_id=sub_id, kind="order_confirmation", fact="170623894",
        event_id=None,
    )  # fmt: skip

    row = email_row(conn, email_id)
    assert row["status"] == "pending" and row["attempts"] == 0 and row["enqueued_at"] is None
    assert row["to_address"] == "giulia.rossi+docs@example.com"
    assert row["locale"] == "it"
    assert row["fact"] == "170623894" and row["kind"] == "order_confirmation"
    assert re.fullmatch(rf"<email-{email_id}\.[0-9a-f]{{16}}@docflow\.example>", row["message_id"])
    assert row["context"] == {
        "customer_name": "Giulia Rossi",
        "customer_email": "giulia.rossi+docs@example.com",
        "license_code": "DF7K2M9QX4",
        "product": "DocFlow",
        "edition": "BUSINESS",
        "cycle": "annual",
        "quantity": 10,
        "order_ref": "170623894",
        "expires_at": "2030-06-30T00:00:00Z",
        "portal_url": "https://secure.2checkout.com/myaccount/",
        "renewal_url": (
            "https://shop.example/renew?l=DF7K2M9QX4&p=DOCFLOW-BIZ"
            "&e=giulia.rossi%2Bdocs%40example.com"
        ),
        "currency": "EUR",
        "test": False,
    }


def test_the_same_fact_is_written_once_and_the_second_add_returns_none(conn, settings):
    sub_id = subscription(conn)
    args = {"subscription_id": sub_id, "kind": "refund_notice", "fact": "R-1", "event_id": None}

    first = store_outbox.add(conn, settings, **args, extra={"amount": Decimal("10.00")})
    second = store_outbox.add(conn, settings, **args, extra={"amount": Decimal("99.00")})

    assert first is not None and second is None
    rows = conn.execute("SELECT id, context FROM emails").fetchall()
    assert [row["id"] for row in rows] == [first]
    assert rows[0]["context"]["amount"] == "10.00"


def test_the_same_fact_for_another_kind_or_subscription_is_another_email(conn, settings):
    one = subscription(conn)
    two = subscription(conn, license_code="OTHER00001", email="other@example.com")
    ids = [
        store_outbox.add(conn, settings, subscription_id=sub, kind=kind, fact="F", event_id=None)
        for sub, kind in (
            (one, "cancellation_notice"),
            (one, "expiry_notice"),
            (two, "expiry_notice"),
        )
    ]
    assert None not in ids and len(set(ids)) == 3


def test_extra_values_override_and_extend_the_context_and_are_stored_json_safe(conn, settings):
    sub_id = subscription(conn)
    extra = kind_extra("upgrade_confirmation") | {
        "expires_at": datetime(2026, 2, 1, 1, 30, 15, 250, tzinfo=UTC),
        "merchant_name": "DocFlow",
    }

    email_id = store_outbox.add(
        conn, settings, subscription_id=sub_id, kind="upgrade_confirmation", fact="U-1",
        event_id=None, extra=extra,
    )  # fmt: skip

    context = email_row(conn, email_id)["context"]
    assert context["credit"] == "15.00" and context["amount"] == "713.70"
    assert context["new_expires_at"] == "2027-01-16T12:00:00Z"
    assert context["expires_at"] == "2026-02-01T01:30:15.000250Z"
    assert context["previous_quantity"] == 5 and context["merchant_name"] == "DocFlow"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_stored_from_a_subscription_renders_in_the_customer_locale(conn, settings, kind):
    sub_id = subscription(conn)
    email_id = store_outbox.add(
        conn, settings, subscription_id=sub_id, kind=kind, fact="F", event_id=None,
        extra=kind_extra(kind),
    )  # fmt: skip
    row = email_row(conn, email_id)

    rendered = render(kind, row["locale"], row["context"])

    # Stored JSON-safe, it renders exactly as the typed values (datetimes, Decimals) would.
    typed = row["context"] | {"expires_at": EXPIRES} | kind_extra(kind)
    assert rendered == render(kind, "it", typed)
    assert rendered.locale == "it"
    assert "Giulia Rossi" in rendered.text


@pytest.mark.parametrize(
    ("customer_locale", "default", "expected"),
    [("it-CH", "en", "it"), ("", "it", "it"), ("de_DE", "en", "en"), ("fr", "de", "en")],
)
def test_the_locale_is_the_customers_resolved_with_the_default(
    conn, settings, customer_locale, default, expected
):
    sub_id = subscription(conn, locale=customer_locale)
    email_id = store_outbox.add(
        conn, dataclasses.replace(settings, default_locale=default), subscription_id=sub_id,
        kind="expiry_notice", fact="F", event_id=None,
    )  # fmt: skip
    assert email_row(conn, email_id)["locale"] == expected


def test_message_ids_take_the_mail_domain_setting_before_the_sender_domain(conn, settings):
    sub_id = subscription(conn)
    email_id = store_outbox.add(
        conn, dataclasses.replace(settings, mail_domain="mail.rinnovo.example"),
        subscription_id=sub_id, kind="expiry_notice", fact="F", event_id=None,
    )  # fmt: skip
    assert email_row(conn, email_id)["message_id"].endswith("@mail.rinnovo.example>")


def test_message_ids_are_unique_per_row(conn, settings):
    sub_id = subscription(conn)
    ids = [
        store_outbox.add(conn, settings, subscription_id=sub_id, kind="refund_notice", fact=f"R{n}",
                   event_id=None, extra={"amount": "1"})
        for n in range(20)
    ]  # fmt: skip
    rows = conn.execute("SELECT message_id FROM emails WHERE id = ANY(%s)", (ids,)).fetchall()
    assert len({row["message_id"] for row in rows}) == 20


def test_a_broken_renewal_url_setting_is_a_config_error_and_writes_nothing(conn, settings):
    sub_id = subscription(conn)
    broken = dataclasses.replace(settings, renewal_url="https://shop.example/?x={licence}")
    with pytest.raises(ConfigError, match="licence"):
        store_outbox.add(
            conn, broken, subscription_id=sub_id, kind="expiry_notice", fact="F", event_id=None
        )
    assert conn.execute("SELECT count(*) AS n FROM emails").fetchone()["n"] == 0


def test_an_unknown_kind_or_subscription_is_refused(conn, settings):
    sub_id = subscription(conn)
    with pytest.raises(ValueError, match="newsletter"):
        store_outbox.add(
            conn, settings, subscription_id=sub_id, kind="newsletter", fact="F", event_id=None
        )
    with pytest.raises(ValueError, match="no subscription"):
        store_outbox.add(
            conn, settings, subscription_id=999, kind="expiry_notice", fact="F", event_id=None
        )


def test_naive_datetimes_cannot_be_stored_in_a_context(conn, settings):
    sub_id = subscription(conn)
    with pytest.raises(ValueError, match="naive"):
        store_outbox.add(
            conn, settings, subscription_id=sub_id, kind="expiry_notice", fact="F", event_id=None,
            extra={"expires_at": datetime(2030, 1, 1)},
        )  # fmt: skip


def queued_email_ids() -> list[int]:
    from tests.support import queued_event_ids

    return queued_event_ids()  # every message on the default queue carries one id


def test_dispatch_enqueues_send_email_and_records_when(conn, settings):
    sub_id = subscription(conn)
    ids = [
        store_outbox.add(conn, settings, subscription_id=sub_id, kind="expiry_notice", fact=f"F{n}",
                   event_id=None)
        for n in range(3)
    ]  # fmt: skip

    assert actors.dispatch_emails(TEST_DATABASE_URL, ids) == ids

    assert queued_email_ids() == ids
    rows = conn.execute("SELECT enqueued_at FROM emails").fetchall()
    assert all(row["enqueued_at"] is not None for row in rows)


def test_with_redis_down_dispatch_leaves_the_emails_for_the_relay(conn, settings, redis_down):
    sub_id = subscription(conn)
    email_id = store_outbox.add(
        conn, settings, subscription_id=sub_id, kind="expiry_notice", fact="F", event_id=None
    )

    with pytest.raises(BrokerUnavailable):
        actors.dispatch_emails(TEST_DATABASE_URL, [email_id])

    assert email_row(conn, email_id)["enqueued_at"] is None
    with pytest.raises(BrokerUnavailable):
        outbox.relay(TEST_DATABASE_URL, older_than_seconds=0)
    assert email_row(conn, email_id)["enqueued_at"] is None


def test_the_relay_enqueues_emails_never_enqueued_once_they_are_old_enough(conn, settings):
    sub_id = subscription(conn)
    old, fresh = (
        store_outbox.add(conn, settings, subscription_id=sub_id, kind="expiry_notice", fact=fact,
                   event_id=None)
        for fact in ("OLD", "FRESH")
    )  # fmt: skip
    conn.execute(
        "UPDATE emails SET created_at = now() - interval '5 minutes' WHERE id = %s", (old,)
    )

    assert outbox.relay(TEST_DATABASE_URL) == 1
    assert outbox.relay(TEST_DATABASE_URL) == 0

    assert queued_email_ids() == [old]
    assert email_row(conn, old)["enqueued_at"] is not None
    assert email_row(conn, fresh)["enqueued_at"] is None


def test_the_relay_re_enqueues_only_unfinished_emails_whose_job_is_overdue(conn, settings):
    sub_id = subscription(conn)
    names = (
        "lost_job",
        "stale_sending",
        "retry_not_due",
        "retry_just_due",
        "lost_retry",
        "sent",
        "failed",
    )
    ids = {
        name: store_outbox.add(conn, settings, subscription_id=sub_id, kind="expiry_notice",
                               fact=name, event_id=None)
        for name in names
    }  # fmt: skip
    conn.execute("UPDATE emails SET enqueued_at = now() - interval '4 hours'")
    conn.execute("UPDATE emails SET status = 'sending' WHERE fact = 'stale_sending'")
    # A retry is due when the retry policy says at the latest, however long ago it was handed over.
    conn.execute(
        "UPDATE emails SET due_at = now() + interval '25 seconds' WHERE fact = 'retry_not_due'"
    )
    conn.execute(
        "UPDATE emails SET due_at = now() - interval '5 seconds' WHERE fact = 'retry_just_due'"
    )
    conn.execute(
        "UPDATE emails SET due_at = now() - interval '25 seconds' WHERE fact = 'lost_retry'"
    )
    conn.execute("UPDATE emails SET status = 'sent', sent_at = now() WHERE fact = 'sent'")
    conn.execute("UPDATE emails SET status = 'failed', last_error = 'x' WHERE fact = 'failed'")

    assert outbox.relay(TEST_DATABASE_URL) == 3
    assert outbox.relay(TEST_DATABASE_URL) == 0  # now freshly enqueued

    assert queued_email_ids() == sorted([ids["lost_job"], ids["stale_sending"], ids["lost_retry"]])


def test_the_relay_works_in_batches(conn, settings):
    sub_id = subscription(conn)
    for n in range(7):
        store_outbox.add(conn, settings, subscription_id=sub_id, kind="expiry_notice", fact=f"F{n}",
                   event_id=None)  # fmt: skip

    assert outbox.relay(TEST_DATABASE_URL, older_than_seconds=0, batch=3) == 7
    assert len(queued_email_ids()) == 7


def test_the_event_that_caused_an_email_is_recorded_with_it(conn, settings):
    sub_id = subscription(conn)
    event_id = conn.execute(
        """
        INSERT INTO events (kind, dedupe_key, raw_body, content_type, fields, signature_algo,
                            key_index)
        VALUES ('ipn', 'k', '', 'application/x-www-form-urlencoded', '{}', 'sha256', 0)
        RETURNING id
        """
    ).fetchone()["id"]

    email_id = store_outbox.add(
        conn, settings, subscription_id=sub_id, kind="refund_notice", fact="R-9",
        event_id=event_id, extra={"amount": Decimal("5.00"), "lines": [{"price": Decimal("1.5")}]},
    )  # fmt: skip

    row = email_row(conn, email_id)
    assert row["event_id"] == event_id
    assert row["context"]["lines"] == [{"price": "1.5"}]


def test_a_relay_run_sends_each_row_once_even_without_a_grace(conn, settings):
    sub_id = subscription(conn)
    for n in range(3):
        store_outbox.add(conn, settings, subscription_id=sub_id, kind="expiry_notice", fact=f"G{n}",
                   event_id=None)  # fmt: skip

    assert outbox.relay(TEST_DATABASE_URL, older_than_seconds=0, stale_after_seconds=0) == 3
    assert len(queued_email_ids()) == 3


def test_a_late_enqueue_mark_leaves_a_retry_a_quick_worker_already_scheduled(conn, settings):
    sub_id = subscription(conn)
    email_id = store_outbox.add(conn, settings, subscription_id=sub_id, kind="expiry_notice",
                                fact="Q", event_id=None)  # fmt: skip
    # The worker took the message, failed and scheduled its retry before dispatch's mark landed.
    conn.execute(
        "UPDATE emails SET due_at = now() + interval '9 seconds', retry_job = 'm/1' WHERE id = %s",
        (email_id,),
    )

    assert actors.dispatch_emails(TEST_DATABASE_URL, [email_id]) == [email_id]

    row = email_row(conn, email_id)
    assert row["retry_job"] == "m/1" and row["enqueued_at"] is not None
    assert conn.execute("SELECT due_at > now() + interval '5 seconds' AS later FROM emails"
                        ).fetchone()["later"]  # fmt: skip
