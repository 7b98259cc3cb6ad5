"""The Dramatiq broker: built here once and set before any actor module is imported."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from workers.config import Settings
from workers.errors import BrokerUnavailable
from workers.logs import WorkerLogging


def build_broker(redis_url: str, namespace: str = "rinnovo") -> RedisBroker:
    """A Redis broker with short timeouts: an outage fails fast instead of hanging a request."""
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=3,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    broker = RedisBroker(client=client, namespace=namespace)
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(WorkerLogging())
    if os.environ.get("dramatiq_prom_port"):  # noqa: SIM112  # the name dramatiq itself reads
        # Dramatiq's own worker metrics, on that port, when the operator asks for them. Only the
        # dramatiq CLI boots this middleware properly, hence opt-in rather than always on.
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus())
    return broker


def send_each(actor: dramatiq.Actor[Any, Any], ids: Iterable[int]) -> list[int]:
    """Send one message per id until the broker fails; the ids it took.

    Raises BrokerUnavailable when it took none; after a partial failure the caller leaves the
    rest for its relay.
    """
    sent: list[int] = []
    for item in ids:
        try:
            actor.send(item)
        except redis.RedisError as exc:
            if not sent:
                raise BrokerUnavailable(f"broker unavailable: {type(exc).__name__}") from exc
            break
        sent.append(item)
    return sent


def backlog(actor: dramatiq.Actor[Any, Any]) -> int:
    """How many messages wait in the actor's queue, not yet taken by any worker."""
    broker = actor.broker
    assert isinstance(broker, RedisBroker)
    try:
        return int(broker.client.llen(f"{broker.namespace}:{actor.queue_name}"))
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"broker unavailable: {type(exc).__name__}") from exc


_settings = Settings.from_env()
broker = build_broker(_settings.redis_url, _settings.redis_namespace)
dramatiq.set_broker(broker)
