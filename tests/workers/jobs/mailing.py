"""Helpers of the mailer's tests: a mail setup, an outbox email written for a fresh subscription,
its row, and what an SMTP server received."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from tests.emails.conftest import HOST
from tests.support import insert_subscription
from workers.config import Settings
from workers.store import outbox as store_outbox

EXPIRES = datetime(2030, 6, 30, tzinfo=UTC)
Start = Callable[..., Controller]


def smtp_url(port: int) -> str:
    return f"smtp://{HOST}:{port}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        Settings.from_env(),
        mail_from="DocFlow <billing@docflow.example>",
        smtp_url=None,
        mail_dir=tmp_path / "mail",
        default_locale="en",
    )


def subscription(conn: psycopg.Connection, **values: Any) -> int:
    """Insert a customer and an active subscription; the subscription's id."""
    defaults = {
        "email": "giulia.rossi@example.com",
        "license_code": "DF7K2M9QX4",
        "expires_at": EXPIRES,
    }
    return insert_subscription(conn, **(defaults | values))


def new_email(
    conn: psycopg.Connection,
    settings: Settings,
    kind: str = "renewal_confirmation",
    fact: str = "RENEW-1",
    **values: Any,
) -> int:
    """Write one outbox email for a fresh subscription; its id."""
    extra = {
        "renewal_confirmation": {
            "amount": Decimal("1000.00"),
            "new_expires_at": EXPIRES + timedelta(days=365),
        },
        "renewal_reminder": {"days_left": 7},
    }.get(kind, {})
    sub_id = subscription(conn, **values)
    email_id = store_outbox.add(
        conn, settings, subscription_id=sub_id, kind=kind, fact=fact, event_id=None, extra=extra
    )
    assert email_id is not None
    return email_id


def row(conn: psycopg.Connection, email_id: int) -> dict[str, Any]:
    return conn.execute("SELECT * FROM emails WHERE id = %s", (email_id,)).fetchone()


def received(envelope: Envelope) -> EmailMessage:
    content = envelope.original_content or envelope.content
    assert isinstance(content, bytes)
    parsed = BytesParser(policy=policy.default).parsebytes(content)
    assert isinstance(parsed, EmailMessage)
    return parsed
