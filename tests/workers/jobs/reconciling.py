"""Helpers of reconciliation's tests: sweeping by the CLI, and reading what a sweep left."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from tests.support import post_signed
from webhooks.app import create_app
from workers.cli import cli
from workers.ops import samples


def today() -> date:
    """The CLI's today, read when used (a run may cross midnight)."""
    return datetime.now(UTC).date()


def since() -> str:
    return (today() - timedelta(days=30)).isoformat()


TABLES = ("events", "subscriptions", "subscription_history", "orders", "emails", "customers")


def buy(client, license_code: str, refno: str, expires: str) -> None:
    """A new annual subscription, received as a real IPN and applied by a real worker."""
    item = samples.SampleItem(
        code="AWDOC-TEAM-Y",
        pid="",
        name="AWDoc TEAM (annual)",
        license_ref=license_code,
        price="300.00",
        license_exp=f"{expires} 00:00:00",
    )
    sale = f"{today() - timedelta(days=3)} 09:00:00"
    post_signed(client, "/ipn", samples.ipn_pairs(items=(item,), refno=refno, sale_date=sale))


def reconcile(*args: str) -> Result:
    return CliRunner().invoke(cli, ["reconcile", *args])


def snapshot(conn) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables a sweep must not change."""
    return {
        table: conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))
        ).fetchall()
        for table in TABLES
    }


def runs(conn) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM reconcile_runs ORDER BY id").fetchall()


def stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def sub_row(conn, license_code: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT * FROM subscriptions WHERE license_code = %s", (license_code,)
    ).fetchone()


def history(conn, license_code: str) -> list[dict[str, Any]]:
    return conn.execute(
        """
        SELECT h.change, h.note, e.kind FROM subscription_history h
        JOIN subscriptions s ON s.id = h.subscription_id LEFT JOIN events e ON e.id = h.event_id
        WHERE s.license_code = %s ORDER BY h.id
        """,
        (license_code,),
    ).fetchall()


def emails_of(conn, license_code: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT m.kind FROM emails m JOIN subscriptions s ON s.id = m.subscription_id
        WHERE s.license_code = %s ORDER BY m.id
        """,
        (license_code,),
    ).fetchall()
    return [row["kind"] for row in rows]


def metrics(conn) -> dict[str, float]:
    text = create_app({"TESTING": "1"}).test_client().get("/metrics").text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("rinnovo_reconcile", "rinnovo_expected"))
    }
