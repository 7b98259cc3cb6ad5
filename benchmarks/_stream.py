"""The process benchmark's events: each subscription's history as the provider would tell it,
interleaved as a live stream is, stored as the receiver stores them, reset between passes, and
checked once applied (every event processed or ignored, every subscription as the provider last
described it)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from workers.billing import catalog
from workers.billing.policies import add_period
from workers.billing.products import Product
from workers.ops import samples
from workers.protocol import form, ipn, lcn
from workers.protocol.signature import Algorithm
from workers.store import events

KEY = "BENCH-PROCESS-KEY"
BASE = datetime(2025, 1, 1, tzinfo=UTC)
STAMP = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Notification:
    """One notification as the provider would post it: its kind and signed field pairs."""

    kind: str
    pairs: list[tuple[str, str]]


@dataclass
class Timeline:
    """One subscription's history as the provider tells it, built one notification at a time."""

    rng: random.Random
    number: int
    product: Product
    customer: int
    language: str
    notifications: list[Notification] = field(default_factory=list)
    clock: datetime = BASE
    expires: datetime = BASE
    recurring: bool = True
    orders: int = 0
    status: str = "active"  # what the subscription should hold once all is applied

    @property
    def license(self) -> str:
        """The subscription's license code."""
        return f"BP{self.number:08d}"

    @property
    def email(self) -> str:
        """The customer's address."""
        return f"customer{self.customer:05d}@example.com"

    def tick(self, at_least: timedelta) -> datetime:
        """Move the provider's clock forward (never back) by at least `at_least`."""
        self.clock += at_least + timedelta(seconds=self.rng.randrange(1, 3600))
        return self.clock

    def order(self, license_type: str, start: datetime, expires: datetime) -> None:
        """A COMPLETE IPN for this license, paid at the current clock."""
        self.orders += 1
        item = samples.SampleItem(
            code=self.product.code,
            pid=self.product.pid,
            name=self.product.name,
            license_ref=self.license,
            quantity=1,
            price=str(self.product.price("EUR")),
            license_type=license_type,
            license_start=start.strftime(STAMP),
            license_exp=expires.strftime(STAMP),
        )
        pairs = samples.ipn_pairs(
            email=self.email,
            language=self.language,
            items=(item,),
            refno=f"{self.number:07d}{self.orders:03d}",
            sale_date=self.clock.strftime(STAMP),
            ipn_date=self.clock.strftime("%Y%m%d%H%M%S"),
            extra={"AVANGATE_CUSTOMER_REFERENCE": str(900_000_000 + self.customer)},
        )
        self.notifications.append(Notification("ipn", pairs))
        self.status = "active"

    def license_change(self, status: str) -> None:
        """An LCN stating the license's whole state as of the current clock."""
        pairs = samples.lcn_pairs(
            license_code=self.license,
            status=status,
            expiration_date=self.expires.strftime(STAMP),
            date_updated=self.clock.strftime(STAMP),
            recurring=self.recurring,
            email=self.email,
            extra={"AVANGATE_CUSTOMER_REFERENCE": str(900_000_000 + self.customer)},
        )
        self.notifications.append(Notification("lcn", pairs))
        self.status = {"ACTIVE": "active", "PASTDUE": "past_due"}[status]

    def purchase(self) -> None:
        """The new license: bought at a random moment of the year."""
        self.clock = BASE + timedelta(
            days=self.rng.randrange(365), seconds=self.rng.randrange(86_400)
        )
        start = self.clock
        self.expires = add_period(start, self.product.cycle)
        self.order("REGULAR", start, self.expires)

    def renewal(self, *, failed_first: bool) -> None:
        """A renewal order a few days before expiry (or after a failed charge), then its LCN."""
        if failed_first:
            self.clock = max(self.clock, self.expires) + timedelta(hours=1)
            self.license_change("PASTDUE")
            self.tick(timedelta(days=1))
        else:
            self.clock = max(self.clock, self.expires - timedelta(days=self.rng.randint(2, 5)))
            self.tick(timedelta(0))
        previous = self.expires
        self.expires = add_period(previous, self.product.cycle)
        self.order("RENEWAL", previous, self.expires)
        self.tick(timedelta(minutes=2))
        self.license_change("ACTIVE")

    def build(self, count: int) -> list[Notification]:
        """`count` notifications: the purchase, then renewals and license changes."""
        self.purchase()
        while len(self.notifications) < count:
            left = count - len(self.notifications)
            roll = self.rng.random()
            if roll < 0.35 and left >= 2:
                self.renewal(failed_first=False)
            elif roll < 0.45 and left >= 3 and self.recurring:
                self.renewal(failed_first=True)
            elif roll < 0.65:
                self.recurring = not self.recurring  # the customer turns auto-renewal off or on
                self.tick(timedelta(hours=1))
                self.license_change("ACTIVE")
            else:
                self.tick(timedelta(hours=1))  # details changed; the license stays as it was
                self.license_change("ACTIVE")
        return self.notifications


@dataclass(frozen=True)
class Expected:
    """Where one subscription must end once every notification is applied."""

    expires_at: datetime
    status: str


def build_stream(
    count: int, subscriptions: int, seed: int
) -> tuple[list[Notification], dict[str, Expected]]:
    """`count` notifications over `subscriptions` subscriptions in arrival order; the end states.

    Each round carries the next notification of every subscription in the same order, so two
    notifications of one subscription are a whole round apart in the queue, as they are hours
    apart in life: the workers rarely see a license change before the one it follows.
    """
    rng = random.Random(seed)
    products = [product for product in catalog.load_default() if product.product == "AWDoc"]
    customers = max(1, subscriptions * 4 // 5)  # some customers hold two subscriptions
    timelines = [
        Timeline(
            rng=rng,
            number=n,
            product=rng.choice(products),
            customer=rng.randrange(customers),
            language=rng.choice(("en", "it")),
        )
        for n in range(subscriptions)
    ]
    built = [
        timeline.build(count // subscriptions + (1 if n < count % subscriptions else 0))
        for n, timeline in enumerate(timelines)
    ]
    stream = []
    for round_number in range(max(len(notifications) for notifications in built)):
        stream += [each[round_number] for each in built if round_number < len(each)]
    expected = {t.license: Expected(t.expires, t.status) for t in timelines}
    return stream, expected


def store_stream(url: str, stream: Sequence[Notification]) -> list[int]:
    """Store every notification as the receiver does, marked enqueued; their ids, in order."""
    modules = {"ipn": ipn, "lcn": lcn}
    ids = []
    with psycopg.connect(url, row_factory=dict_row) as conn, conn.transaction():
        for notification in stream:
            module = modules[notification.kind]
            body = form.encode(samples.sign_pairs(notification.pairs, KEY, (Algorithm.SHA256,)))
            fields = form.group(form.parse_form(body))
            module.validate(fields)
            stored = events.store(
                conn,
                events.NewEvent(
                    kind=notification.kind,
                    dedupe_key=module.dedupe_key(fields),
                    raw_body=body,
                    content_type="application/x-www-form-urlencoded",
                    headers={"User-Agent": "2Checkout", "Remote-Addr": "127.0.0.1"},
                    fields=None,  # as the receiver stores them: read from the body
                    signature_algo=str(Algorithm.SHA256),
                    key_index=0,
                    summary=module.summary(fields),
                    license_codes=module.license_codes(fields),
                    test=module.is_test(fields),
                ),
            )
            if not stored.inserted:
                raise RuntimeError(f"two generated notifications share a dedupe key ({stored})")
            ids.append(stored.event_id)
        conn.execute("UPDATE events SET status = 'enqueued', enqueued_at = now()")
    return ids


def reset(url: str) -> None:
    """Forget everything the workers applied, so the same events can be applied again."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE orders, subscription_history, emails, email_suppressions, subscriptions, "
            "customers "
            "RESTART IDENTITY"
        )
        conn.execute(
            """
            UPDATE events SET status = 'enqueued', processed_at = NULL, attempts = 0,
                              last_error = NULL, last_traceback = NULL, outcome = NULL
            """
        )
        conn.execute("VACUUM ANALYZE events")


def check_events(url: str, expected: dict[str, Expected]) -> list[str]:
    """Print how the events ended; the problems: events not applied, subscriptions left wrong."""
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        counts = events.counts_by_status(conn)
        retried = conn.execute(
            "SELECT count(*) AS n FROM events WHERE attempts > 1 OR last_error IS NOT NULL"
        ).fetchone()
        stale = conn.execute(
            "SELECT count(*) AS n FROM subscription_history WHERE change = 'stale'"
        ).fetchone()
        bad = conn.execute(
            """
            SELECT id, kind, summary, status, attempts, last_error FROM events
            WHERE status NOT IN ('processed', 'ignored') ORDER BY id
            """
        ).fetchall()
        held = {
            row["license_code"]: Expected(row["expires_at"], row["status"])
            for row in conn.execute("SELECT license_code, expires_at, status FROM subscriptions")
        }
    shown = ", ".join(f"{status} {n:,}" for status, n in counts.items() if n)
    print(f"    events by status: {shown}")
    print(
        f"    retried: {retried['n'] if retried else 0:,}; LCNs found stale (out of order): "
        f"{stale['n'] if stale else 0:,}"
    )
    problems = [
        f"event {row['id']} ({row['kind']} {row['summary']}) {row['status']} after "
        f"{row['attempts']} attempt(s): {row['last_error']}"
        for row in bad
    ]
    wrong = sorted(code for code, end in expected.items() if held.get(code) != end)
    print(
        f"    subscriptions ending as the provider left them: "
        f"{len(expected) - len(wrong):,} of {len(expected):,}"
    )
    problems += [
        f"subscription {code}: {held.get(code)}, expected {expected[code]}" for code in wrong[:10]
    ]
    if len(wrong) > 10:
        problems.append(f"... and {len(wrong) - 10:,} more subscriptions not as expected")
    return problems
