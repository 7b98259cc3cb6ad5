"""The admin side against hostile use: cookies, logout, guessing, and input meant to break it."""

from __future__ import annotations

import hmac
import json
import re
import threading
import time

import pytest
import requests
from flask.testing import FlaskClient

from webhooks.admin import page as admin_page
from webhooks.admin import sessions
from webhooks.app import create_app
from workers.errors import ConfigError

TOKEN = "correct horse battery staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client(**env: str):
    return create_app({"ADMIN_TOKEN": TOKEN, **env}).test_client()


def _log_in(client, token: str = TOKEN, **kwargs):
    page = client.get("/admin/login", **kwargs)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, page.text
    return client.post("/admin/login", data={"csrf_token": csrf.group(1), "token": token}, **kwargs)


def _cookie_header(response) -> str:
    found = [v for k, v in response.headers.items() if k == "Set-Cookie" and "rinnovo_admin" in v]
    assert found, response.headers
    return found[-1]


@pytest.mark.parametrize(
    ("env", "kwargs", "secure"),
    [
        ({}, {"base_url": "https://localhost"}, True),
        ({}, {}, False),
        ({"TRUSTED_PROXIES": "1"}, {"headers": {"X-Forwarded-Proto": "https"}}, True),
        ({}, {"headers": {"X-Forwarded-Proto": "https"}}, False),  # no proxy trusted
        ({"ADMIN_COOKIE_SECURE": "on"}, {}, True),
        ({"ADMIN_COOKIE_SECURE": "off"}, {"base_url": "https://localhost"}, False),
    ],
    ids=["https", "http", "trusted-proxy-https", "untrusted-header", "forced-on", "forced-off"],
)
def test_the_session_cookie_is_secure_exactly_when_served_over_https(conn, env, kwargs, secure):
    response = _log_in(_client(**env), **kwargs)
    assert response.status_code == 303
    assert ("; Secure" in _cookie_header(response)) is secure


def test_after_logout_the_old_cookie_opens_no_page(conn):
    client = _client()
    assert _log_in(client).status_code == 303
    cookie = client.get_cookie("rinnovo_admin", path="/admin")
    assert cookie is not None
    page = client.get("/admin/")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    assert client.post("/admin/logout", data={"csrf_token": csrf.group(1)}).status_code == 303

    replayed = _client()  # someone who kept a copy of the cookie
    replayed.set_cookie("rinnovo_admin", cookie.value, path="/admin")
    for path in ("/admin/", "/admin/events/1", "/admin/subscriptions/LIC"):
        response = replayed.get(path)
        assert response.status_code == 302, path
        assert "/admin/login" in response.headers["Location"]


def test_wrong_tokens_slow_down_that_address_in_every_process(conn):
    first, second = _client(), _client()  # two apps: as two gunicorn workers, sharing Redis
    attacker = {"environ_base": {"REMOTE_ADDR": "198.51.100.7"}}
    for _ in range(sessions.LOGIN_ATTEMPTS):
        assert _log_in(first, "wrong guess", **attacker).status_code == 403
    refused = _log_in(second, TOKEN, **attacker)  # even the right token waits
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= sessions.LOGIN_WINDOW
    assert "Too many wrong tokens" in refused.text
    other = {"environ_base": {"REMOTE_ADDR": "203.0.113.9"}}
    assert _log_in(second, TOKEN, **other).status_code == 303


def test_an_admin_token_shorter_than_the_minimum_stops_start_up(conn):
    with pytest.raises(ConfigError, match="at least 16"):
        create_app({"ADMIN_TOKEN": "too-short"})


def test_a_nul_in_a_license_is_a_404_on_the_page_and_the_api(conn):
    client = _client()
    assert _log_in(client).status_code == 303
    page = client.get("/admin/subscriptions/LIC%00X")
    assert page.status_code == 404
    assert page.mimetype == "text/html"
    assert "No such subscription" in page.text
    api = client.get("/admin/api/subscriptions/LIC%00X", headers=AUTH)
    assert api.status_code == 404
    assert "error" in api.json


@pytest.mark.parametrize("target", ["/admin/%0d%0aSet-Cookie:%20x=1", "/admin/%0aX"])
def test_a_line_break_in_next_is_a_400_page(conn, target):
    client = _client()
    response = client.get(f"/admin/login?next={target}")
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert _log_in(client).status_code == 303
    again = client.get(f"/admin/login?next={target}")
    assert again.status_code == 400
    assert "\n" not in again.headers.get("Location", "")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 20_000 + b"]" * 20_000, "nested too deeply"),
        (b'{"kind": "\\ud800"}', "lone surrogate"),
        (b'{"license": "ok\\udfff"}', "lone surrogate"),
    ],
    ids=["deep", "surrogate", "low-surrogate"],
)
def test_json_meant_to_break_the_api_is_a_400_in_json(conn, body, message):
    client = _client()
    response = client.post(
        "/admin/api/events/replay",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert message in json.loads(response.data)["error"]


def test_under_the_procfile_only_trusted_proxies_make_the_cookie_secure(receiver_factory):
    def cookie_after_login(receiver) -> str:
        with requests.Session() as browser:
            page = browser.get(f"{receiver.url}/admin/login", timeout=15)
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert csrf is not None
            response = browser.post(
                f"{receiver.url}/admin/login",
                data={"csrf_token": csrf.group(1), "token": TOKEN},
                headers={"X-Forwarded-Proto": "https"},
                allow_redirects=False,
                timeout=15,
            )
            assert response.status_code == 303
            return response.headers["Set-Cookie"]

    # gunicorn itself would believe X-Forwarded-Proto from 127.0.0.1: the Procfile turns it off.
    assert "Secure" not in cookie_after_login(receiver_factory(ADMIN_TOKEN=TOKEN))
    behind_proxy = receiver_factory(ADMIN_TOKEN=TOKEN, TRUSTED_PROXIES="1")
    assert "Secure" in cookie_after_login(behind_proxy)


def test_wrong_bearer_tokens_on_the_api_count_against_the_same_address(conn):
    client = _client()
    attacker = {"environ_base": {"REMOTE_ADDR": "198.51.100.8"}}
    wrong = {"Authorization": "Bearer not-the-admin-token"}
    for _ in range(sessions.LOGIN_ATTEMPTS):
        assert client.get("/admin/api/events", headers=wrong, **attacker).status_code == 401
    refused = client.get("/admin/api/events", headers=AUTH, **attacker)
    assert refused.status_code == 429
    assert refused.json == {"error": "too many wrong tokens from this address"}
    assert int(refused.headers["Retry-After"]) > 0
    assert _log_in(client, TOKEN, **attacker).status_code == 429  # the page shares the count
    other = {"environ_base": {"REMOTE_ADDR": "203.0.113.10"}}
    assert client.get("/admin/api/events", headers=AUTH, **other).status_code == 200


class _SlowCompare:
    """`hmac` as the admin page sees it, with a comparison slow enough for guesses to overlap."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        return getattr(hmac, name)

    def compare_digest(self, a: bytes, b: bytes) -> bool:
        if TOKEN.encode() not in (a, b):  # the CSRF check compares too
            return hmac.compare_digest(a, b)
        with self._lock:
            self.calls += 1
        time.sleep(0.3)
        return hmac.compare_digest(a, b)


def test_guesses_sent_all_at_once_are_compared_no_more_often_than_the_limit(conn, monkeypatch):
    slow = _SlowCompare()
    monkeypatch.setattr(admin_page, "hmac", slow)
    attacker = {"environ_base": {"REMOTE_ADDR": "198.51.100.20"}}
    statuses: list[int] = []

    def guess(client: FlaskClient) -> None:
        statuses.append(_log_in(client, "wrong guess", **attacker).status_code)

    # The apps are made before the guesses start: CPython 3.11's ast.parse, which werkzeug calls
    # while it compiles each app's routes, is not safe to call from several threads at once.
    clients = [_client() for _ in range(3 * sessions.LOGIN_ATTEMPTS)]
    threads = [threading.Thread(target=guess, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert slow.calls == sessions.LOGIN_ATTEMPTS
    assert sorted(set(statuses)) == [403, 429]


def test_an_ipv6_client_cannot_reset_its_count_by_moving_within_its_64(conn):
    client = _client()
    for n in range(sessions.LOGIN_ATTEMPTS):
        address = {"environ_base": {"REMOTE_ADDR": f"2001:db8:0:7::{n + 1}"}}
        assert _log_in(client, "wrong guess", **address).status_code == 403
    neighbour = {"environ_base": {"REMOTE_ADDR": "2001:db8:0:7::abcd"}}
    assert _log_in(client, TOKEN, **neighbour).status_code == 429
    elsewhere = {"environ_base": {"REMOTE_ADDR": "2001:db8:0:8::1"}}
    assert _log_in(client, TOKEN, **elsewhere).status_code == 303


def test_right_tokens_never_count_toward_the_limit(conn):
    api = _client()
    operator = {"environ_base": {"REMOTE_ADDR": "198.51.100.21"}}
    for _ in range(2 * sessions.LOGIN_ATTEMPTS):
        assert _log_in(_client(), TOKEN, **operator).status_code == 303
        assert api.get("/admin/api/events", headers=AUTH, **operator).status_code == 200
    assert _log_in(_client(), "wrong guess", **operator).status_code == 403
