"""The Dramatiq broker: built here once and set before any actor module is imported."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from workers.config import Settings

NAMESPACE = "rinnovo"


def build_broker(redis_url: str) -> RedisBroker:
    """A Redis broker with short timeouts: an outage fails fast instead of hanging a request."""
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=3,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    broker = RedisBroker(client=client, namespace=NAMESPACE)
    broker.add_middleware(CurrentMessage())
    return broker


broker = build_broker(Settings.from_env().redis_url)
dramatiq.set_broker(broker)
