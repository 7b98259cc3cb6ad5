"""Recording deliveries: the requests a process serves at once share one INSERT and one send.

Under load, the gevent worker has several deliveries in flight per process, each waiting on
PostgreSQL and then on Redis; a round trip costs the process more CPU (the socket calls, the
switches to gevent's hub and back, psycopg's and redis-py's own work) than the row it carries.
So a delivery ready to be stored while another one's round trip is under way waits for it to end,
then every delivery that waited is stored by one statement (one commit) and sent in one Redis
pipeline, by one of them (group commit). Each answer still follows its own durable commit and
its enqueue: nothing changes for one delivery alone, which goes at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import gevent
import gevent.monkey

from workers.errors import BrokerUnavailable, DatabaseUnavailable, ValueNotStorable
from workers.jobs import dispatch
from workers.store import db, events

log = logging.getLogger("rinnovo.receiver")

T = TypeVar("T")
R = TypeVar("R")
MAX_BATCH = 64
# The longest a run's first request waits for the others in flight (`_let_others_come`).
GATHER_SECONDS = 0.002


class _Slot(Generic[T, R]):
    """One caller's item, and its outcome once its batch ran."""

    __slots__ = ("done", "item", "outcome", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.outcome: R | BaseException | None = None
        self.done = False
        self.wake = threading.Lock()
        self.wake.acquire()  # released when its batch ran, or when it is to run the next one

    def result(self) -> R:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    """Runs `work` once for the items of every caller that came while the last run was going.

    The first caller runs `work` on its own item at once; callers that come meanwhile wait, and
    when the run ends the first of them runs every waiting item (at most `limit`, no two with
    the same `key`) in one call. `work` returns one outcome per item, in order: a value, or an
    exception that caller raises. An exception `work` raises is raised by every caller of the run.
    """

    def __init__(
        self,
        work: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        key: Callable[[T], Hashable],
        limit: int = MAX_BATCH,
    ) -> None:
        self._work = work
        self._key = key
        self._limit = limit
        self._lock = threading.Lock()
        self._waiting: list[_Slot[T, R]] = []
        self._running = False

    def submit(self, item: T) -> R:
        """`item`'s outcome, once a run took it."""
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            lead = not self._running
            self._running = True
        if lead:
            _let_others_come()
        else:
            slot.wake.acquire()  # its run ended, or the previous one did and this slot runs next
        if not slot.done:
            self._run()
        return slot.result()

    def _run(self) -> None:
        with self._lock:
            batch: list[_Slot[T, R]] = []
            keys: set[Hashable] = set()
            later: list[_Slot[T, R]] = []
            for slot in self._waiting:  # the runner's own slot is the first
                key = self._key(slot.item)
                if len(batch) < self._limit and key not in keys:
                    keys.add(key)
                    batch.append(slot)
                else:
                    later.append(slot)
            self._waiting = later
        try:
            outcomes: Sequence[R | BaseException] = self._work([slot.item for slot in batch])
        except BaseException as exc:  # every caller of the run raises it (and the runner)
            outcomes = [exc] * len(batch)
        with self._lock:
            for slot, outcome in zip(batch, outcomes, strict=True):
                slot.outcome, slot.done = outcome, True
                slot.wake.release()
            if self._waiting:
                self._waiting[0].wake.release()  # it runs the next batch
            else:
                self._running = False


def _let_others_come() -> None:
    """Let the other requests in flight come first, so that those about to be stored join the
    run about to start.

    Under gevent, wait until the hub is idle: every other request ready to run (its bytes
    arrived) has run until it waits, on this run or on its socket. One switch to each request
    ready now (`sleep(0)`) missed those whose bytes arrived meanwhile: the runs were smaller, and
    each costs a round trip to PostgreSQL and one to Redis. The wait is capped, for a hub that is
    never idle. Without gevent (threads), yield once.
    """
    if not gevent.monkey.is_module_patched("threading"):
        time.sleep(0)
        return
    with gevent.Timeout(GATHER_SECONDS, False):
        gevent.idle()


@dataclass(frozen=True)
class Recorded:
    """A delivery stored, and why its job was not sent if it was not (the relay sends it)."""

    stored: events.Stored
    unsent: str | None = None


class Recorder:
    """Stores deliveries and sends their jobs, the ones in flight together (`GroupCommit`)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._group: GroupCommit[events.NewEvent, Recorded] = GroupCommit(
            self._record, key=lambda event: event.dedupe_key
        )

    def record(self, event: events.NewEvent) -> Recorded:
        """Store one delivery (committed when this returns) and send its job if it needs one.

        Raises DatabaseUnavailable (nothing stored) or ValueNotStorable (this delivery only).
        """
        return self._group.submit(event)

    def _record(self, batch: list[events.NewEvent]) -> list[Recorded | BaseException]:
        try:
            # One INSERT ... ON CONFLICT, atomic on its own; again on a fresh connection if the
            # pooled one died with a database restart.
            stored = db.once_more(self.database_url, lambda conn: events.store_many(conn, batch))
        except ValueNotStorable:
            if len(batch) == 1:
                raise
            return [self._alone(event) for event in batch]  # only the culprit is refused
        due = [found.event_id for found in stored if found.inserted or found.redispatch]
        unsent = None
        if due:  # new, or known ones whose job was lost
            try:
                dispatch.dispatch(self.database_url, due)
            except (BrokerUnavailable, DatabaseUnavailable) as exc:
                # Stored and committed: acknowledged anyway; the clock's relay enqueues them.
                unsent = str(exc)
                log.warning("event(s) %s stored but not enqueued (%s); left for the relay",
                            ", ".join(map(str, due)), exc)  # fmt: skip
        return [
            Recorded(found, unsent if found.inserted or found.redispatch else None)
            for found in stored
        ]

    def _alone(self, event: events.NewEvent) -> Recorded | BaseException:
        try:
            return self._record([event])[0]
        except (ValueNotStorable, DatabaseUnavailable) as exc:
            return exc
