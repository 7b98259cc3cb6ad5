"""Rinnovo's exceptions: a small hierarchy so callers can tell transient from permanent."""


class RinnovoError(Exception):
    """Base class of every error Rinnovo raises on purpose."""


class ConfigError(RinnovoError):
    """The environment does not describe a runnable configuration."""


class DatabaseUnavailable(RinnovoError):
    """PostgreSQL did not answer; the caller should retry later."""


class BrokerUnavailable(RinnovoError):
    """Redis did not take the message; the relay will enqueue it later."""


class BadFilter(RinnovoError, ValueError):
    """An operator's filter, date or id that cannot be understood; the message says why."""


class EventNotFound(RinnovoError):
    """No stored event has that id."""


class PermanentEventError(RinnovoError):
    """The event cannot be applied as it stands; retrying will not help."""


class ValueNotStorable(PermanentEventError):
    """A value the schema cannot hold (too long for an index, out of range); not an outage."""
