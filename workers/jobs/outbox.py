"""The email outbox: one row per fact worth telling a customer, written in the caller's transaction.

An outbox row carries everything needed to send it later: the recipient, the locale, the full
rendering context (stored JSON-safe: instants as ISO 8601 UTC strings, money as decimal strings)
and a Message-ID fixed at creation, so every retry sends the same message. Rows are unique per
(subscription, kind, fact): writing the same fact twice writes nothing, so an email is never
written, and therefore never sent, twice. Enqueueing happens after commit (`dispatch`); rows the
broker never took are picked up by `relay` on the clock.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from psycopg import sql

from emails.links import portal_url, renewal_url
from emails.message import make_message_id, parse_mailbox
from emails.render import KINDS, resolve_locale
from workers.config import Settings
from workers.errors import BrokerUnavailable, ConfigError
from workers.store import db, events
from workers.store.db import Conn
from workers.store.subscriptions import iso

log = logging.getLogger(__name__)

# Re-enqueue a row whose job is overdue by this long (the same grace as events'): due when
# handed to the broker, or, for a retry, at the latest instant the retry policy can start it
# (`due_at`). Its job was lost (a killed worker, a worker that lost Redis, a retry Redis
# refused); a copy that was only late does nothing (the mailer sends a row once).
STALE_AFTER_SECONDS = events.OVERDUE_AFTER_SECONDS

# The subscription and customer columns a context is built from; the scan selects the same.
SOURCE_COLUMNS = sql.SQL(
    "s.id AS subscription_id, s.license_code, s.product_code, s.product, s.edition, s.cycle, "
    "s.quantity, s.status, s.auto_renew, s.test, s.currency, s.expires_at, s.last_order_ref, "
    "c.email AS customer_email, c.first_name, c.last_name, c.locale AS customer_locale"
)


@dataclass(frozen=True)
class Draft:
    """One email to write: which subscription row (with its customer), what kind, which fact."""

    source: Mapping[str, Any]
    kind: str
    fact: str
    event_id: int | None = None
    extra: Mapping[str, Any] | None = None


def jsonable(value: Any) -> Any:
    """Return `value` in a form JSON keeps exactly: instants as ISO UTC, Decimals as strings."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} in an email context")
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    raise TypeError(f"cannot store a {type(value).__name__} in an email context")


def message_domain(settings: Settings) -> str:
    """The domain of Message-IDs: MAIL_DOMAIN, else the domain of MAIL_FROM."""
    if settings.mail_domain:
        return settings.mail_domain
    try:
        return str(parse_mailbox(settings.mail_from, "MAIL_FROM").domain)
    except ValueError as exc:
        raise ConfigError(f"MAIL_FROM: {exc}") from None


def customer_name(source: Mapping[str, Any]) -> str:
    """The customer's name as emails greet them (may be empty)."""
    return " ".join(part for part in (source["first_name"], source["last_name"]) if part)


def context_for(
    settings: Settings, source: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The full rendering context of one email, JSON-safe; `extra` overrides and extends it."""
    try:
        renewal = renewal_url(
            settings.renewal_url,
            license_code=source["license_code"],
            product_code=source["product_code"],
            email=source["customer_email"],
        )
        portal = portal_url(settings.portal_url)
    except ValueError as exc:
        # A broken link setting would break every email: fail loudly, the event is retried.
        raise ConfigError(f"RENEWAL_URL/PORTAL_URL: {exc}") from None
    context: dict[str, Any] = {
        "customer_name": customer_name(source),
        "customer_email": source["customer_email"],
        "license_code": source["license_code"],
        "product": source["product"],
        "edition": source["edition"],
        "cycle": source["cycle"],
        "quantity": source["quantity"],
        "order_ref": source["last_order_ref"],
        "expires_at": source["expires_at"],
        "portal_url": portal,
        "renewal_url": renewal,
        "currency": source["currency"],
        "test": source["test"],
    }
    context.update(extra or {})
    result = jsonable(context)
    assert isinstance(result, dict)
    return result


def _new_ids(conn: Conn, count: int) -> list[int]:
    """Reserve `count` outbox ids, so each Message-ID can be made from its row's id."""
    rows = conn.execute(
        "SELECT nextval(pg_get_serial_sequence('emails', 'id')) AS id FROM generate_series(1, %s)",
        (count,),
    ).fetchall()
    return [int(row["id"]) for row in rows]


def write(conn: Conn, settings: Settings, drafts: Sequence[Draft]) -> list[int]:
    """Insert the drafts (facts already in the outbox are skipped); the ids of the new rows."""
    if not drafts:
        return []
    for draft in drafts:
        if draft.kind not in KINDS:
            raise ValueError(f"unknown email kind {draft.kind!r}")
    domain = message_domain(settings)
    # With the row id in the hash, one salt per batch keeps ids unique across installations
    # and recreated databases.
    salt = secrets.token_hex(8)
    ids = _new_ids(conn, len(drafts))
    columns: list[list[Any]] = [[] for _ in range(10)]
    for email_id, draft in zip(ids, drafts, strict=True):
        source = draft.source
        values = (
            email_id,
            source["subscription_id"],
            draft.event_id,
            draft.kind,
            draft.fact,
            source["customer_email"],
            resolve_locale(source["customer_locale"], settings.default_locale),
            json.dumps(context_for(settings, source, draft.extra), ensure_ascii=False),
            make_message_id(email_id, domain, salt=salt),
            # EMAILS_OFF: written all the same, so operators see what the customer would get.
            "off" if draft.kind in settings.emails_off else "pending",
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    rows = conn.execute(
        """
        INSERT INTO emails (id, subscription_id, event_id, kind, fact, to_address, locale,
                            context, message_id, status)
        SELECT id, subscription_id, event_id, kind, fact, to_address, locale,
               context::jsonb, message_id, status
        FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::text[], %b::text[],
                    %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
             AS d(id, subscription_id, event_id, kind, fact, to_address, locale, context,
                  message_id, status)
        ON CONFLICT (subscription_id, kind, fact) DO NOTHING
        RETURNING id
        """,
        columns,  # binary arrays: thousands of JSON texts need no quoting
    ).fetchall()
    return sorted(int(row["id"]) for row in rows)


def add(
    conn: Conn,
    settings: Settings,
    *,
    subscription_id: int,
    kind: str,
    fact: str,
    event_id: int | None,
    extra: Mapping[str, Any] | None = None,
) -> int | None:
    """Write one email about `fact` in the caller's transaction; None if it was already written."""
    query = sql.SQL(
        "SELECT {} FROM subscriptions s JOIN customers c ON c.id = s.customer_id WHERE s.id = %s"
    ).format(SOURCE_COLUMNS)
    source = conn.execute(query, (subscription_id,)).fetchone()
    if source is None:
        raise ValueError(f"no subscription with id {subscription_id}")
    ids = write(
        conn, settings, [Draft(source=source, kind=kind, fact=fact, event_id=event_id, extra=extra)]
    )
    return ids[0] if ids else None


def _send(email_ids: Iterable[int]) -> list[int]:
    """Hand ids to the broker until it fails; the ones it took."""
    from workers.jobs.actors import send_email  # the actors import the lifecycle, which imports us
    from workers.jobs.broker import send_each

    return send_each(send_email, email_ids)


def _mark_enqueued(conn: Conn, email_ids: list[int]) -> None:
    # Due now, and any job may take it: an older retry job, if it ever comes, is a stray copy.
    # Unless a worker was quicker than this mark and already scheduled a retry: that one stands.
    conn.execute(
        """
        UPDATE emails SET enqueued_at = now(),
                          retry_job = CASE WHEN due_at > now() THEN retry_job END,
                          due_at = GREATEST(due_at, now())
        WHERE id = ANY(%s)
        """,
        (email_ids,),
    )


def dispatch(database_url: str, email_ids: list[int]) -> list[int]:
    """Enqueue committed emails and record when; returns those the broker took.

    Raises BrokerUnavailable when Redis takes none of them: they stay unenqueued for the relay.
    """
    if not email_ids:
        return []
    sent = _send(email_ids)
    if len(sent) < len(email_ids):
        log.warning("broker failed: %d email(s) left for the relay", len(email_ids) - len(sent))
    with db.connection(database_url) as conn, conn.transaction():
        # Losing this mark only means the relay enqueues the email again, which the mailer
        # shrugs off, so it need not wait for the disk.
        conn.execute("SET LOCAL synchronous_commit = off")
        _mark_enqueued(conn, sent)
    return sent


def _due(
    conn: Conn, *, older_than_seconds: float, stale_after_seconds: float, limit: int
) -> list[int]:
    """Lock a batch of emails the broker should have (again), skipping rows another relay holds."""
    rows = conn.execute(
        """
        SELECT id FROM emails
        WHERE status IN ('pending', 'sending')
          AND ((status = 'pending' AND enqueued_at IS NULL
                AND created_at < now() - make_interval(secs => %s))
               OR COALESCE(GREATEST(due_at, enqueued_at), created_at)
                  < now() - make_interval(secs => %s))
        ORDER BY id
        LIMIT %s
        FOR UPDATE SKIP LOCKED
        """,
        (older_than_seconds, stale_after_seconds, limit),
    ).fetchall()
    return [int(row["id"]) for row in rows]


def relay(
    database_url: str,
    *,
    older_than_seconds: float = 10.0,
    stale_after_seconds: float = STALE_AFTER_SECONDS,
    batch: int = 500,
) -> int:
    """Enqueue emails the broker never took, or whose job is overdue without an outcome; how many.

    `enqueued_at` is the last time a job for the row was handed to the broker (after commit,
    by this relay, or as a retry after a transient failure); `due_at`, when its retry must start
    at the latest. A `pending` row never enqueued is relayed after `older_than_seconds`; one whose
    job is overdue by `stale_after_seconds` lost it (Redis lost it, a worker died) and is enqueued
    again. A duplicate job is harmless: the mailer sends a row once.
    """
    from workers.jobs.actors import send_email
    from workers.jobs.dispatch import (  # they import the actors, and us
        relay_batches,
        unless_backlog,
    )

    stale_after_seconds = unless_backlog(send_email, stale_after_seconds)
    return relay_batches(
        database_url,
        claim=lambda conn: _due(
            conn,
            older_than_seconds=older_than_seconds,
            stale_after_seconds=stale_after_seconds,
            limit=batch,
        ),
        send=_send,
        mark=_mark_enqueued,
        what="email(s)",
        name="email relay",
    )


@dataclass(frozen=True)
class Resent:
    """What a resend did: the emails sent again, those left for the relay, and those refused."""

    enqueued: list[int]
    for_relay: list[int]
    refused: dict[int, str]  # id -> why (not failed, or no such email)


def resend(database_url: str, email_ids: Sequence[int]) -> Resent:
    """Send failed emails again, with their Message-ID unchanged, on an operator's word.

    For an interrupted email the operator first checks the mail server's log: it may have been
    delivered. Each row goes back to `pending`, due now; Redis refusing leaves it to the relay.
    """
    wanted = sorted(set(email_ids))
    with db.connection(database_url) as conn, conn.transaction():
        found = {
            row["id"]: row["status"]
            for row in conn.execute(
                "SELECT id, status FROM emails WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (wanted,),
            ).fetchall()
        }
        taken = [email_id for email_id in wanted if found.get(email_id) == "failed"]
        conn.execute(
            """
            UPDATE emails SET status = 'pending', failure = NULL, retry_job = NULL,
                              due_at = now(), enqueued_at = NULL
            WHERE id = ANY(%s)
            """,
            (taken,),
        )
    refused = {
        email_id: f"it is {found[email_id]}, not failed" if email_id in found else "no such email"
        for email_id in wanted
        if email_id not in taken
    }
    try:
        enqueued = dispatch(database_url, taken)
    except BrokerUnavailable:
        enqueued = []
    log.info("resent %d email(s) on an operator's command", len(taken))
    return Resent(
        enqueued=enqueued,
        for_relay=[email_id for email_id in taken if email_id not in enqueued],
        refused=refused,
    )
