"""Configuration, read from the environment in one place."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path

from emails.links import check_http_url
from emails.message import parse_mailbox
from emails.render import KINDS
from workers.errors import ConfigError

DEFAULT_DATABASE_URL = "postgresql://localhost:5432/rinnovo"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_RENEWAL_URL = "https://secure.2checkout.com/renewal/?LICENSE={license_code}"
DEFAULT_PORTAL_URL = "https://secure.2checkout.com/myaccount/"
DEFAULT_API_URL = "https://api.2checkout.com/rest/6.0"
API_ALGORITHMS = ("sha3-256", "sha256")  # what the REST 6.0 `algo` accepts
MIN_ADMIN_TOKEN = 16  # characters: a shorter token can be guessed despite the login slow-down
ENDPOINTS = ("ipn", "lcn", "ins")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be on or off (1/0, true/false), not {value!r}")


def _days(value: str) -> tuple[int, ...]:
    try:
        days = tuple(sorted({int(part) for part in _split(value)}, reverse=True))
    except ValueError:
        raise ConfigError(
            f"REMINDER_DAYS must be whole numbers, e.g. 30,7,1; got {value!r}"
        ) from None
    if any(day < 0 for day in days):
        raise ConfigError(f"REMINDER_DAYS cannot be negative; got {value!r}")
    return days


def _offsets(name: str, value: str) -> tuple[int, ...]:
    """Whole days after an episode began, ascending (DUNNING_DAYS)."""
    try:
        days = tuple(sorted({int(part) for part in _split(value)}))
    except ValueError:
        raise ConfigError(f"{name} must be whole numbers, e.g. 0,3,7; got {value!r}") from None
    if any(day < 0 for day in days):
        raise ConfigError(f"{name} cannot be negative; got {value!r}")
    return days


def _public_url(value: str | None) -> str:
    """The receiver's public base URL (links in emails), or empty; it must be HTTPS (RFC 8058)."""
    url = (value or "").strip().rstrip("/")
    if url:
        try:
            check_http_url(url)
        except ValueError as exc:
            raise ConfigError(f"PUBLIC_URL: {exc}") from None
        if not url.startswith("https://"):
            raise ConfigError(f"PUBLIC_URL must be an https:// URL (RFC 8058); got {url!r}")
    return url


def _mailto(value: str | None) -> str:
    """UNSUBSCRIBE_MAILTO's bare address (a `mailto:` link holds no display name), or empty."""
    address = (value or "").strip()
    if not address:
        return ""
    try:
        return parse_mailbox(address, "UNSUBSCRIBE_MAILTO").addr_spec
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _kinds(value: str | None) -> frozenset[str]:
    """EMAILS_OFF: email kinds never sent; an unknown one is a mistake worth stopping for."""
    kinds = frozenset(_split(value or ""))
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ConfigError(
            f"EMAILS_OFF names unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}"
        )
    return kinds


def _whole(name: str, value: str | None, default: int, unit: str = "days") -> int:
    """A whole number of days (or `unit`) from the environment, `default` when unset."""
    if value is None or not value.strip():
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of {unit}; got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name} cannot be negative; got {value!r}")
    return number


def _pool_size(env: Mapping[str, str]) -> int:
    """DATABASE_POOL_SIZE, by default one connection per worker thread and four to spare."""
    threads = _whole("WORKER_THREADS", env.get("WORKER_THREADS"), 8, unit="threads")
    size = _whole("DATABASE_POOL_SIZE", env.get("DATABASE_POOL_SIZE"), threads + 4, "connections")
    if size < 1:
        raise ConfigError("DATABASE_POOL_SIZE must be at least 1")
    return size


def _pool_timeout(env: Mapping[str, str]) -> int:
    """DATABASE_POOL_TIMEOUT: whole seconds a caller waits for a pooled connection."""
    value = env.get("DATABASE_POOL_TIMEOUT")
    seconds = _whole("DATABASE_POOL_TIMEOUT", value, 5, unit="seconds")
    if seconds < 1:
        raise ConfigError("DATABASE_POOL_TIMEOUT must be at least 1")
    return seconds


def _time_of_day(name: str, value: str | None, default: str) -> time | None:
    """HH:MM (UTC) from the environment; None for `off`."""
    text = (value or "").strip().lower() or default
    if text == "off":
        return None
    try:
        hours, minutes = text.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigError(f"{name} must be HH:MM (UTC) or off; got {value!r}") from None


def _merchant_code(value: str | None) -> str | None:
    """The merchant code, or None (the provider's API off); it goes into a quoted header value."""
    code = (value or "").strip()
    if not code:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", code):
        raise ConfigError(
            f"TWOCHECKOUT_MERCHANT_CODE must be letters and digits, as the control panel shows it; "
            f"got {code!r}"
        )
    return code


def _api_url(value: str | None) -> str:
    url = (value or "").strip() or DEFAULT_API_URL
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"TWOCHECKOUT_API_URL must be an http(s) URL; got {url!r}")
    return url.rstrip("/")


def _api_algo(value: str | None) -> str:
    algo = (value or "").strip().lower() or API_ALGORITHMS[0]
    if algo not in API_ALGORITHMS:
        raise ConfigError(
            f"TWOCHECKOUT_API_ALGO must be one of {', '.join(API_ALGORITHMS)}; got {value!r}"
        )
    return algo


def _proxies(value: str | None) -> int:
    """TRUSTED_PROXIES: how many proxies in front of the receiver set X-Forwarded-*."""
    text = (value or "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) > 10:
        raise ConfigError(f"TRUSTED_PROXIES must be a whole number from 0 to 10; got {value!r}")
    return int(text)


def _optional_flag(name: str, value: str | None) -> bool | None:
    """A setting that is on, off, or unset (None: decided per request)."""
    if value is None or not value.strip() or value.strip().lower() == "auto":
        return None
    return _flag(name, value)


def _sources(value: str | None) -> dict[str, tuple[Network, ...]]:
    """TRUSTED_SOURCES: `ipn=CIDR,CIDR;lcn=...`; a group without `kind=` is every other one's."""
    groups: dict[str, tuple[Network, ...]] = {}
    default: tuple[Network, ...] | None = None
    for group in (part.strip() for part in (value or "").split(";")):
        if not group:
            continue
        kind, sep, cidrs = group.partition("=") if "=" in group else ("", "", group)
        kind = kind.strip().lower()
        if sep and kind not in ENDPOINTS:
            raise ConfigError(f"TRUSTED_SOURCES: {kind!r} is not one of {', '.join(ENDPOINTS)}")
        try:
            networks = tuple(ipaddress.ip_network(c, strict=False) for c in _split(cidrs))
        except ValueError as exc:
            raise ConfigError(f"TRUSTED_SOURCES: {exc}") from None
        if not networks:
            raise ConfigError(f"TRUSTED_SOURCES: no network in {group!r}")
        if sep:
            groups[kind] = networks
        else:
            default = networks
    if default is not None:
        for kind in ENDPOINTS:
            groups.setdefault(kind, default)
    return groups


@dataclass(frozen=True)
class Settings:
    """Everything Rinnovo reads from its environment."""

    database_url: str
    redis_url: str
    secret_keys: tuple[str, ...]
    accept_md5: bool
    ins_secret_words: tuple[str, ...]
    smtp_url: str | None
    mail_from: str
    admin_token: str | None
    portal_url: str
    renewal_url: str
    reminder_days: tuple[int, ...]
    default_locale: str
    catalog_path: str | None
    mail_dir: Path
    # Appended with defaults so positional construction elsewhere keeps working.
    auto_renewal_notice_days: int = 7  # notice this many days before an automatic renewal
    expiry_grace_days: int = 3  # auto-renewing subscriptions expire this long after expiry
    reconcile_at: time | None = time(3, 30)  # the clock's daily sweep (UTC); None: off
    reconcile_email_max_age: timedelta = timedelta(days=2)  # older facts found: no email
    expected_notification_grace: timedelta = timedelta(hours=6)  # silence after an expiry
    mail_domain: str = ""  # Message-ID domain; empty: the domain of MAIL_FROM
    redis_namespace: str = "rinnovo"  # prefix of every queue key: several instances, one Redis
    merchant_code: str | None = None  # the provider's REST API is off without it
    api_url: str = DEFAULT_API_URL  # the REST 6.0 base, without a trailing slash
    api_algo: str = API_ALGORITHMS[0]  # HMAC of the API's authentication header
    # The merchant's voice in every email: the signature and where customers ask for help.
    merchant_name: str = ""
    support_email: str = ""
    support_url: str = ""
    trusted_proxies: int = 0  # proxies whose X-Forwarded-For/-Proto are believed
    # Source networks allowed to post to each endpoint; an endpoint not named takes any source.
    trusted_sources: Mapping[str, tuple[Network, ...]] = field(default_factory=dict)
    admin_cookie_secure: bool | None = None  # None: Secure when the request came over HTTPS
    # Dunning: days after a subscription became past due that the payment-failed sequence goes
    # out, and how long a past-due subscription keeps access (at least to the provider's expiry).
    dunning_days: tuple[int, ...] = (0, 3, 7)
    dunning_grace_days: int = 10
    public_url: str = ""  # the receiver's HTTPS base, for unsubscribe links
    unsubscribe_mailto: str = ""  # a mailto: List-Unsubscribe address, optional
    emails_off: frozenset[str] = frozenset()  # kinds written `off`, never sent
    database_pool_size: int = 12  # connections per process: the worker's threads and a few more
    database_pool_timeout: int = 5  # seconds a caller waits for a pooled connection, then: outage

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from `env` (the process environment by default)."""
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
            secret_keys=_split(env.get("TWOCHECKOUT_SECRET_KEY", "")),
            accept_md5=_flag("TWOCHECKOUT_ACCEPT_MD5", env.get("TWOCHECKOUT_ACCEPT_MD5", "")),
            ins_secret_words=_split(env.get("TWOCHECKOUT_INS_SECRET_WORD", "")),
            smtp_url=env.get("SMTP_URL") or None,
            mail_from=env.get("MAIL_FROM") or "Rinnovo <noreply@localhost>",
            admin_token=env.get("ADMIN_TOKEN") or None,
            portal_url=env.get("PORTAL_URL") or DEFAULT_PORTAL_URL,
            renewal_url=env.get("RENEWAL_URL") or DEFAULT_RENEWAL_URL,
            reminder_days=_days(env.get("REMINDER_DAYS") or "30,7,1"),
            default_locale=(env.get("DEFAULT_LOCALE") or "en").strip(),
            catalog_path=env.get("CATALOG") or None,
            mail_dir=Path(env.get("MAIL_DIR") or "var/mail"),
            auto_renewal_notice_days=_whole(
                "AUTO_RENEWAL_NOTICE_DAYS", env.get("AUTO_RENEWAL_NOTICE_DAYS"), 7
            ),
            expiry_grace_days=_whole("EXPIRY_GRACE_DAYS", env.get("EXPIRY_GRACE_DAYS"), 3),
            reconcile_at=_time_of_day("RECONCILE_AT", env.get("RECONCILE_AT"), "03:30"),
            reconcile_email_max_age=timedelta(
                days=_whole("RECONCILE_EMAIL_MAX_AGE", env.get("RECONCILE_EMAIL_MAX_AGE"), 2)
            ),
            expected_notification_grace=timedelta(
                hours=_whole(
                    "EXPECTED_NOTIFICATION_GRACE",
                    env.get("EXPECTED_NOTIFICATION_GRACE"),
                    6,
                    unit="hours",
                )
            ),
            mail_domain=(env.get("MAIL_DOMAIN") or "").strip(),
            redis_namespace=(env.get("REDIS_NAMESPACE") or "rinnovo").strip(),
            merchant_code=_merchant_code(env.get("TWOCHECKOUT_MERCHANT_CODE")),
            api_url=_api_url(env.get("TWOCHECKOUT_API_URL")),
            api_algo=_api_algo(env.get("TWOCHECKOUT_API_ALGO")),
            merchant_name=(env.get("MERCHANT_NAME") or "").strip(),
            support_email=(env.get("SUPPORT_EMAIL") or "").strip(),
            support_url=(env.get("SUPPORT_URL") or "").strip(),
            trusted_proxies=_proxies(env.get("TRUSTED_PROXIES")),
            trusted_sources=_sources(env.get("TRUSTED_SOURCES")),
            admin_cookie_secure=_optional_flag(
                "ADMIN_COOKIE_SECURE", env.get("ADMIN_COOKIE_SECURE")
            ),
            dunning_days=_offsets("DUNNING_DAYS", env.get("DUNNING_DAYS") or "0,3,7"),
            dunning_grace_days=_whole("DUNNING_GRACE_DAYS", env.get("DUNNING_GRACE_DAYS"), 10),
            public_url=_public_url(env.get("PUBLIC_URL")),
            unsubscribe_mailto=_mailto(env.get("UNSUBSCRIBE_MAILTO")),
            emails_off=_kinds(env.get("EMAILS_OFF")),
            database_pool_size=_pool_size(env),
            database_pool_timeout=_pool_timeout(env),
        )

    def require_secret_keys(self) -> tuple[str, ...]:
        """The signing keys, or a loud failure: a receiver without a key would accept anything."""
        if not self.secret_keys:
            raise ConfigError(
                "TWOCHECKOUT_SECRET_KEY is not set: the receiver cannot verify notifications "
                "(set it to the secret key from the 2Checkout control panel)"
            )
        return self.secret_keys

    def merchant_voice(self) -> dict[str, str]:
        """The signature and support contact of every email, or a ConfigError naming what to set.

        There is no fallback: an email that tells the customer to contact support must say
        where, and one signed by nobody in particular reads like spam.
        """
        missing = [
            name
            for name, value in (
                ("MERCHANT_NAME", self.merchant_name),
                ("SUPPORT_EMAIL", self.support_email),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} not set: every email is signed with MERCHANT_NAME "
                "and tells the customer to write to SUPPORT_EMAIL (e.g. MERCHANT_NAME='Example "
                "Shop' SUPPORT_EMAIL=support@example.com)"
            )
        try:
            parse_mailbox(self.support_email, "SUPPORT_EMAIL")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            if self.support_url:
                check_http_url(self.support_url)
        except ValueError as exc:
            raise ConfigError(f"SUPPORT_URL: {exc}") from None
        voice = {"merchant_name": self.merchant_name, "support_email": self.support_email}
        if self.support_url:
            voice["support_url"] = self.support_url
        return voice

    def check_admin_token(self) -> None:
        """Refuse to start with an admin token short enough to guess."""
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN:
            raise ConfigError(
                f"ADMIN_TOKEN is {len(self.admin_token)} characters: use at least "
                f"{MIN_ADMIN_TOKEN} (e.g. the output of `openssl rand -base64 32`), or unset it "
                "to turn the admin API and page off"
            )
