"""`GET /metrics` in Prometheus text format, and the receiver's delivery counters.

Gunicorn runs several worker processes, and a deployment may run the receiver on several
machines, so a counter kept in one process's memory would show one process's share. So:

- What the database knows (events by status, queue lag, emails by status, policy mismatches,
  subscriptions by status) is read from it at scrape time: right whichever process answers.
- What only the receiver sees (deliveries by kind and outcome, the receipt latency histogram) is
  added up in each process's memory and written to one Redis hash with HINCRBY, in one MULTI/EXEC
  round trip, at most once a second by a background thread (and before each scrape, and when the
  process exits). Redis is already required (it is the broker), the counts add up across
  processes and machines, and a delivery costs no Redis round trip of its own. prometheus_client's
  multiprocess mode would need a directory shared by the workers of one machine, wiped at every
  start, and gunicorn hooks to retire dead workers' files, and it would still count per machine.
  When Redis does not answer, the counts wait in memory (a few dozen numbers: labels come from
  fixed sets) and are written once it is back; a process killed outright loses its last second.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import redis
from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from workers.config import Settings
from workers.errors import DatabaseUnavailable
from workers.store import db, events
from workers.store.outbox import FAILURES
from workers.store.reports import emails as email_reports
from workers.store.reports import events as event_reports
from workers.store.reports import runs
from workers.store.reports import subscriptions as subscription_reports
from workers.store.statuses import EMAIL_STATUSES

log = logging.getLogger("rinnovo.metrics")

bp = Blueprint("metrics", __name__)

KINDS = ("ipn", "lcn", "ins")
OUTCOMES = (
    "accepted",
    "duplicate",
    "bad_signature",
    "malformed",
    "unsupported_media_type",
    "too_large",
    "timeout",
    "forbidden_source",
    "unavailable",
    "not_configured",
)
# Receipt latency buckets in seconds: a receipt should take milliseconds; the provider waits ~30 s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FLUSH_EVERY = 1.0  # seconds between writes of a process's counts to Redis
SUBSCRIPTION_STATUSES = ("pending", "active", "past_due", "expired", "canceled", "refunded")


def _label(value: str, known: tuple[str, ...]) -> str:
    # Labels come from a fixed set, so a stray path or outcome cannot grow the series without end.
    return value if value in known else "other"


class ReceiverCounters:
    """Delivery counts and receipt latencies, added up in memory and written to one Redis hash.

    `record` only adds to this process's tallies; `flush` writes them, and a daemon thread of each
    process calls it every `flush_every` seconds once something was recorded.
    """

    def __init__(self, client: redis.Redis, key: str, *, flush_every: float = FLUSH_EVERY) -> None:
        self.client = client
        self.key = key
        self.flush_every = flush_every
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked worker starts with its own
        atexit.register(self.flush)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._sums: dict[str, float] = {}
        self._flusher: threading.Thread | None = None

    def record(self, kind: str, outcome: str, seconds: float | None = None) -> None:
        """Count a delivery, and its receipt latency when given (written by the next flush)."""
        kind, outcome = _label(kind, KINDS), _label(outcome, OUTCOMES)
        with self._lock:
            self._counts[f"deliveries|{kind}|{outcome}"] += 1
            if seconds is not None:
                bucket = next((str(le) for le in BUCKETS if seconds <= le), "+Inf")
                self._counts[f"latency|{kind}|{bucket}"] += 1
                field = f"latency_sum|{kind}"
                self._sums[field] = self._sums.get(field, 0.0) + seconds
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_forever, name="rinnovo-metrics", daemon=True
                )
                self._flusher.start()

    def _flush_forever(self) -> None:
        while True:  # a daemon thread: it ends with its process, which flushes at exit
            time.sleep(self.flush_every)
            self.flush()

    def flush(self) -> bool:
        """Write the counts recorded since the last flush; False (counts kept) if Redis refused."""
        with self._lock:
            counts, sums = self._counts, self._sums
            self._counts, self._sums = Counter(), {}
        if not counts and not sums:
            return True
        pipe = self.client.pipeline(transaction=True)  # all of them or none
        for field, count in counts.items():
            pipe.hincrby(self.key, field, count)
        for field, total in sums.items():
            pipe.hincrbyfloat(self.key, field, total)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            with self._lock:
                self._counts.update(counts)
                for field, total in sums.items():
                    self._sums[field] = self._sums.get(field, 0.0) + total
            log.warning("delivery counts kept for later, Redis unavailable: %s", type(exc).__name__)
            return False
        return True

    def read(self) -> dict[str, str]:
        """The raw hash, this process's counts included (raises redis.RedisError when Redis does
        not answer)."""
        self.flush()
        raw: dict[bytes | str, bytes | str] = self.client.hgetall(self.key)
        return {_text(name): _text(value) for name, value in raw.items()}

    def families(self, raw: dict[str, str]) -> Iterator[Metric]:
        """The counter and histogram families the raw hash describes."""
        deliveries = CounterMetricFamily(
            "rinnovo_notifications_received",
            "Notifications delivered to the receiver, by kind and outcome.",
            labels=["kind", "outcome"],
        )
        buckets: dict[str, dict[str, int]] = {}
        sums: dict[str, float] = {}
        for name, value in sorted(raw.items()):
            what, kind, *rest = name.split("|")
            if what == "deliveries" and rest:
                deliveries.add_metric([kind, rest[0]], float(value))
            elif what == "latency" and rest:
                buckets.setdefault(kind, {})[rest[0]] = int(value)
            elif what == "latency_sum":
                sums[kind] = float(value)
        yield deliveries
        latency = HistogramMetricFamily(
            "rinnovo_receipt_latency_seconds",
            "Time from a delivery's arrival to its receipt (accepted and duplicate deliveries).",
            labels=["kind"],
        )
        for kind in sorted(buckets):
            running = 0
            cumulative: list[tuple[str, float]] = []
            for le in [*(str(b) for b in BUCKETS), "+Inf"]:
                running += buckets[kind].get(le, 0)
                cumulative.append((le, float(running)))
            latency.add_metric([kind], cumulative, sum_value=sums.get(kind, 0.0))
        yield latency


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def counters() -> ReceiverCounters:
    """The counters of the app answering (one per app: its runtime's Redis and namespace)."""
    found: ReceiverCounters = current_app.extensions["rinnovo.counters"]
    return found


def delivered(kind: str, outcome: str, seconds: float | None = None) -> None:
    """Count one delivery the receiver answered (the receiver calls this once per request)."""
    counters().record(kind, outcome, seconds)


def database_families(conn: db.Conn, grace: timedelta = timedelta(hours=6)) -> Iterator[Metric]:
    """The figures the database knows, the same whichever process is asked (`grace`: the
    EXPECTED_NOTIFICATION_GRACE of the watchdog's count)."""
    by_status = GaugeMetricFamily("rinnovo_events", "Stored events, by status.", labels=["status"])
    for status, count in events.counts_by_status(conn).items():
        by_status.add_metric([status], count)
    yield by_status

    yield GaugeMetricFamily(
        "rinnovo_event_queue_lag_seconds",
        "Age of the oldest event stored but not yet applied (0 when none waits).",
        value=event_reports.queue_lag(conn),
    )

    found = email_reports.counts_by_status(conn)
    emails = GaugeMetricFamily(
        "rinnovo_emails", "Outbox emails, by status (sent and failed only grow).", labels=["status"]
    )
    for status in EMAIL_STATUSES:
        emails.add_metric([status], found.get(status, 0))
    yield emails

    reasons = email_reports.failed_by_reason(conn)
    failed = GaugeMetricFamily(
        "rinnovo_emails_failed",
        "Failed emails, by reason; `interrupted` ones may have been delivered and wait for an "
        "operator (rinnovo emails list --status failed --reason interrupted).",
        labels=["reason"],
    )
    for reason in (*FAILURES, "other"):
        failed.add_metric([reason], reasons.get(reason if reason != "other" else None, 0))
    yield failed

    yield GaugeMetricFamily(
        "rinnovo_email_queue_lag_seconds",
        "Age of the oldest email not yet sent (0 when none waits).",
        value=email_reports.queue_lag(conn),
    )

    counts = subscription_reports.counts(conn)
    subscriptions = GaugeMetricFamily(
        "rinnovo_subscriptions", "Subscriptions, by status.", labels=["status"]
    )
    for status in SUBSCRIPTION_STATUSES:
        subscriptions.add_metric([status], counts.by_status.get(status, 0))
    yield subscriptions
    yield GaugeMetricFamily(
        "rinnovo_policy_mismatches",
        "Subscriptions whose provider expiry differs from the policy's by more than a day.",
        value=counts.mismatched,
    )
    yield from _reconcile_families(conn, grace)
    yield from _dunning_families(conn)


def _reconcile_families(conn: db.Conn, grace: timedelta) -> Iterator[Metric]:
    figures = runs.figures(conn, grace)
    yield GaugeMetricFamily(
        "rinnovo_reconcile_last_success_timestamp",
        "Unix time the last sweep of the provider's API over every subscription succeeded "
        "(0: never).",
        value=figures["last_success"],
    )
    yield CounterMetricFamily(
        "rinnovo_reconcile_differences",
        "Records found differing from the provider's by sweeps that applied them.",
        value=figures["differences"],
    )
    yield GaugeMetricFamily(
        "rinnovo_expected_notifications_missing",
        "Auto-renewing subscriptions past their expiry by more than EXPECTED_NOTIFICATION_GRACE "
        "with no notification since.",
        value=figures["missing"],
    )


def _dunning_families(conn: db.Conn) -> Iterator[Metric]:
    """Past-due subscriptions in a dunning sequence, and payments recovered during one."""
    counts = subscription_reports.dunning_counts(conn)
    yield GaugeMetricFamily(
        "rinnovo_dunning_past_due",
        "Subscriptions past due, in the payment-failed sequence now.",
        value=counts.past_due,
    )
    yield CounterMetricFamily(
        "rinnovo_dunning_recovered",
        "Past-due subscriptions whose payment was recovered before access ended.",
        value=counts.recovered,
    )


class _Collector:
    """Everything /metrics shows, gathered at scrape time; a source that fails is reported down."""

    def __init__(self, settings: Settings, counters: ReceiverCounters) -> None:
        self.settings = settings
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        """Read Redis and the database; each source's families, then whether it answered."""
        up = GaugeMetricFamily(
            "rinnovo_metrics_source_up",
            "Whether a source of these metrics answered this scrape (1) or not (0).",
            labels=["source"],
        )
        try:
            raw = self.counters.read()
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", type(exc).__name__)
            up.add_metric(["redis"], 0)
        else:
            yield from self.counters.families(raw)
            up.add_metric(["redis"], 1)
        try:
            with db.connection(self.settings.database_url) as conn, conn.transaction():
                db.read_only(conn)
                grace = self.settings.expected_notification_grace
                gathered = list(database_families(conn, grace))
        except DatabaseUnavailable as exc:
            log.warning("metrics: %s", exc)
            up.add_metric(["database"], 0)
        else:
            yield from gathered
            up.add_metric(["database"], 1)
        yield up


@bp.get("/metrics")
def metrics() -> Response:
    """Every metric in Prometheus text format."""
    settings: Settings = current_app.extensions["rinnovo"]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(settings, counters()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
