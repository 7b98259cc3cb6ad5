"""Interrupted emails are actionable: counted in /metrics, listed, and resent by an operator."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import TEST_DATABASE_URL
from tests.emails.conftest import Recorder
from tests.webhooks.admin.test_page import csrf, log_in
from tests.workers.jobs.mailing import new_email, received, row, smtp_url
from tests.workers.jobs.test_outbox import queued_email_ids
from webhooks.app import create_app
from workers.cli import cli
from workers.config import Settings
from workers.jobs import mailer, outbox


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        Settings.from_env(), mail_from="DocFlow <billing@docflow.example>", mail_dir=tmp_path
    )


def interrupted(conn, settings, smtp, fact: str = "RENEW-1", **values) -> int:
    """An email a worker killed mid-delivery left `sending`, settled by the next attempt."""
    email_id = new_email(conn, settings, fact=fact, **values)
    conn.execute("UPDATE emails SET status = 'sending', attempts = 1 WHERE id = %s", (email_id,))
    mailer.send(smtp, email_id, final=False)
    return email_id


def test_an_interrupted_email_fails_with_its_own_reason_counted_in_the_metrics(
    conn, settings, smtp_server
):
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(Recorder()).port))
    email_id = interrupted(conn, settings, smtp)
    conn.execute(
        "INSERT INTO emails (subscription_id, kind, fact, to_address, locale, status, message_id,"
        " failure) SELECT subscription_id, kind, 'other', to_address, locale, 'failed', '<x@r>',"
        " 'permanent' FROM emails WHERE id = %s",
        (email_id,),
    )

    assert row(conn, email_id)["failure"] == "interrupted"
    scrape = create_app({"TESTING": "1"}).test_client().get("/metrics").text
    assert 'rinnovo_emails_failed{reason="interrupted"} 1.0' in scrape
    assert 'rinnovo_emails_failed{reason="permanent"} 1.0' in scrape
    assert 'rinnovo_emails_failed{reason="exhausted"} 0.0' in scrape


def test_emails_list_shows_the_interrupted_ones_and_resend_sends_them_with_the_same_message_id(
    conn, settings, smtp_server
):
    recorder = Recorder()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))
    first = interrupted(conn, settings, smtp, fact="A", license_code="LICA000001")
    second = interrupted(conn, settings, smtp, fact="B", license_code="LICB000001")
    other = new_email(conn, settings, fact="C", license_code="LICC000001")
    conn.execute(
        "UPDATE emails SET status = 'failed', failure = 'permanent' WHERE id = %s", (other,)
    )
    runner = CliRunner()

    listed = runner.invoke(cli, ["emails", "list", "--status", "failed", "--reason", "interrupted"])
    assert listed.exit_code == 0, listed.output
    ids = [int(m) for m in re.findall(r"^\s*(\d+)\s", listed.output, flags=re.MULTILINE)]
    assert ids == [second, first]
    assert "failed (interrupted)" in listed.output

    resent = runner.invoke(cli, ["emails", "resend", str(first)])
    assert resent.exit_code == 0, resent.output
    assert f"email {first}: enqueued to be sent again" in resent.output
    assert queued_email_ids() == [first]
    assert row(conn, first)["status"] == "pending" and row(conn, first)["failure"] is None

    mailer.send(smtp, first, final=False)  # what the worker does with the message
    assert [received(e)["Message-ID"] for e in recorder.envelopes] == [
        row(conn, first)["message_id"]
    ]
    assert row(conn, first)["status"] == "sent"


def test_resend_refuses_an_email_that_is_not_failed_or_does_not_exist_with_status_1(conn, settings):
    email_id = new_email(conn, settings)
    conn.execute("UPDATE emails SET status = 'sent' WHERE id = %s", (email_id,))

    result = CliRunner().invoke(cli, ["emails", "resend", str(email_id), "999999"])

    assert result.exit_code == 1
    assert f"email {email_id}: not resent, it is sent, not failed" in result.output
    assert "email 999999: not resent, no such email" in result.output
    assert row(conn, email_id)["status"] == "sent"
    assert queued_email_ids() == []


def test_the_event_page_offers_a_resend_button_protected_by_the_csrf_token(
    conn, settings, smtp_server
):
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(Recorder()).port))
    email_id = interrupted(conn, settings, smtp)
    event_id = conn.execute(
        "INSERT INTO events (kind, dedupe_key, status, raw_body, content_type, fields,"
        " signature_algo, key_index) VALUES ('ipn', 'k', 'processed', '', 'x', '{}', 'sha256', 0)"
        " RETURNING id"
    ).fetchone()["id"]
    conn.execute("UPDATE emails SET event_id = %s", (event_id,))
    admin = create_app({"ADMIN_TOKEN": "admin-token-for-tests"}).test_client()
    assert log_in(admin, "admin-token-for-tests").status_code == 303

    page = admin.get(f"/admin/events/{event_id}")
    action = f"/admin/emails/{email_id}/resend"
    assert action in page.text and "Resend" in page.text

    forged = admin.post(action, data={"csrf_token": "forged"})
    assert forged.status_code == 400
    assert row(conn, email_id)["status"] == "failed"

    done = admin.post(action, data={"csrf_token": csrf(page.text)})
    assert done.status_code == 303 and done.headers["Location"].endswith(f"/events/{event_id}")
    assert row(conn, email_id)["status"] == "pending"
    assert queued_email_ids() == [email_id]
    assert f"Email {email_id} will be sent again" in admin.get(f"/admin/events/{event_id}").text
    assert outbox.relay(TEST_DATABASE_URL) == 0  # enqueued already
