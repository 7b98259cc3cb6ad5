"""A subscription's statuses are spelled in one place, and the schema allows exactly those."""

from __future__ import annotations

import json
import re

from tests.test_layers import ROOT
from workers.billing.statuses import LIVE, STATUSES, Status


def test_the_schema_checks_exactly_the_statuses_of_the_enum() -> None:
    schema = (ROOT / "schema.sql").read_text()
    found = re.search(r"CHECK \(status IN \(('pending', 'active'[^)]*)\)\)", schema)
    assert found is not None
    assert tuple(re.findall(r"'([a-z_]+)'", found.group(1))) == STATUSES


def test_a_status_is_its_string_in_json_and_in_text() -> None:
    assert json.dumps({"status": Status.PAST_DUE}) == '{"status": "past_due"}'
    assert f"{Status.ACTIVE}" == "active" and Status("canceled") is Status.CANCELED
    assert LIVE == ("active", "past_due")
