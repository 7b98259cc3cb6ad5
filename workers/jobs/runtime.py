"""What a process runs on, built by its entry point from Settings; no import builds any of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import ConnectionPool

from workers.config import Settings
from workers.jobs.broker import build_broker
from workers.store import db

_installed: Runtime | None = None


def current() -> Runtime:
    """The runtime the process's entry point installed."""
    if _installed is None:
        raise RuntimeError("no runtime installed: the entry point builds one and installs it")
    return _installed


@dataclass
class Runtime:
    """The settings, the database pool, the broker and the metrics key of one process."""

    settings: Settings
    # None: one built from the settings (nothing connects: Redis on the first command).
    broker: RedisBroker = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        db.size_pool(
            self.settings.database_url,
            self.settings.database_pool_size,
            timeout=self.settings.database_pool_timeout,
        )
        if self.broker is None:
            self.broker = build_broker(self.settings.redis_url, self.settings.redis_namespace)

    @classmethod
    def from_env(cls) -> Runtime:
        """The runtime the process environment describes (the entry points' default)."""
        return cls(Settings.from_env())

    @property
    def pool(self) -> ConnectionPool[db.Conn]:
        """The pool for the settings' database, of the settings' size."""
        return db.get_pool(self.settings.database_url)

    @property
    def metrics_key(self) -> str:
        """The Redis hash of the receiver's counters: one per REDIS_NAMESPACE."""
        return f"{self.settings.redis_namespace}:metrics:receiver"

    def install(self) -> Runtime:
        """Make this the process's runtime, its broker the one actors are declared on: entry
        points call it before importing the actors."""
        global _installed
        dramatiq.set_broker(self.broker)
        _installed = self
        return self

    def close(self) -> None:
        """Close the pool and the broker's connections (tests and clean shutdown)."""
        db.close_pool(self.settings.database_url)
        self.broker.close()
