"""The process benchmark's workers: a `dramatiq` command started and stopped, batches of
messages staged in Redis and released in one push, and waiting until they are done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import dramatiq
import redis

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "Worker process is ready for action."
POLL_SECONDS = 0.02
STALL_SECONDS = 20.0  # no progress for this long: stop waiting and report what is left


class Stalled(Exception):
    """Nothing moved for too long while waiting for the workers."""


@dataclass
class Workers:
    """A running `dramatiq` command and where its output goes."""

    process: subprocess.Popen[bytes]
    log_path: Path
    description: str

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the workers wrote."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Ask the workers to finish (SIGTERM), then kill their process group if they linger."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what it started
            self.process.wait(timeout=5)


def start_workers(
    module: str, queue: str, *, processes: int, threads: int, env: dict[str, str], log_dir: Path
) -> Workers:
    """Start `dramatiq module` on one queue and wait until every worker process is ready."""
    command = [
        sys.executable, "-m", "dramatiq", module,
        "--processes", str(processes), "--threads", str(threads), "--queues", queue,
    ]  # fmt: skip
    log_path = log_dir / f"{module}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    workers = Workers(process, log_path, " ".join(["dramatiq", *command[3:]]))
    deadline = time.monotonic() + 60
    while workers.log_path.read_text(errors="replace").count(READY_LINE) < processes:
        if process.poll() is not None or time.monotonic() > deadline:
            workers.stop()
            raise RuntimeError(f"workers did not start ({module}):\n{workers.log_tail()}")
        time.sleep(0.05)
    return workers


def unfinished(client: redis.Redis, namespace: str, queue: str) -> int:
    """Messages on a queue not yet acknowledged: waiting, prefetched or being worked on."""
    return int(client.hlen(f"{namespace}:{queue}.msgs"))


def wait_until(remaining: Callable[[], int], what: str) -> float:
    """Poll until `remaining()` is 0; the moment it was. Raises Stalled when nothing moves."""
    last, moved = -1, time.perf_counter()
    while True:
        left = remaining()
        now = time.perf_counter()
        if left == 0:
            return now
        if left != last:
            last, moved = left, now
        elif now - moved > STALL_SECONDS:
            raise Stalled(f"{left:,} {what} left, none finished in {STALL_SECONDS:.0f} s")
        time.sleep(POLL_SECONDS)


def warm_up(send: Callable[[int], object], drained: Callable[[], int], messages: int) -> None:
    """Give every worker thread something to do once (connections opened), and wait for it."""
    for number in range(messages):
        send(-1 - number)
    wait_until(drained, "warm-up messages")


def stage(
    client: redis.Redis, namespace: str, messages: Sequence[dramatiq.Message[Any]]
) -> list[str]:
    """Store the messages' bodies where the broker keeps them, not yet queued; their queue ids.

    The Redis broker enqueues a message by storing its body in the queue's `.msgs` hash and
    pushing its id on the queue's list. Doing the first part ahead of time and the second for the
    whole batch in one push hands the workers every message at once, so a pass times the workers,
    not how fast one client can enqueue (which `time_sending` measures on its own). No
    middleware of the service's broker acts on enqueueing, so nothing else is skipped.
    """
    ids = []
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            staged = message.copy(options={"redis_message_id": str(uuid4())})
            ids.append(staged.options["redis_message_id"])
            pipe.hset(f"{namespace}:{message.queue_name}.msgs", ids[-1], staged.encode())
        pipe.execute()
    return ids


def release(client: redis.Redis, namespace: str, queue: str, ids: Sequence[str]) -> None:
    """Queue every staged message in one push: the workers see the whole batch at once."""
    client.rpush(f"{namespace}:{queue}", *ids)
