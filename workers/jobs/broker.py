"""The Dramatiq broker: how it is built (by the runtime, never at import) and how it is sent to."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

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


# The actor that applies a stored event, and its queue: the receiver and the relay enqueue it by
# name, so they need not import the actors (and with them the rules, the policies, the catalog).
PROCESS_EVENT = "process_event"
EVENTS_QUEUE = "default"


def send_each(
    on: dramatiq.Broker, actor: dramatiq.Actor[Any, Any], ids: Iterable[int]
) -> list[int]:
    """Send one message per id to `actor`, on the broker `on` (the runtime's, which a test may
    build to refuse), until the broker fails; the ids it took."""
    return _send_until_failure(lambda item: on.enqueue(actor.message(item)), ids)


def send_by_name(
    on: dramatiq.Broker, actor_name: str, queue_name: str, ids: Iterable[int]
) -> list[int]:
    """Send one message per id to an actor known by name, as its `send` would; the ids taken."""

    def send(item: int) -> object:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue_name, actor_name=actor_name, args=(item,), kwargs={}, options={}
        )
        return on.enqueue(message)

    return _send_until_failure(send, ids)


def _send_until_failure(send: Callable[[int], object], ids: Iterable[int]) -> list[int]:
    """Send one message per id until the broker fails; the ids it took.

    Raises BrokerUnavailable when it took none; after a partial failure the caller leaves the
    rest for its relay.
    """
    sent: list[int] = []
    for item in ids:
        try:
            send(item)
        except redis.RedisError as exc:
            if not sent:
                raise BrokerUnavailable(f"broker unavailable: {type(exc).__name__}") from exc
            break
        sent.append(item)
    return sent


def backlog(actor: dramatiq.Actor[Any, Any]) -> int:
    """How many messages wait in the actor's queue, not yet taken by any worker."""
    return queue_length(actor.broker, actor.queue_name)


def queue_length(on: dramatiq.Broker, queue_name: str) -> int:
    """How many messages wait in a queue of a Redis broker, not yet taken by any worker."""
    assert isinstance(on, RedisBroker)
    try:
        return int(on.client.llen(f"{on.namespace}:{queue_name}"))
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"broker unavailable: {type(exc).__name__}") from exc
