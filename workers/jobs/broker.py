"""The Dramatiq broker: how it is built (by the runtime, never at import) and how it is sent to."""

from __future__ import annotations

import copy
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
        return on.enqueue(_message(actor_name, queue_name, item))

    return _send_until_failure(send, ids)


def send_batch_by_name(
    on: RedisBroker, actor_name: str, queue_name: str, ids: Iterable[int]
) -> list[int]:
    """Send one message per id to an actor known by name in one Redis round trip; every id, or
    BrokerUnavailable (then none, or some, were taken: a copy sent twice is a no-op).

    Each message goes through dramatiq's own enqueue (its id, middleware, encoding) on a copy of
    the broker whose dispatch script is bound to a pipeline, as `rinnovo replay` does; only the
    sending is batched. The pipeline skips its check that Redis knows the script (a round trip
    of its own) unless Redis answers that it does not (it restarted empty): then it loads it.
    """
    ids = list(ids)
    try:
        for check_script in (False, True):
            pipe = on.client.pipeline(transaction=False)
            script = copy.copy(on.scripts["dispatch"])  # the same script and digest, on the pipe
            script.registered_client = pipe
            batched = copy.copy(on)
            batched.scripts = {**on.scripts, "dispatch": script}
            for item in ids:  # the first enqueue of a process asks Redis for its Lua stack size
                batched.enqueue(_message(actor_name, queue_name, item))
            if not check_script:
                pipe.scripts.clear()
            try:
                pipe.execute()
                return ids
            except redis.exceptions.NoScriptError:
                continue
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"broker unavailable: {type(exc).__name__}") from exc
    raise BrokerUnavailable("broker unavailable: the dispatch script could not be loaded")


def _message(actor_name: str, queue_name: str, item: int) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=(item,), kwargs={}, options={}
    )


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
