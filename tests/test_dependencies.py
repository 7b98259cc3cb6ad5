"""The lock: pyproject's ranges, the installed versions, and the dramatiq internals replay uses."""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-dev.lock"
RELOCK = "re-lock with the one command in README.md (Dependencies) and run scripts/setup"


def locked() -> dict[str, str]:
    """Each package the lock pins, by canonical name, with its version."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement and not requirement.startswith("-"):
            name, version = requirement.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def declared() -> list[Requirement]:
    """The project's own and its dev extra's requirements, as pyproject.toml states them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = project["optional-dependencies"]["dev"]
    return [Requirement(r) for r in project["dependencies"] + dev]


def test_every_dependency_in_pyproject_is_pinned_in_the_lock_within_its_range() -> None:
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is in pyproject.toml but not in the lock: {RELOCK}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {name}=={pins[name]}, outside pyproject's {requirement}: {RELOCK}"
        )


def test_every_package_the_lock_pins_is_installed_at_that_version() -> None:
    wrong = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"locked {version}, installed {installed}"
    assert not wrong, f"this environment is not the locked one ({wrong}): run scripts/setup"


@pytest.fixture
def probe_broker() -> Iterator[RedisBroker]:
    """A RedisBroker of dramatiq's own on the tests' Redis, in a namespace removed afterwards."""
    broker = RedisBroker(url=os.environ["REDIS_URL"], namespace=f"rinnovo-deps-{os.getpid()}")
    yield broker
    keys = list(broker.client.scan_iter(match=f"{broker.namespace}*"))
    if keys:
        broker.client.delete(*keys)
    broker.client.close()


def test_the_redis_broker_enqueues_through_the_dispatch_script_that_replay_binds_to_a_pipeline(
    probe_broker: RedisBroker,
) -> None:
    # `rinnovo replay` (_enqueue_many in workers/ops/replay.py) copies the broker, swaps
    # scripts["dispatch"] for the same Lua script registered on a Redis pipeline, and calls
    # enqueue: messages must reach Redis only when the pipeline runs.
    check = (
        "replay's batching relies on dramatiq's private RedisBroker.scripts['dispatch'] (a redis-py"
        " Script with a .script source, called by enqueue): read the new dramatiq's"
        " brokers/redis.py and changelog, and change _enqueue_many in workers/ops/replay.py (its"
        " benchmark is benchmarks/replay.py) before locking this version"
    )
    dispatch = probe_broker.scripts.get("dispatch")
    assert dispatch is not None, f"RedisBroker has no scripts['dispatch']; {check}"
    assert isinstance(getattr(dispatch, "script", None), str | bytes), check

    pipe = probe_broker.client.pipeline(transaction=False)
    batched = copy.copy(probe_broker)
    batched.scripts = {**probe_broker.scripts, "dispatch": pipe.register_script(dispatch.script)}
    message = Message(queue_name="default", actor_name="probe", args=(1,), kwargs={}, options={})
    batched.enqueue(message)
    waiting = f"{probe_broker.namespace}:default.msgs"
    assert probe_broker.client.hlen(waiting) == 0, f"enqueue sent before the pipeline ran; {check}"
    pipe.execute()
    assert probe_broker.client.hlen(waiting) == 1, f"the pipeline sent no message; {check}"
