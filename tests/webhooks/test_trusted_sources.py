"""TRUSTED_SOURCES: each endpoint can be limited to the provider's networks."""

from __future__ import annotations

import pytest

from tests.conftest import INS_SECRET_WORD
from tests.support import FORM, signed_ins, signed_ipn
from webhooks.app import create_app
from workers.config import Settings
from workers.errors import ConfigError

PROVIDER = "192.0.2.5"
STRANGER = "198.51.100.1"


def _ins() -> bytes:
    return signed_ins(INS_SECRET_WORD)


def _post(client, path: str, body: bytes, remote: str, forwarded: str | None = None):
    headers = {**FORM, **({"X-Forwarded-For": forwarded} if forwarded else {})}
    return client.post(path, data=body, headers=headers, environ_base={"REMOTE_ADDR": remote})


def _count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"]


def test_an_endpoint_with_trusted_sources_refuses_other_addresses_unread(conn):
    client = create_app({"TRUSTED_SOURCES": "ins=192.0.2.0/24"}).test_client()
    refused = _post(client, "/ins", _ins(), STRANGER)
    assert refused.status_code == 403
    assert refused.text == "source address not allowed"
    assert _count(conn) == 0
    assert _post(client, "/ins", _ins(), PROVIDER).status_code == 200
    # An endpoint without a list of its own takes any source.
    assert _post(client, "/ipn", signed_ipn(), STRANGER).status_code == 200


def test_a_list_without_an_endpoint_applies_to_every_endpoint(conn):
    client = create_app({"TRUSTED_SOURCES": "192.0.2.0/24"}).test_client()
    assert _post(client, "/ipn", signed_ipn(), STRANGER).status_code == 403
    assert _post(client, "/ipn", signed_ipn(), PROVIDER).status_code == 200


def test_the_client_address_comes_from_x_forwarded_for_only_through_trusted_proxies(conn):
    behind_one = create_app({"TRUSTED_SOURCES": "192.0.2.0/24", "TRUSTED_PROXIES": "1"})
    client = behind_one.test_client()
    # The proxy appends the address it saw; whatever the client wrote before it is not believed.
    assert (
        _post(client, "/ipn", signed_ipn(), "10.0.0.1", f"{STRANGER}, {PROVIDER}").status_code
        == 200
    )
    assert (
        _post(client, "/ipn", signed_ipn(), "10.0.0.1", f"{PROVIDER}, {STRANGER}").status_code
        == 403
    )
    direct = create_app({"TRUSTED_SOURCES": "192.0.2.0/24"}).test_client()
    assert _post(direct, "/ipn", signed_ipn(), STRANGER, PROVIDER).status_code == 403


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ins=192.0.2.0/33", "TRUSTED_SOURCES"),
        ("ipx=192.0.2.0/24", "'ipx' is not one of ipn, lcn, ins"),
        ("ins=", "no network"),
    ],
)
def test_a_malformed_trusted_sources_stops_start_up_naming_it(value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"TRUSTED_SOURCES": value})
