"""The admin page's logins, shared with the admin API: the signed session cookie, the sessions
Redis knows, the CSRF token of each session, and the count of wrong tokens per client address.

Redis holds what every gunicorn worker process (and machine) must agree on: a session id that
logout forgets, so a copied cookie opens nothing afterwards, and the token attempts of each
address (LOGIN_ATTEMPTS in LOGIN_WINDOW seconds, then that address waits).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import secrets
import time
from typing import Any

import redis
from flask import Flask, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface

from workers.config import Settings
from workers.errors import BrokerUnavailable

SESSION_SECONDS = 12 * 60 * 60
_KEY_PURPOSE = b"rinnovo admin session cookie"
LOGIN_ATTEMPTS = 5  # wrong tokens from one address ...
LOGIN_WINDOW = 15 * 60  # ... within this many seconds, then it waits out the rest of the window


def session_key(admin_token: str) -> str:
    """The cookie-signing key: derived from the token, the same in every worker process."""
    return hmac.new(admin_token.encode("utf-8"), _KEY_PURPOSE, hashlib.sha256).hexdigest()


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, Secure whenever the request came over HTTPS (or as configured)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure over HTTPS (as a trusted proxy says); ADMIN_COOKIE_SECURE, when set, wins."""
        configured = app.extensions["rinnovo"].admin_cookie_secure
        return request.is_secure if configured is None else bool(configured)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["rinnovo"]
    return settings


def redis_client() -> Any:  # the broker's client, as dramatiq types it
    """The Redis of the app's runtime: sessions and login failures live beside its queues."""
    return current_app.extensions["rinnovo.runtime"].broker.client


def redis_key(*parts: str) -> str:
    """A key of the admin page's, in the namespace of the runtime's queues."""
    return ":".join((_settings().redis_namespace, "admin", *parts))


def logged_in() -> bool:
    """Whether the request carries a live session: signed, not too old, and known to Redis."""
    if "logged_in" not in g:
        started = session.get("at")
        sid = session.get("sid")
        g.logged_in = (
            session.get("admin") is True
            and isinstance(started, int | float)
            and 0 <= time.time() - started < SESSION_SECONDS
            and isinstance(sid, str)
            and run_redis(lambda: redis_client().exists(redis_key("session", sid))) == 1
        )
    return bool(g.logged_in)


def run_redis(command: Any) -> Any:
    """Run a Redis command for the login; Redis down is BrokerUnavailable (a 503 page)."""
    try:
        return command()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"Redis unavailable: {type(exc).__name__}") from exc


def csrf_token() -> str:
    """The session's CSRF token, which every form that changes something carries."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok() -> bool:
    """Whether the posted form carries the session's CSRF token."""
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    return isinstance(expected, str) and hmac.compare_digest(
        given.encode("utf-8"), expected.encode("utf-8")
    )


def _attempts_key() -> str:
    """Where the client's token attempts are counted: its address, or its /64 for IPv6 (one
    host commonly holds a whole /64, so single addresses would give it endless fresh counts)."""
    address = request.remote_addr or "unknown"
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(address)
        if ip.version == 6:
            address = str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return redis_key("login-failures", address)


# Gives an attempt back only while its window lasts (a DECR after expiry would leave a key with
# no expiry). EXPIRE ... NX would need Redis 7; this runs on any Redis with scripting.
_GIVE_BACK = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end"


def take_attempt() -> int:
    """Count one token attempt from the client before its token is compared; the seconds it must
    still wait (0: go on). Counting first means guesses sent all at once cannot all get compared
    while the count still reads low."""
    key = _attempts_key()

    def count() -> list[Any]:
        pipe = redis_client().pipeline()  # MULTI/EXEC: the window opens with the first attempt
        return pipe.set(key, 0, ex=LOGIN_WINDOW, nx=True).incr(key).ttl(key).execute()

    _, attempts, ttl = run_redis(count)
    if int(attempts) > LOGIN_ATTEMPTS:
        return max(int(ttl), 1)
    return 0


def give_back_attempt() -> None:
    """A right token: its attempt does not count toward the limit."""
    key = _attempts_key()
    run_redis(lambda: redis_client().eval(_GIVE_BACK, 1, key))


def start() -> None:
    """Start a session for an operator who gave the right token: a fresh id Redis knows, and a
    fresh CSRF token."""
    sid = secrets.token_urlsafe(32)
    run_redis(lambda: redis_client().set(redis_key("session", sid), "1", ex=SESSION_SECONDS))
    session.clear()
    session["admin"] = True
    session["sid"] = sid
    session["at"] = int(time.time())
    session["csrf"] = secrets.token_urlsafe(32)


def end() -> None:
    """End the session here and on the server: its id is forgotten, so the cookie opens nothing."""
    sid = session.get("sid")
    if isinstance(sid, str):
        run_redis(lambda: redis_client().delete(redis_key("session", sid)))
    session.clear()
