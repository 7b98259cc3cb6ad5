"""Tests for `rinnovo reminders run` and `rinnovo emails preview`."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from workers.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_the_cli_lists_the_reminders_and_emails_groups(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "reminders" in result.output and "emails" in result.output


def a_subscription_expiring(conn, expires_at: datetime) -> None:
    """One live subscription bought a year before `expires_at`, automatic renewal off."""
    customer_id = conn.execute(
        "INSERT INTO customers (email, locale, customer_key) "
        "VALUES ('giulia@example.com', 'it', 'giulia') RETURNING id"
    ).fetchone()["id"]
    conn.execute(
        """
        INSERT INTO subscriptions (license_code, customer_id, product_code, product, status,
                                   currency, expires_at, period_start)
        VALUES ('LIC0000001', %s, 'DOCFLOW-BIZ', 'DocFlow', 'active', 'EUR', %s,
                %s - interval '1 year')
        """,
        (customer_id, expires_at, expires_at),
    )


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def test_reminders_run_as_of_a_day_writes_that_days_reminders_once(runner, conn):
    today = datetime.now(UTC).date()
    a_subscription_expiring(conn, midnight(today + timedelta(days=7)))

    first = runner.invoke(cli, ["reminders", "run", "--as-of", today.isoformat()])
    again = runner.invoke(cli, ["reminders", "run", "--as-of", today.isoformat()])

    assert first.exit_code == 0, first.output
    assert f"reminder scan for {today.isoformat()}" in first.output
    assert "renewal_reminder: 1" in first.output
    assert "renewal_reminder: 0" in again.output
    facts = [row["fact"] for row in conn.execute("SELECT fact FROM emails").fetchall()]
    assert facts == [f"{(today + timedelta(days=7)).isoformat()}T00:00:00Z/7"]


def test_reminders_run_refuses_a_future_day_and_sends_nothing(runner, conn):
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    a_subscription_expiring(conn, midnight(tomorrow + timedelta(days=7)))

    result = runner.invoke(cli, ["reminders", "run", "--as-of", tomorrow.isoformat()])

    assert result.exit_code == 2
    assert f"{tomorrow.isoformat()} is in the future" in result.output
    assert "--dry-run" in result.output
    assert conn.execute("SELECT count(*) AS n FROM emails").fetchone()["n"] == 0


def test_reminders_run_dry_run_prints_what_it_would_send_and_writes_nothing(runner, conn):
    later = datetime.now(UTC).date() + timedelta(days=30)
    a_subscription_expiring(conn, midnight(later + timedelta(days=7)))

    result = runner.invoke(cli, ["reminders", "run", "--as-of", later.isoformat(), "--dry-run"])

    assert result.exit_code == 0, result.output
    assert f"dry run: what the reminder scan for {later.isoformat()} would send" in result.output
    assert "renewal_reminder" in result.output and "LIC0000001" in result.output
    assert "renewal_reminder: 1" in result.output
    assert conn.execute("SELECT count(*) AS n FROM emails").fetchone()["n"] == 0
    status = conn.execute("SELECT status FROM subscriptions").fetchone()["status"]
    assert status == "active"


def test_a_dry_run_lists_expiries_without_expiring_anything(runner, conn):
    today = datetime.now(UTC).date()
    a_subscription_expiring(conn, midnight(today - timedelta(days=2)))

    result = runner.invoke(cli, ["reminders", "run", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "expiry_notice" in result.output and "expired: 1" in result.output
    assert conn.execute("SELECT status FROM subscriptions").fetchone()["status"] == "active"
    assert conn.execute("SELECT count(*) AS n FROM emails").fetchone()["n"] == 0
    history = conn.execute("SELECT count(*) AS n FROM subscription_history").fetchone()
    assert history["n"] == 0


def test_reminders_run_refuses_a_malformed_day(runner, conn):
    result = runner.invoke(cli, ["reminders", "run", "--as-of", "30/06/2030"])
    assert result.exit_code == 2
    assert "--as-of" in result.output


def test_emails_preview_prints_the_subject_and_text_in_the_locale(runner):
    result = runner.invoke(cli, ["emails", "preview", "renewal_reminder", "--locale", "it"])

    assert result.exit_code == 0, result.output
    subject, _, body = result.output.partition("\n\n")
    assert subject.startswith("Subject: ")
    assert body.startswith("Ciao Giulia Rossi,")
    assert "<html" not in result.output


def test_emails_preview_without_a_locale_uses_the_default_locale(runner, monkeypatch):
    monkeypatch.setenv("DEFAULT_LOCALE", "it")
    result = runner.invoke(cli, ["emails", "preview", "expiry_notice"])
    assert "Ciao Giulia Rossi," in result.output


def test_emails_preview_html_writes_the_document_to_a_file(runner, tmp_path: Path):
    target = tmp_path / "preview.html"

    result = runner.invoke(
        cli, ["emails", "preview", "order_confirmation", "--locale", "it", "--html", str(target)]
    )

    assert result.exit_code == 0, result.output
    html = target.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and '<html lang="it">' in html
    assert str(target) in result.output


def test_emails_preview_html_to_standard_output(runner):
    result = runner.invoke(cli, ["emails", "preview", "expiry_notice", "--html", "-"])
    assert result.output.startswith("<!DOCTYPE html>")


def test_emails_preview_refuses_an_unknown_kind(runner):
    result = runner.invoke(cli, ["emails", "preview", "newsletter"])
    assert result.exit_code == 2
    assert "order_confirmation" in result.output


def test_emails_preview_refuses_a_locale_without_templates_naming_those_there_are(runner):
    result = runner.invoke(cli, ["emails", "preview", "expiry_notice", "--locale", "fr"])
    assert result.exit_code == 2
    assert "'fr'" in result.output and "en, it" in result.output
    assert "Subject:" not in result.output


@pytest.mark.parametrize("locale", ["en", "it"])
def test_emails_preview_signs_with_the_configured_merchant_and_support_address(
    runner, monkeypatch, locale
):
    monkeypatch.setenv("MERCHANT_NAME", "Bottega Nova")
    monkeypatch.setenv("SUPPORT_EMAIL", "aiuto@bottega.example")
    monkeypatch.setenv("SUPPORT_URL", "https://bottega.example/help")

    text = runner.invoke(cli, ["emails", "preview", "renewal_reminder", "--locale", locale])
    html = runner.invoke(
        cli, ["emails", "preview", "renewal_reminder", "--locale", locale, "--html", "-"]
    )

    for result in (text, html):
        assert result.exit_code == 0, result.output
        assert "Bottega Nova" in result.output
        assert "aiuto@bottega.example" in result.output
        assert "https://bottega.example/help" in result.output
        assert "supporto@example.com" not in result.output


@pytest.mark.parametrize("unset", ["MERCHANT_NAME", "SUPPORT_EMAIL"])
def test_emails_preview_without_the_merchant_voice_says_which_setting_is_missing(
    runner, monkeypatch, unset
):
    monkeypatch.delenv(unset)
    result = runner.invoke(cli, ["emails", "preview", "expiry_notice", "--locale", "en"])
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and unset in line and "not set" in line
