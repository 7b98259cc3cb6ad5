"""Fixtures of the jobs' tests: what the provider holds when a sweep runs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.fake_provider import FakeProvider, order, subscription
from tests.support import TcpProxy, drain, host_port, runtime_through
from tests.workers.jobs.reconciling import buy, stamp, today


@pytest.fixture
def redis_down(proxy_factory) -> Iterator[TcpProxy]:
    """The runtime's broker talks to Redis through a proxy, cut: Redis is down for sending."""
    proxy = proxy_factory(*host_port(TEST_REDIS_URL))
    proxied = runtime_through(proxy).broker
    proxy.cut()
    yield proxy
    proxied.client.close()
    proxied.client.connection_pool.disconnect()


@pytest.fixture
def shop(client, conn, fake) -> FakeProvider:
    """Three subscriptions Rinnovo holds; the provider holds them as they are, renewed, disabled,
    plus one Rinnovo never heard of, an order it has and an order it never received."""
    for license_code, refno in (("SAME000001", "100000001"), ("RENEW00001", "100000002")):
        buy(client, license_code, refno, "2027-01-10")
    buy(client, "OFF0000001", "100000003", "2027-01-10")
    drain()
    modified = today() - timedelta(days=2)
    fake.add_subscription(subscription("SAME000001", recurring=False), modified)
    fake.add_subscription(
        subscription("RENEW00001", expires="2028-01-10", recurring=True), modified
    )
    fake.add_subscription(subscription("OFF0000001", recurring=False, enabled=False), modified)
    fake.add_subscription(subscription("NEW0000001", email="nuovo@example.com"), modified)
    fake.add_order(order("100000001", ordered=f"{modified} 09:00:00", references=("SAME000001",)))
    fake.add_order(order("100000009", ordered=f"{modified} 10:00:00", references=("NEW0000001",)))
    return fake


@pytest.fixture
def missed(client, conn, fake) -> FakeProvider:
    """While Rinnovo was down, the provider renewed one subscription, disabled another and sold
    a third Rinnovo never heard of (an hour ago)."""
    for license_code, refno in (("RENEW00001", "100000002"), ("OFF0000001", "100000003")):
        buy(client, license_code, refno, "2027-01-10")
    drain()
    fake.add_subscription(subscription("RENEW00001", expires="2028-01-10"), today())
    fake.add_subscription(subscription("OFF0000001", recurring=False, enabled=False), today())
    fake.add_subscription(subscription("NEW0000001", email="nuovo@example.com"), today())
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    fake.add_order(
        order("100000009", ordered=stamp(an_hour_ago), references=("NEW0000001",),
              email="nuovo@example.com")
    )  # fmt: skip
    return fake
