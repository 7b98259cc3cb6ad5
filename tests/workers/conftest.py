"""Fixtures of the workers' tests: the provider's API, faked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import empty
from tests.fake_provider import FakeProvider

RECONCILE_TABLES = ("reconcile_differences", "reconcile_runs")


@pytest.fixture
def fake(conn, monkeypatch) -> Iterator[FakeProvider]:
    """The provider's API for the test's account, which the CLI is configured to use."""
    empty(conn, RECONCILE_TABLES)
    provider = FakeProvider().start()
    monkeypatch.setenv("TWOCHECKOUT_MERCHANT_CODE", provider.merchant_code)
    monkeypatch.setenv("TWOCHECKOUT_API_URL", provider.url)
    yield provider
    provider.stop()
    empty(conn, RECONCILE_TABLES)
