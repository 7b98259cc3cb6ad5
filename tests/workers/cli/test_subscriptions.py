"""`rinnovo quote` and `rinnovo subscriptions show` on stored subscriptions."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.support import drain, post_signed
from workers.cli import cli
from workers.ops import samples


def _buy(client, license_code: str, code: str, price: str, at: str, exp: str, currency: str):
    item = samples.SampleItem(
        code=code, pid="", name=code, license_ref=license_code, price=price, license_exp=exp
    )
    post_signed(
        client,
        "/ipn",
        samples.ipn_pairs(items=(item,), refno="Q1", sale_date=at, currency=currency),
    )
    drain()


def test_quote_upgrade_prints_the_worked_example_of_the_restart_policy(client, conn):
    _buy(
        client,
        "LIC-Q1",
        "AWDOC-TEAM-M",
        "30.00",
        "2026-01-01 00:00:00",
        "2026-02-01 00:00:00",
        "EUR",
    )
    args = [
        "quote",
        "upgrade",
        "LIC-Q1",
        "--to",
        "BUSINESS",
        "--cycle",
        "annual",
        "--at",
        "2026-01-16T12:00:00Z",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "credit:       15.00 EUR" in result.output
    assert "amount due:   585.00 EUR" in result.output
    assert "2026-01-16T12:00:00Z -> 2027-01-16T12:00:00Z" in result.output


def test_quote_upgrade_explains_a_refusal_and_exits_non_zero(client, conn):
    _buy(
        client,
        "LIC-Q2",
        "GD-WORDS-NET-SB",
        "1000.00",
        "2026-01-10 00:00:00",
        "2027-01-10 00:00:00",
        "USD",
    )
    result = CliRunner().invoke(
        cli,
        ["quote", "upgrade", "LIC-Q2", "--to", "GD-TOTAL-NET-SB", "--at", "2027-02-01T00:00:00Z"],
    )
    assert result.exit_code == 3  # refused: neither an error (1) nor a usage error (2)
    assert "refused:" in result.stdout and "expired" in result.stdout


def test_quote_renew_adds_the_period_to_the_natural_expiry(client, conn):
    _buy(
        client,
        "LIC-Q3",
        "AWDOC-TEAM-Y",
        "300.00",
        "2025-06-30 00:00:00",
        "2026-06-30 00:00:00",
        "EUR",
    )
    result = CliRunner().invoke(cli, ["quote", "renew", "LIC-Q3", "--at", "2026-05-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "-> 2027-06-30T00:00:00Z" in result.output
    assert "amount due:   300.00 EUR" in result.output


def test_subscriptions_show_prints_state_customer_and_history_and_json(client, conn):
    _buy(
        client,
        "LIC-Q4",
        "AWDOC-TEAM-M",
        "30.00",
        "2026-01-01 00:00:00",
        "2026-02-01 00:00:00",
        "EUR",
    )
    text = CliRunner().invoke(cli, ["subscriptions", "show", "LIC-Q4"])
    assert text.exit_code == 0, text.output
    assert "status:     active" in text.output
    assert "customer@example.com" in text.output
    assert "created" in text.output
    as_json = CliRunner().invoke(cli, ["subscriptions", "show", "LIC-Q4", "--json"])
    described = json.loads(as_json.output)
    assert described["license_code"] == "LIC-Q4"
    assert described["expires_at"] == "2026-02-01T00:00:00Z"
    assert described["history"][0]["change"] == "created"


def test_an_unknown_license_is_a_clear_error(conn):
    result = CliRunner().invoke(cli, ["subscriptions", "show", "NOPE"])
    assert result.exit_code == 1
    assert "no subscription with license code NOPE" in result.output


def test_quote_upgrade_after_expiry_is_refused_with_the_reason(client, conn):
    _buy(
        client,
        "LIC-Q9",
        "AWDOC-TEAM-M",
        "30.00",
        "2026-01-01 00:00:00",
        "2026-02-01 00:00:00",
        "EUR",
    )
    args = ["quote", "upgrade", "LIC-Q9", "--to", "BUSINESS", "--at", "2026-02-03T00:00:00Z"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert (
        "refused: the subscription expired on 2026-02-01: only an active subscription can be "
        "upgraded; renew it first"
    ) in result.output


def test_quote_upgrade_after_a_renewal_credits_the_original_maintenance_purchase(client, conn):
    _buy(
        client,
        "LIC-Q10",
        "GD-WORDS-JAVA-SB",
        "920.00",
        "2025-01-10 00:00:00",
        "2026-01-10 00:00:00",
        "EUR",
    )
    renewal = samples.SampleItem(
        code="GD-WORDS-JAVA-SB", pid="", name="GD", license_ref="LIC-Q10", price="552.00",
        license_type="RENEWAL", license_exp="2027-02-01 00:00:00",
    )  # fmt: skip
    post_signed(
        client,
        "/ipn",
        samples.ipn_pairs(
            items=(renewal,), refno="Q10R", sale_date="2026-02-01 00:00:00", currency="EUR"
        ),
    )
    drain()
    args = ["quote", "upgrade", "LIC-Q10", "--to", "GD-TOTAL-JAVA-SB", "--at", "2026-07-01"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "credit:       920.00 EUR" in result.output
    assert "amount due:   1840.00 EUR" in result.output


def test_a_malformed_catalog_is_one_line_naming_the_file_and_line_and_exit_status_1(
    conn, tmp_path, monkeypatch
):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[product]]\ncode = "X"\nprices = {EUR = \n', encoding="utf-8")
    monkeypatch.setenv("CATALOG", str(catalog))

    result = CliRunner().invoke(cli, ["simulate", "ipn", "--dry-run"])

    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {catalog}, line 3") and "invalid TOML" in line


def test_a_missing_catalog_is_one_line_naming_the_file(conn, tmp_path, monkeypatch):
    monkeypatch.setenv("CATALOG", str(tmp_path / "nowhere.toml"))
    result = CliRunner().invoke(cli, ["simulate", "ipn", "--dry-run"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {tmp_path / 'nowhere.toml'}: cannot read the catalog: No such file or directory"
    ]
