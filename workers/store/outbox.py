"""The outbox's rows: one per fact worth telling a customer, written in the caller's transaction.

An outbox row carries everything needed to send it later: the recipient, the locale, the full
rendering context (stored JSON-safe: instants as ISO 8601 UTC strings, money as decimal strings)
and a Message-ID fixed at creation, so every retry sends the same message. Rows are unique per
(subscription, kind, fact): writing the same fact twice writes nothing, so an email is never
written, and therefore never sent, twice. Enqueueing happens after commit
(`actors.dispatch_emails`; a worker applying an event writes its rows already marked enqueued and
sends them right after its commit); rows the broker never took are picked up by the email relay
(`workers.jobs.outbox`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from emails.links import portal_url, renewal_url
from emails.message import make_message_id, parse_mailbox
from emails.render import KINDS, resolve_locale
from workers.config import Settings
from workers.errors import ConfigError
from workers.store.db import Conn
from workers.store.jsonable import jsonable

# Why a failed email failed (the emails table's `failure`): interrupted (it may have been
# delivered), permanent, exhausted (retries), superseded, config.
FAILURES = ("interrupted", "permanent", "exhausted", "superseded", "config")

# The subscription and customer columns a context is built from; the scan selects the same.
SOURCE_COLUMNS = sql.SQL(
    "s.id AS subscription_id, s.license_code, s.product_code, s.product, s.edition, s.cycle, "
    "s.quantity, s.status, s.auto_renew, s.test, s.currency, s.expires_at, s.last_order_ref, "
    "c.email AS customer_email, c.first_name, c.last_name, c.locale AS customer_locale"
)


# The same, by key, from a subscription row and its customer's (id, email, names, locale).
_SUBSCRIPTION_KEYS = (
    "license_code", "product_code", "product", "edition", "cycle", "quantity", "status",
    "auto_renew", "test", "currency", "expires_at", "last_order_ref",
)  # fmt: skip


def source_of(sub: Mapping[str, Any], customer: Mapping[str, Any]) -> dict[str, Any]:
    """What SOURCE_COLUMNS select, from a subscription row and its customer's row in hand."""
    source = {"subscription_id": sub["id"], **{key: sub[key] for key in _SUBSCRIPTION_KEYS}}
    source.update(
        customer_email=customer["email"],
        first_name=customer["first_name"],
        last_name=customer["last_name"],
        customer_locale=customer["locale"],
    )
    return source


@dataclass(frozen=True)
class Draft:
    """One email to write: which subscription row (with its customer), what kind, which fact."""

    source: Mapping[str, Any]
    kind: str
    fact: str
    event_id: int | None = None
    extra: Mapping[str, Any] | None = None


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


def write(
    conn: Conn, settings: Settings, drafts: Sequence[Draft], *, enqueued: bool = False
) -> list[int]:
    """Insert the drafts (facts already in the outbox are skipped); the ids of the new rows.

    `enqueued`: the caller hands the new rows to the broker right after its commit, so they are
    written as `mark_enqueued` leaves them (`unmark` those the broker then refuses).
    """
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
                            context, message_id, status, enqueued_at, due_at)
        SELECT id, subscription_id, event_id, kind, fact, to_address, locale,
               context::jsonb, message_id, status,
               CASE WHEN %b THEN now() END, CASE WHEN %b THEN now() END
        FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::text[], %b::text[],
                    %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
             AS d(id, subscription_id, event_id, kind, fact, to_address, locale, context,
                  message_id, status)
        ON CONFLICT (subscription_id, kind, fact) DO NOTHING
        RETURNING id
        """,
        [enqueued, enqueued, *columns],  # binary arrays: thousands of JSON texts need no quoting
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
    source: Mapping[str, Any] | None = None,
    enqueued: bool = False,
) -> int | None:
    """Write one email about `fact` in the caller's transaction; None if it was already written.

    `source`: the subscription and customer as they stand in this transaction (`source_of`),
    when the caller has them; else they are read. `enqueued`: as `write` says.
    """
    if source is None:
        query = sql.SQL(
            "SELECT {} FROM subscriptions s JOIN customers c ON c.id = s.customer_id "
            "WHERE s.id = %s"
        ).format(SOURCE_COLUMNS)
        source = conn.execute(query, (subscription_id,)).fetchone()
    if source is None:
        raise ValueError(f"no subscription with id {subscription_id}")
    draft = Draft(source=source, kind=kind, fact=fact, event_id=event_id, extra=extra)
    ids = write(conn, settings, [draft], enqueued=enqueued)
    return ids[0] if ids else None


def mark_enqueued(conn: Conn, email_ids: list[int]) -> None:
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


def unmark(conn: Conn, email_ids: list[int]) -> None:
    """Undo the mark of rows written as enqueued that the broker then refused (no job holds them
    yet): they are the email relay's again, as rows never enqueued."""
    conn.execute(
        """
        UPDATE emails SET enqueued_at = NULL, due_at = NULL
        WHERE id = ANY(%s) AND status = 'pending' AND retry_job IS NULL AND attempts = 0
        """,
        (email_ids,),
    )


def due(
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


def resendable(conn: Conn, email_ids: Sequence[int]) -> dict[int, str]:
    """Lock the rows of `email_ids` that exist; the status of each, by id."""
    rows = conn.execute(
        "SELECT id, status FROM emails WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (list(email_ids),),
    ).fetchall()
    return {row["id"]: row["status"] for row in rows}


def resend(conn: Conn, email_ids: Sequence[int]) -> None:
    """Put (failed) rows back to `pending`, due now, its failure and retry forgotten, not yet
    handed to the broker."""
    conn.execute(
        """
        UPDATE emails SET status = 'pending', failure = NULL, retry_job = NULL,
                          due_at = now(), enqueued_at = NULL
        WHERE id = ANY(%s)
        """,
        (list(email_ids),),
    )


# The mailer's writes: one attempt at sending one row (workers.jobs.mailer says how they follow
# each other). None of them changes a row already `sent`.

# Advisory lock keys of live send attempts: "mail" in the high half, the email id below it.
SEND_LOCK_BASE = 0x6D61696C << 32


def _send_lock_key(email_id: int) -> int:
    return SEND_LOCK_BASE + email_id % (1 << 32)


def try_lock_send(conn: Conn, email_id: int) -> bool:
    """Take the session's advisory lock on sending `email_id`; False when another session holds
    it. The lock outlives the transaction, and dies with the connection."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s) AS locked", (_send_lock_key(email_id),)
    ).fetchone()
    return bool(row and row["locked"])


def unlock_send(conn: Conn, email_id: int) -> None:
    """Release the session's advisory lock on sending `email_id`."""
    conn.execute("SELECT pg_advisory_unlock(%s)", (_send_lock_key(email_id),))


def lock_for_sending(conn: Conn, email_id: int) -> dict[str, Any] | None:
    """The row, locked, with what its subscription is now (`subscription_*` columns) and whether
    a retry is still due later (`retry_pending`); None when there is no such email."""
    row: dict[str, Any] | None = conn.execute(
        """
        SELECT e.*, s.status AS subscription_status, s.expires_at AS subscription_expires_at,
               s.auto_renew AS subscription_auto_renew, s.customer_id AS subscription_customer_id,
               s.past_due_since AS subscription_past_due_since,
               (e.due_at > now()) AS retry_pending
        FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
        WHERE e.id = %s
        FOR UPDATE OF e
        """,
        (email_id,),
    ).fetchone()
    return row


def start_sending(conn: Conn, email_id: int) -> None:
    """Mark the row `sending`, one more attempt counted: its message is about to go out."""
    conn.execute(
        "UPDATE emails SET status = 'sending', attempts = attempts + 1 WHERE id = %s", (email_id,)
    )


def mark_sent(conn: Conn, email_id: int) -> None:
    """Mark the row `sent`, now, its last error cleared."""
    conn.execute(
        """
        UPDATE emails SET status = 'sent', sent_at = now(), last_error = NULL
        WHERE id = %s AND status <> 'sent'
        """,
        (email_id,),
    )


def retry_later(
    conn: Conn, email_id: int, error: str, within_seconds: float, job: str | None
) -> None:
    """After a transient failure the broker holds a retry: the row goes back to `pending`, a
    fresh hand-over to the broker, due at the latest `within_seconds` from now, and `job` the one
    job it now waits for (only a row still `sending`)."""
    conn.execute(
        """
        UPDATE emails SET status = 'pending', last_error = %s, enqueued_at = now(),
                          due_at = now() + make_interval(secs => %s), retry_job = %s
        WHERE id = %s AND status = 'sending'
        """,
        (error, within_seconds, job, email_id),
    )


def retry_config(
    conn: Conn, email_id: int, error: str, within_seconds: float, job: str | None
) -> None:
    """A setting stopped the attempt before sending: the row stays `pending`, the attempt
    counted, due again within `within_seconds`, held by the retry `job`."""
    conn.execute(
        """
        UPDATE emails SET last_error = %s, attempts = attempts + 1, enqueued_at = now(),
                          due_at = now() + make_interval(secs => %s), retry_job = %s
        WHERE id = %s AND status = 'pending'
        """,
        (error, within_seconds, job, email_id),
    )


def mark_failed(conn: Conn, email_id: int, error: str, failure: str, *, tried: bool) -> None:
    """Mark the row `failed` for `failure` (one of FAILURES), with the error's text; `tried`
    False: the attempt that failed it had not been counted yet (it never reached `sending`)."""
    query = _FAILED if tried else _FAILED_UNTRIED
    conn.execute(query, (error, failure, email_id))


_FAILED = """
    UPDATE emails SET status = 'failed', last_error = %s, failure = %s, retry_job = NULL
    WHERE id = %s AND status <> 'sent'
"""
_FAILED_UNTRIED = """
    UPDATE emails SET status = 'failed', last_error = %s, failure = %s, retry_job = NULL,
                      attempts = attempts + 1
    WHERE id = %s AND status <> 'sent'
"""


def withhold(conn: Conn, email_id: int, status: str, why: str) -> None:
    """Settle a row that must not be sent as `status` (`off` or `suppressed`), saying why."""
    conn.execute(
        "UPDATE emails SET status = %s, last_error = %s WHERE id = %s AND status <> 'sent'",
        (status, why, email_id),
    )
