"""`rinnovo events list|show|replay` against real PostgreSQL, Redis and workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from tests.support import drain, post_signed
from tests.workers.ops.test_replay import (  # noqa: F401
    add_monthly_product,
    catalog_file_fixture,
    ipn,
    mail_dir_fixture,
    queued_messages,
    row,
    signed,
    snapshot,
    store_event,
)
from workers.cli import cli
from workers.ops import samples


def rinnovo(*args: str) -> Result:
    return CliRunner().invoke(cli, ["events", *args])


def console(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `rinnovo` console script, as a person would, in its own process."""
    script = Path(sys.executable).with_name("rinnovo")
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
    )


def lcn_body(license_code: str) -> bytes:
    pairs = samples.lcn_pairs(
        license_code=license_code, expiration_date="2027-01-10", date_updated="2026-01-11 10:00:00"
    )
    return signed(pairs)


def test_events_list_prints_an_aligned_table_newest_first_with_the_error_cut_short(conn):
    first = store_event(conn, signed(ipn("LIC-T1", refno="R200")), dedupe_key="t1")
    second = store_event(conn, signed(ipn("LIC-T2", refno="R201")), dedupe_key="t2")
    long_error = "PermanentEventError: unknown product AWDOC-TEAM-M: " + "x" * 200
    conn.execute(
        "UPDATE events SET status = 'failed', attempts = 3, last_error = %s WHERE id = %s",
        (long_error, second),
    )

    result = rinnovo("list")

    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split() == [
        "ID", "RECEIVED", "(UTC)", "KIND", "STATUS", "SUMMARY", "LICENSE", "ATTEMPTS", "ERROR",
    ]  # fmt: skip
    assert [int(line.split()[0]) for line in lines] == [second, first]
    for line in lines:  # every value starts under its header, attempts end under theirs
        for column in ("KIND", "STATUS", "SUMMARY", "LICENSE"):
            start = header.index(column)
            assert line[start - 2 : start] == "  " and line[start] != " ", (column, line)
        end = header.index("ATTEMPTS") + len("ATTEMPTS")
        assert line[end - 1].isdigit() and line[end : end + 1] in ("", " ")
    newest = lines[0]
    assert newest.index("PermanentEventError") == header.index("ERROR")
    assert re.search(
        r"\bipn\s+failed\s+COMPLETE REGULAR\s+LIC-T2\s+3\s+PermanentEventError", newest
    )
    assert newest.endswith("…") and len(newest) < len(header) + 70
    assert "x" * 100 not in result.output


def test_events_list_shows_the_dead_letters_and_filters_by_kind_license_and_time(conn):
    ipn_id = store_event(conn, signed(ipn("LIC-F1", refno="R202")), dedupe_key="f1")
    lcn_id = store_event(
        conn, lcn_body("LIC-F2"), kind="lcn", dedupe_key="f2", fields={}, license_codes=["LIC-F2"]
    )
    conn.execute(
        "UPDATE events SET status = 'failed', last_error = 'boom' WHERE id = %s", (ipn_id,)
    )
    conn.execute("UPDATE events SET received_at = '2026-01-05 10:00Z' WHERE id = %s", (lcn_id,))

    def ids(*args: str) -> list[int]:
        result = rinnovo("list", *args)
        assert result.exit_code == 0, result.output
        return [int(line.split()[0]) for line in result.output.splitlines()[1:] if line[0] != "("]

    assert ids("--status", "failed") == [ipn_id]
    assert ids("--kind", "lcn") == [lcn_id]
    assert ids("--license", "LIC-F2") == [lcn_id]
    assert ids("--until", "2026-01-05") == [lcn_id]
    assert ids("--since", "2026-01-06") == [ipn_id]
    assert ids("--since", "2026-01-05T09:00:00Z", "--until", "2026-01-05T11:00:00Z") == [lcn_id]
    limited = rinnovo("list", "--limit", "1")
    assert limited.output.splitlines()[-1].startswith("(more events")
    assert rinnovo("list", "--status", "ignored").output == "no events match\n"


def test_a_filter_the_cli_cannot_understand_is_a_usage_error(conn):
    bad_date = rinnovo("list", "--since", "yesterday")
    assert bad_date.exit_code == 2
    assert "'yesterday' is not a date" in bad_date.output
    bad_status = rinnovo("list", "--status", "done")
    assert bad_status.exit_code == 2
    assert "'done' is not one of" in bad_status.output
    backwards = rinnovo("list", "--since", "2026-02-01", "--until", "2026-01-01")
    assert backwards.exit_code == 2
    assert "since must be before until" in backwards.output


def test_events_show_prints_what_the_event_said_and_what_it_caused(client, conn, mail_dir):
    event_id = post_signed(client, "/ipn", ipn("LIC-SHOW", refno="R203"))
    drain()

    result = rinnovo("show", str(event_id))

    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"Event {event_id}  ipn  COMPLETE REGULAR\n")
    assert re.search(r"status\s+processed", text)
    assert "\nVerification\n  signature verified: sha256, configured key #1\n" in text
    assert "\nHeaders\n" in text and "User-Agent: Werkzeug" in text
    assert re.search(r"\n  REFNO\s+R203\n", text)
    assert re.search(r"\n  IPN_LICENSE_REF\[\]\s+LIC-SHOW\n", text)
    assert "blank field(s) not shown" in text
    assert "\nState changes (1)\n" in text
    assert re.search(r'LIC-SHOW created: .*status "active".*\(order R203 complete\)', text)
    assert re.search(r"\nEmails \(1\)\n  #\d+  order_confirmation to mario.rossi@example.com", text)
    assert "Last error" not in text


def test_events_show_prints_the_last_error_with_its_traceback(client, conn, catalog_file):
    event_id = post_signed(client, "/ipn", ipn("LIC-BROKEN", refno="R204"))
    drain()

    result = rinnovo("show", str(event_id))

    assert result.exit_code == 0, result.output
    assert re.search(r"status\s+failed", result.output)
    section = result.output.split("\nLast error\n", 1)[1]
    assert section.startswith("  PermanentEventError: unknown product AWDOC-TEAM-M")
    assert "  Traceback (most recent call last):" in section
    assert "State changes: none" in result.output and "Emails: none" in result.output


def test_events_show_of_an_unknown_id_exits_non_zero_with_a_clear_message(conn):
    result = rinnovo("show", "42")
    assert result.exit_code == 1
    assert "no event with id 42" in result.output
    assert rinnovo("show", "forty-two").exit_code == 2


def test_events_replay_by_id_hands_the_events_to_the_workers(conn):
    first = store_event(conn, signed(ipn("LIC-R1", refno="R205")), dedupe_key="r1")
    second = store_event(conn, signed(ipn("LIC-R2", refno="R206")), dedupe_key="r2")

    result = rinnovo("replay", str(second), str(first))

    assert result.exit_code == 0, result.output
    assert "handed 2 event(s) to the workers" in result.stderr  # progress, not the result
    assert result.stdout == (
        "replayed 2 event(s); today's parser changed the stored reading of 0\n"
    )
    assert [(m["args"], m["kwargs"]) for m in queued_messages()] == [
        ([first], {"emails": True}),
        ([second], {"emails": True}),
    ]


def test_events_replay_failed_without_emails_takes_only_the_dead_letters(conn):
    failed = store_event(conn, signed(ipn("LIC-R3", refno="R207")), dedupe_key="r3")
    store_event(conn, signed(ipn("LIC-R4", refno="R208")), dedupe_key="r4")
    conn.execute("UPDATE events SET status = 'failed' WHERE id = %s", (failed,))

    result = rinnovo("replay", "--failed", "--no-emails")

    assert result.exit_code == 0, result.output
    assert "replayed 1 event(s) without emails" in result.output
    assert [(m["args"], m["kwargs"]) for m in queued_messages()] == [([failed], {"emails": False})]
    assert row(conn, failed)["status"] == "enqueued"


def test_events_replay_by_filter_with_nothing_matching_replays_nothing(conn):
    store_event(conn, signed(ipn("LIC-R5", refno="R209")))
    result = rinnovo("replay", "--license", "LIC-NOBODY")
    assert result.exit_code == 0
    assert result.output == "no events match; nothing replayed\n"
    assert queued_messages() == []


def test_events_replay_dry_run_prints_each_preview_and_changes_nothing(
    client, conn, catalog_file, mail_dir
):
    fixed = post_signed(client, "/ipn", ipn("LIC-P1", refno="R210"))
    still = post_signed(client, "/ipn", ipn("LIC-P2", refno="R211", code="AWDOC-NOPE"))
    drain()
    add_monthly_product(catalog_file)
    before = snapshot(conn), row(conn, fixed), row(conn, still)

    result = rinnovo("replay", "--dry-run", "--failed")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"event {fixed}: would be processed: ")
    assert any(
        line.startswith("  LIC-P1 created: ") and 'status "active"' in line for line in lines
    )
    assert "  email order_confirmation to mario.rossi@example.com (en) for order/R210" in lines
    still_fails = f"event {still}: would fail: PermanentEventError: unknown product AWDOC-NOPE"
    assert still_fails in result.output
    assert lines[-1] == "dry run: 2 event(s) previewed, nothing was changed"
    assert (snapshot(conn), row(conn, fixed), row(conn, still)) == before
    assert queued_messages() == []


def test_events_replay_needs_ids_or_a_filter_but_not_both(conn):
    nothing = rinnovo("replay")
    assert nothing.exit_code == 2
    assert "say which events" in nothing.output
    both = rinnovo("replay", "1", "--failed")
    assert both.exit_code == 2
    assert "not both" in both.output


def test_events_replay_of_an_unknown_id_exits_non_zero_and_replays_nothing(conn):
    known = store_event(conn, signed(ipn("LIC-R6", refno="R212")))
    result = rinnovo("replay", str(known), "777")
    assert result.exit_code == 1
    assert "no event with id 777" in result.output
    assert queued_messages() == []


def test_events_replay_prints_its_result_on_stdout_and_no_log_line_at_default_verbosity(conn):
    event_id = store_event(conn, signed(ipn("LIC-R7", refno="R213")))

    quiet = console("events", "replay", str(event_id))
    verbose = console("-v", "events", "replay", str(event_id))

    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "replayed 1 event(s); today's parser changed the stored reading of 0\n"
    assert quiet.stderr.startswith("handed 1 event(s) to the workers")
    assert "{" not in quiet.stderr  # no JSON log line
    assert verbose.stdout == quiet.stdout
    logged = [line for line in verbose.stderr.splitlines() if line.startswith("{")]
    assert any('"level": "info"' in line and "replay enqueued 1" in line for line in logged)


def test_reminders_run_prints_only_its_counts_at_default_verbosity(conn):
    result = console("reminders", "run", "--as-of", "2026-01-01")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "reminder scan for 2026-01-01:"
    assert all(not line.startswith("{") for line in result.stdout.splitlines())
    assert result.stderr == ""


def test_rinnovo_reads_dotenv_in_the_current_directory_and_the_environment_wins(
    conn, tmp_path, monkeypatch
):
    (tmp_path / ".env").write_text(
        "MERCHANT_NAME=Bottega Nova\nSUPPORT_EMAIL=from-dotenv@bottega.example\n",
        encoding="utf-8",
    )
    monkeypatch.delenv("MERCHANT_NAME")
    monkeypatch.setenv("SUPPORT_EMAIL", "from-environment@bottega.example")

    result = console("emails", "preview", "expiry_notice", "--locale", "en", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "The Bottega Nova team" in result.stdout
    assert "from-environment@bottega.example" in result.stdout
    assert "from-dotenv" not in result.stdout


def test_an_error_is_one_line_on_stderr_and_exit_status_1_not_a_traceback(conn, tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text("[[product]\n", encoding="utf-8")
    result = console("simulate", "ipn", "--dry-run", CATALOG=str(catalog))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: {catalog}, line 1, column 10: invalid TOML: Expected ']]' at the end of an "
        "array declaration"
    ]


def test_a_replay_keeps_the_first_attempt_and_events_show_lists_every_attempt(
    client, conn, catalog_file, mail_dir
):
    event_id = post_signed(client, "/ipn", ipn("LIC-H1", refno="R300"))
    drain()  # fails for good: the product is not in the catalog yet
    first = row(conn, event_id)
    add_monthly_product(catalog_file)

    assert rinnovo("replay", str(event_id)).exit_code == 0
    drain()

    attempts = conn.execute(
        "SELECT * FROM event_attempts WHERE event_id = %s ORDER BY id", (event_id,)
    ).fetchall()
    assert [(a["requested_by"], a["status"]) for a in attempts] == [
        ("delivery", "failed"),
        ("replay-cli", "processed"),
    ]
    assert "unknown product AWDOC-TEAM-M" in attempts[0]["outcome"]
    assert attempts[0]["at"] <= first["processed_at"] < attempts[1]["at"]
    assert attempts[0]["enqueued_at"] == first["enqueued_at"] < attempts[1]["enqueued_at"]

    shown = rinnovo("show", str(event_id)).output
    section = shown[shown.index("Attempts (2)") :].splitlines()[1:3]
    assert "failed" in section[0] and "provider delivery: PermanentEventError" in section[0]
    assert "processed" in section[1] and "replay (CLI): LIC-H1: active until" in section[1]
