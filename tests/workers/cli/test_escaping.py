"""Values from notifications reach the operator's terminal with control characters made visible."""

from __future__ import annotations

from click.testing import CliRunner

from tests.support import drain, post_signed
from workers.cli import cli
from workers.ops import samples
from workers.terminal import visible

HOSTILE = "Mario\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\nFAKE LINE"
LICENSE = "LIC\x1b[2JESC01"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\nFAKE LINE")


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_visible_escapes_c0_c1_del_separators_bidi_and_backslashes_like_repr():
    text = "a\x00b\x1b[2J\x7f\x85\x9b\u2028\u2029\u202e\t\n\\x1b ok è €"
    assert visible(text) == (
        "a\\x00b\\x1b[2J\\x7f\\x85\\x9b\\u2028\\u2029\\u202e\\t\\n\\\\x1b ok è €"
    )
    assert visible(42) == "42"


def test_events_and_subscriptions_print_customer_fields_with_escapes_visible(client, conn):
    pairs = samples.ipn_pairs(
        first_name=HOSTILE,
        extra={"COMPANY": HOSTILE, "IPN_LICENSE_REF[]": LICENSE},
    )
    event_id = post_signed(client, "/ipn", pairs)
    drain()
    outputs = {
        "events list": _run("events", "list"),
        "events show": _run("events", "show", str(event_id), "--raw"),
        "subscriptions show": _run("subscriptions", "show", LICENSE),
    }
    for command, output in outputs.items():
        for raw in RAW:
            assert raw not in output, (command, raw, output)
    assert "LIC\\x1b[2JESC01" in outputs["events list"]
    assert (
        "Mario\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202eevil\\nFAKE LINE" in outputs["events show"]
    )
    assert "Mario\\x1b]0;pwned\\x07" in outputs["subscriptions show"]
