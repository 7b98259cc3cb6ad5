"""`rinnovo simulate`: its notifications are accepted by a live receiver and its receipts verify."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.conftest import TEST_DATABASE_URL
from tests.support import QUICK_OUTAGE, drain, free_port, runtime_from_env
from workers.billing import policies
from workers.cli import cli
from workers.config import Settings
from workers.ops import scenarios, simulate
from workers.protocol import form
from workers.store import events, subscriptions


@pytest.fixture
def mail_dir(tmp_path, monkeypatch):
    """Emails the worker sends are written here (no SMTP_URL), not into the checkout."""
    monkeypatch.setenv("MAIL_DIR", str(tmp_path / "mail"))
    runtime_from_env()
    yield tmp_path / "mail"


def run(*args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, ["simulate", *args], env=env or None)


def only_event(conn) -> dict:
    """The one stored event, as operators see it (its fields read from its body)."""
    rows = conn.execute("SELECT id FROM events ORDER BY id").fetchall()
    assert len(rows) == 1
    return events.get(conn, rows[0]["id"])


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_simulated_order_is_accepted_by_the_receiver_and_its_receipt_verifies(live_url, conn):
    result = run(
        "ipn", "--status", "COMPLETE", "--email", "a@example.com", "--product",
        "AWDOC-BUSINESS-Y", "--license", "SIMLIC0001", "--locale", "it", "--url", live_url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert f"POST {live_url}/ipn -> HTTP 200" in result.output
    assert '<sig algo="sha3-256" date="' in result.output
    assert result.output.endswith("receipt verified\n")
    event = only_event(conn)
    fields = event["fields"]
    assert (event["kind"], event["status"], event["signature_algo"]) == (
        "ipn",
        "enqueued",
        "sha3-256",
    )
    assert event["license_codes"] == ["SIMLIC0001"] and event["test"] is True
    assert fields["CUSTOMEREMAIL"] == ["a@example.com"]
    assert fields["LANGUAGE"] == ["it"]
    assert fields["IPN_PCODE[]"] == ["AWDOC-BUSINESS-Y"]
    assert fields["IPN_PID[]"] == ["43814"]
    assert fields["IPN_PRICE[]"] == ["600.00"]
    start = at(fields["IPN_LICENSE_START[]"][0])
    assert at(fields["IPN_LICENSE_EXP[]"][0]) == start.replace(year=start.year + 1)
    names = [name for name, _ in form.parse_form(bytes(event["raw_body"]))]
    assert names[:4] == ["GIFT_ORDER", "SALEDATE", "PAYMENTDATE", "REFNO"]
    assert names[-2:] == ["SIGNATURE_SHA2_256", "SIGNATURE_SHA3_256"]


def test_the_whole_lifecycle_can_be_driven_by_the_simulator(live_url, conn, mail_dir):
    code = "SIMFLOW001"

    assert (
        run("ipn", "--license", code, "--email", "flow@example.com", "--url", live_url).exit_code
        == 0
    )
    drain()
    bought = subscriptions.describe(conn, code)
    assert bought is not None
    assert (bought["status"], bought["product_code"], bought["policy_mismatch"]) == (
        "active", "AWDOC-TEAM-M", False,
    )  # fmt: skip

    renewed = run("renewal", "--license", code, "--url", live_url)
    assert renewed.exit_code == 0, renewed.output
    assert "note: expiry by the policy: manual renewal before expiry" in renewed.output
    drain()
    after_renewal = subscriptions.describe(conn, code)
    assert after_renewal is not None
    # Renewed by hand before expiry: one month from the natural expiry, as the policy says.
    assert at(after_renewal["expires_at"]) == policies.add_months(at(bought["expires_at"]), 1)
    assert after_renewal["policy_mismatch"] is False

    upgraded = run("upgrade", "--license", code, "--product", "AWDOC-BUSINESS-Y", "--url", live_url)
    assert upgraded.exit_code == 0, upgraded.output
    assert "by the restart policy: credit" in upgraded.output
    drain()
    after_upgrade = subscriptions.describe(conn, code)
    assert after_upgrade is not None
    assert after_upgrade["product_code"] == "AWDOC-BUSINESS-Y"
    assert after_upgrade["cycle"] == "annual"
    assert after_upgrade["policy_mismatch"] is False

    assert run("lcn", "--license", code, "--status", "PASTDUE", "--url", live_url).exit_code == 0
    drain()
    assert subscriptions.describe(conn, code)["status"] == "past_due"  # type: ignore[index]

    refunded = run("refund", "--license", code, "--url", live_url)
    assert refunded.exit_code == 0, refunded.output
    drain()
    assert subscriptions.describe(conn, code)["status"] == "refunded"  # type: ignore[index]

    statuses = conn.execute("SELECT status FROM events ORDER BY id").fetchall()
    assert [row["status"] for row in statuses] == ["processed"] * 5
    kinds = conn.execute("SELECT kind, to_address FROM emails ORDER BY id").fetchall()
    assert [row["kind"] for row in kinds] == [
        "order_confirmation",
        "renewal_confirmation",
        "upgrade_confirmation",
        "payment_failed",
        "refund_notice",
    ]
    assert {row["to_address"] for row in kinds} == {"flow@example.com"}
    # One customer: the simulator gives an address the same provider reference every time.
    assert conn.execute("SELECT count(*) AS n FROM customers").fetchone()["n"] == 1


def test_an_ins_order_and_a_failed_installment_of_the_same_sale_are_accepted_and_applied(
    live_url, conn, mail_dir
):
    created = run("ins", "--sale-id", "1234567890", "--email", "ins@example.com", "--url", live_url)
    assert created.exit_code == 0, created.output
    assert created.output.splitlines()[-2:] == ["OK", "acknowledged"]
    drain()
    license_code = "2CO-1234567890-AWDOC-TEAM-M"
    assert subscriptions.describe(conn, license_code)["status"] == "active"  # type: ignore[index]

    failed = run(
        "ins", "--message-type", "RECURRING_INSTALLMENT_FAILED", "--sale-id", "1234567890",
        "--url", live_url,
    )  # fmt: skip
    assert failed.exit_code == 0, failed.output
    drain()
    assert subscriptions.describe(conn, license_code)["status"] == "past_due"  # type: ignore[index]


def test_a_receipt_signed_with_another_key_fails_the_simulation(live_url, conn):
    # The receiver still accepts the rotated-out key, but signs receipts with its first key.
    result = run("ipn", "--url", live_url, TWOCHECKOUT_SECRET_KEY="previous-key-still-accepted")

    assert result.exit_code == 1
    assert "HTTP 200" in result.output
    assert "the receipt does not verify as sha3-256" in result.output
    assert "receipt verified" not in result.output
    assert only_event(conn)["key_index"] == 1


def test_a_refused_notification_fails_the_simulation_with_the_receiver_s_answer(live_url, conn):
    result = run(
        "lcn", "--license", "NOSUCHLIC1", "--url", live_url, TWOCHECKOUT_SECRET_KEY="wrong"
    )

    assert result.exit_code == 1
    assert f"POST {live_url}/lcn -> HTTP 400" in result.output
    assert "Cannot verify signature" in result.output
    assert "not acknowledged: HTTP 400" in result.output
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 0


def test_an_unreachable_receiver_is_one_clear_error(conn):
    url = f"http://127.0.0.1:{free_port()}"
    result = run("ipn", "--url", url)

    assert result.exit_code == 1
    assert f"cannot reach {url}/ipn: ConnectionError" in result.output


def test_an_unknown_product_is_refused_naming_the_catalog_s_codes(conn):
    result = run("ipn", "--product", "NOPE", "--url", "http://127.0.0.1:9")

    assert result.exit_code == 1
    assert "unknown product 'NOPE'; the catalog has: AWDOC-TEAM-M, AWDOC-TEAM-Y" in result.output


def test_a_dry_run_prints_the_fields_in_the_provider_s_order_and_posts_nothing(conn):
    result = run(
        "lcn", "--license", "DRYRUN0001", "--status", "EXPIRED", "--dry-run",
        "--expires", "2027-03-01", "--no-recurring", "--url", "http://127.0.0.1:9",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        lines[0] == "note: license DRYRUN0001 is not in the local database; using the options given"
    )
    assert lines[1] == "LCN EXPIRED for DRYRUN0001 (license DRYRUN0001)"
    names = [line.strip().split("=", 1)[0] for line in lines[2:]]
    assert names[:4] == ["FIRST_NAME", "LAST_NAME", "COMPANY", "EMAIL"]
    assert names[-2:] == ["SIGNATURE_SHA2_256", "SIGNATURE_SHA3_256"]
    assert "  EXPIRATION_DATE=2027-03-01 00:00:00" in lines
    assert "  STATUS=EXPIRED" in lines
    assert "  RECURRING=0" in lines
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 0


def test_an_ins_message_without_a_secret_word_is_one_clear_error(conn):
    result = run("ins", "--url", "http://127.0.0.1:9", TWOCHECKOUT_INS_SECRET_WORD="")

    assert result.exit_code == 1
    assert "TWOCHECKOUT_INS_SECRET_WORD is not set" in result.output


def test_without_a_secret_key_the_simulator_says_what_to_set(conn):
    result = run("ipn", "--url", "http://127.0.0.1:9", TWOCHECKOUT_SECRET_KEY="")

    assert result.exit_code == 1
    assert "TWOCHECKOUT_SECRET_KEY is not set" in result.output


def test_a_malformed_expiry_option_is_refused_with_the_layout_to_use(conn):
    result = run("renewal", "--license", "X1", "--expires", "next tuesday", "--dry-run")

    assert result.exit_code == 1
    assert (
        "--expires must be YYYY-MM-DD or YYYY-MM-DD HH:MM:SS, not 'next tuesday'" in result.output
    )


def test_a_renewal_of_a_license_the_database_does_not_know_uses_the_options_given(conn):
    notification = scenarios.renewal(
        Settings.from_env(), license_code="ELSEWHERE1", product="AWDOC-TEAM-Y", expires="2027-05-01"
    )

    fields = dict(notification.pairs)
    assert fields["IPN_LICENSE_TYPE[]"] == "RENEWAL"
    assert fields["IPN_LICENSE_REF[]"] == "ELSEWHERE1"
    assert fields["IPN_PCODE[]"] == "AWDOC-TEAM-Y"
    assert fields["IPN_LICENSE_EXP[]"] == "2027-05-01 00:00:00"
    assert notification.notes == [
        "license ELSEWHERE1 is not in the local database; using the options given"
    ]


def test_a_refused_upgrade_is_still_posted_with_a_note_so_its_failure_can_be_seen(
    live_url, conn, mail_dir
):
    assert (
        run(
            "ipn", "--license", "DOWNGRADE1", "--product", "AWDOC-BUSINESS-M", "--url", live_url
        ).exit_code
        == 0
    )
    drain()

    result = run(
        "upgrade", "--license", "DOWNGRADE1", "--product", "AWDOC-TEAM-M", "--url", live_url
    )
    drain()

    assert result.exit_code == 0, result.output
    assert "note: the policy refuses this upgrade (downgrade" in result.output
    failed = conn.execute("SELECT status, last_error FROM events ORDER BY id DESC").fetchone()
    assert failed["status"] == "failed"
    assert "upgrade refused" in failed["last_error"]


def test_a_customer_reference_is_stable_for_an_address_whatever_its_case():
    first = simulate.customer_reference("Mario.Rossi@Example.com")

    assert first == simulate.customer_reference("mario.rossi@example.com ")
    assert first != simulate.customer_reference("luigi@example.com")
    assert len(first) == 9 and first.isdigit()


def test_simulated_times_are_utc_now(conn):
    notification = scenarios.ipn(Settings.from_env())
    sale = datetime.fromisoformat(dict(notification.pairs)["SALEDATE"]).replace(tzinfo=UTC)

    assert abs(sale - datetime.now(UTC)) < timedelta(seconds=5)


def test_without_a_reachable_local_database_the_simulator_goes_on_with_the_options_given(conn):
    url = TEST_DATABASE_URL.rsplit("/", 1)[0] + "/rinnovo_no_such_database"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rinnovo"), "simulate", "renewal", "--license",
         "REMOTE0001", "--product", "AWDOC-TEAM-Y", "--dry-run"],
        env={**os.environ, "DATABASE_URL": url, **QUICK_OUTAGE},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "note: license REMOTE0001 not looked up in the local database (DatabaseUnavailable); "
        "using the options given"
    )
    assert "  IPN_PCODE[]=AWDOC-TEAM-Y" in lines


def test_without_url_the_simulator_posts_to_the_receiver_s_port_from_the_environment(
    live_url, conn
):
    port = live_url.rsplit(":", 1)[1]

    result = run("ipn", "--license", "SIMPORT001", PORT=port)

    assert result.exit_code == 0, result.output
    assert f"POST http://localhost:{port}/ipn -> HTTP 200" in result.output
    assert only_event(conn)["license_codes"] == ["SIMPORT001"]


def test_a_port_that_is_not_a_number_is_one_clear_error(conn):
    result = run("ipn", "--dry-run", PORT="http")
    assert result.exit_code == 1
    assert "PORT must be a TCP port number" in result.output
