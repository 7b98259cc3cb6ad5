"""Fixtures of the workers' tests: the provider's API, faked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_provider import FakeProvider


@pytest.fixture
def fake(conn, monkeypatch) -> Iterator[FakeProvider]:
    """The provider's API for the test's account, which the CLI is configured to use."""
    conn.execute("TRUNCATE reconcile_runs, reconcile_differences RESTART IDENTITY")
    provider = FakeProvider().start()
    monkeypatch.setenv("TWOCHECKOUT_MERCHANT_CODE", provider.merchant_code)
    monkeypatch.setenv("TWOCHECKOUT_API_URL", provider.url)
    yield provider
    provider.stop()
    conn.execute("TRUNCATE reconcile_runs, reconcile_differences RESTART IDENTITY")
