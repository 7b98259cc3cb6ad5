"""The receiver end to end: real HTTP, real PostgreSQL, real Redis."""

from __future__ import annotations

import hashlib
import hmac
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support import FORM, KEY, signed_ipn
from workers.config import Settings
from workers.errors import ConfigError
from workers.ops import samples
from workers.protocol import form
from workers.protocol.signature import Algorithm
from workers.store import events

ITEMS = (
    samples.SampleItem(
        code="AWD-TEAM-M", pid="4626543", name="AWDoc TEAM (monthly)", license_ref="LIC0000001"
    ),
    samples.SampleItem(
        code="AWD-BUS-A", pid="4626546", name="José Müller GmbH pack", license_ref="LIC0000002"
    ),
)


def test_an_ipn_over_http_is_stored_acknowledged_with_a_verifiable_receipt_and_enqueued(
    live_url, conn, queued
):
    body = signed_ipn(items=ITEMS, ipn_date="20261122101500", first_name="José", last_name="Müller")
    response = requests.post(f"{live_url}/ipn", data=body, headers=FORM, timeout=10)

    assert response.status_code == 200
    match = re.fullmatch(r'<sig algo="sha256" date="(\d{14})">([0-9a-f]{64})</sig>', response.text)
    assert match, response.text
    date, digest = match.groups()
    # The receipt, recomputed by hand: lp(IPN_PID[0]) lp(IPN_PNAME[0]) lp(IPN_DATE) lp(DATE).
    name = "AWDoc TEAM (monthly)"
    source = f"74626543{len(name)}{name}1420261122101500{len(date)}{date}"
    assert digest == hmac.new(KEY.encode(), source.encode(), hashlib.sha256).hexdigest()

    event = conn.execute("SELECT * FROM events").fetchone()
    assert event["kind"] == "ipn"
    assert bytes(event["raw_body"]) == body
    # The parsed fields are not stored (the commit would carry them twice): they are read from
    # the body whenever the event is shown.
    assert event["fields"] == {}
    shown = events.get(conn, event["id"])
    assert shown["fields"]["FIRSTNAME"] == ["José"]
    assert shown["fields"]["IPN_PID[]"] == ["4626543", "4626546"]
    assert event["signature_algo"] == "sha256"
    assert event["key_index"] == 0
    assert event["license_codes"] == ["LIC0000001", "LIC0000002"]
    assert event["status"] == "enqueued"
    assert queued() == [event["id"]]


@pytest.mark.parametrize(
    ("algorithms", "receipt_pattern"),
    [
        ((Algorithm.SHA3_256,), r'<sig algo="sha3-256" date="\d{14}">[0-9a-f]{64}</sig>'),
        ((Algorithm.SHA256,), r'<sig algo="sha256" date="\d{14}">[0-9a-f]{64}</sig>'),
        (
            (Algorithm.MD5, Algorithm.SHA256, Algorithm.SHA3_256),
            r'<sig algo="sha3-256" date="\d{14}">',
        ),
        ((Algorithm.MD5, Algorithm.SHA256), r'<sig algo="sha256" date="\d{14}">'),
    ],
)
def test_the_receipt_uses_the_strongest_signature_received(client, algorithms, receipt_pattern):
    body = signed_ipn(algorithms=algorithms)
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 200
    assert re.match(receipt_pattern, response.text), response.text


def test_an_md5_only_ipn_is_refused_unless_md5_is_turned_on(conn):
    from webhooks.app import create_app

    body = signed_ipn(algorithms=(Algorithm.MD5,))
    refused = create_app().test_client().post("/ipn", data=body, headers=FORM)
    assert refused.status_code == 400
    assert "<sig" not in refused.text and "|" not in refused.text
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 0

    accepted = (
        create_app({"TWOCHECKOUT_ACCEPT_MD5": "1"})
        .test_client()
        .post("/ipn", data=body, headers=FORM)
    )
    assert accepted.status_code == 200
    assert re.fullmatch(r"<EPAYMENT>\d{14}\|[0-9a-f]{32}</EPAYMENT>", accepted.text)
    fields = form.group(form.parse_form(body))
    assert samples.verify_receipt(
        accepted.text,
        Algorithm.MD5,
        KEY,
        [fields["IPN_PID[]"][0], fields["IPN_PNAME[]"][0], fields["IPN_DATE"][0]],
    )


def test_a_notification_signed_with_a_rotated_out_key_is_accepted_and_answered_with_the_first(
    client, conn
):
    body = signed_ipn(key="previous-key-still-accepted")
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 200
    fields = form.group(form.parse_form(body))
    values = [fields["IPN_PID[]"][0], fields["IPN_PNAME[]"][0], fields["IPN_DATE"][0]]
    assert samples.verify_receipt(response.text, Algorithm.SHA256, KEY, values)
    assert not samples.verify_receipt(
        response.text, Algorithm.SHA256, "previous-key-still-accepted", values
    )
    assert conn.execute("SELECT key_index FROM events").fetchone()["key_index"] == 1


def test_a_provider_retry_is_acknowledged_again_but_stored_and_enqueued_once(client, conn, queued):
    pairs = samples.ipn_pairs(items=(samples.SampleItem(license_ref="LICRETRY01"),), refno="900001")
    first = form.encode(samples.sign_pairs(pairs, KEY))
    # The provider's retry: re-stamped delivery date and message id, signed again.
    restamped = {"IPN_DATE": "20261122102000", "MESSAGE_ID": "777000111222"}
    retry_pairs = [(name, restamped.get(name, value)) for name, value in pairs]
    retry = form.encode(samples.sign_pairs(retry_pairs, KEY))
    assert retry != first

    assert client.post("/ipn", data=first, headers=FORM).status_code == 200
    again = client.post("/ipn", data=retry, headers=FORM)
    assert again.status_code == 200
    assert again.text.startswith('<sig algo="sha256"')

    rows = conn.execute("SELECT id, deliveries, raw_body FROM events").fetchall()
    assert len(rows) == 1
    assert rows[0]["deliveries"] == 2
    assert bytes(rows[0]["raw_body"]) == first  # the stored original is never overwritten
    assert queued() == [rows[0]["id"]]


def test_eight_concurrent_deliveries_of_one_notification_store_and_enqueue_it_once(
    live_url, conn, queued
):
    body = signed_ipn(items=(samples.SampleItem(license_ref="LICCONC001"),), refno="900002")

    def post(_: int) -> requests.Response:
        return requests.post(f"{live_url}/ipn", data=body, headers=FORM, timeout=10)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(8)))

    assert [r.status_code for r in responses] == [200] * 8
    assert all(r.text.startswith('<sig algo="sha256"') for r in responses)
    rows = conn.execute("SELECT id, deliveries FROM events").fetchall()
    assert len(rows) == 1 and rows[0]["deliveries"] == 8
    assert queued() == [rows[0]["id"]]


def test_a_different_order_status_for_the_same_order_is_a_new_event(client, conn):
    pairs = samples.ipn_pairs(items=(samples.SampleItem(license_ref="LICSTATUS1"),), refno="900003")
    for status in ("PAYMENT_AUTHORIZED", "COMPLETE"):
        changed = [(name, status if name == "ORDERSTATUS" else value) for name, value in pairs]
        body = form.encode(samples.sign_pairs(changed, KEY))
        assert client.post("/ipn", data=body, headers=FORM).status_code == 200
    summaries = [r["summary"] for r in conn.execute("SELECT summary FROM events ORDER BY id")]
    assert [s.split()[0] for s in summaries] == ["PAYMENT_AUTHORIZED", "COMPLETE"]


def _count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"]


def test_a_wrong_signature_is_refused_with_400_no_receipt_and_nothing_stored(client, conn):
    body = signed_ipn(key="not-the-merchant-key")
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 400
    assert response.text.startswith("<EPAYMENT>Error. Cannot verify signature")
    assert "<sig" not in response.text
    assert _count(conn) == 0


def test_a_tampered_value_is_refused(client, conn):
    body = signed_ipn().replace(b"customer%40example.com", b"attacker%40example.com")
    assert client.post("/ipn", data=body, headers=FORM).status_code == 400
    assert _count(conn) == 0


def test_an_unsigned_notification_is_refused(client, conn):
    body = form.encode(samples.ipn_pairs())
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 400
    assert "missing signature" in response.text
    assert _count(conn) == 0


def test_a_body_that_is_not_form_encoded_is_refused_with_415(client, conn):
    response = client.post(
        "/ipn", data=b'{"REFNO": "1"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 415
    assert "application/x-www-form-urlencoded" in response.text
    assert _count(conn) == 0


def test_a_body_over_64_kib_is_refused_with_413(client, conn):
    body = signed_ipn(extra={"PADDING": "x" * (64 * 1024)})
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 413
    assert "65536" in response.text
    assert _count(conn) == 0


def test_a_chunked_body_over_64_kib_is_refused_with_413(live_url, conn):
    body = signed_ipn(extra={"PADDING": "x" * (64 * 1024)})

    def chunks():
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = requests.post(f"{live_url}/ipn", data=chunks(), headers=FORM, timeout=10)
    assert response.status_code == 413
    assert _count(conn) == 0


def test_an_ipn_without_ipn_date_is_refused_naming_the_field(client, conn):
    pairs = [(name, value) for name, value in samples.ipn_pairs() if name != "IPN_DATE"]
    body = form.encode(samples.sign_pairs(pairs, KEY, (Algorithm.SHA256,)))
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 400
    assert "IPN_DATE" in response.text
    assert _count(conn) == 0


def test_an_ipn_with_a_malformed_date_is_refused_naming_the_field(client, conn):
    body = signed_ipn(sale_date="2026-11-31 25:00:00")
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 400
    assert "SALEDATE" in response.text
    assert _count(conn) == 0


def test_a_body_that_is_not_utf8_is_refused_with_400(client, conn):
    response = client.post("/ipn", data=b"REFNO=%FF%FE&HASH=00", headers=FORM)
    assert response.status_code == 400
    assert _count(conn) == 0


def _lcn_body(**kwargs) -> bytes:
    pairs = samples.lcn_pairs(
        license_code="LICLCN0001",
        expiration_date="2027-03-03 14:00:00",
        date_updated="2026-11-22 10:00:00",
        **kwargs,
    )
    return form.encode(samples.sign_pairs(pairs, KEY, (Algorithm.SHA3_256,)))


def test_the_lcn_url_check_answers_200(client):
    assert client.get("/lcn").status_code == 200


def test_an_lcn_is_stored_and_answered_with_a_receipt_over_license_code_and_expiration(
    client, conn
):
    response = client.post("/lcn", data=_lcn_body(), headers=FORM)
    assert response.status_code == 200
    assert samples.verify_receipt(
        response.text, Algorithm.SHA3_256, KEY, ["LICLCN0001", "2027-03-03 14:00:00"]
    )
    event = conn.execute("SELECT kind, license_codes, summary FROM events").fetchone()
    assert event == {"kind": "lcn", "license_codes": ["LICLCN0001"], "summary": "ACTIVE"}


def _ins_body(secret_word: str = "tango") -> bytes:
    pairs = samples.ins_pairs(
        message_type="ORDER_CREATED",
        sale_id="4774380224",
        invoice_id="4774380233",
        secret_word=secret_word,
        customer_email="cliente@example.it",
        customer_language="it",
        items=[("AWDoc TEAM", "AWD-TEAM-M", "30.00", "2026-12-22")],
    )
    return form.encode(pairs)


def test_an_ins_message_with_the_right_md5_hash_is_stored_and_answered_200(client, conn):
    response = client.post("/ins", data=_ins_body(), headers=FORM)
    assert response.status_code == 200
    event = conn.execute("SELECT kind, summary, signature_algo FROM events").fetchone()
    assert event == {"kind": "ins", "summary": "ORDER_CREATED", "signature_algo": "ins-md5"}


def test_an_ins_message_with_a_wrong_md5_hash_is_refused(client, conn):
    response = client.post("/ins", data=_ins_body(secret_word="wrong"), headers=FORM)
    assert response.status_code == 400
    assert _count(conn) == 0


def test_ins_without_a_configured_secret_word_answers_503_so_the_provider_retries(conn):
    from webhooks.app import create_app

    app = create_app({"TWOCHECKOUT_INS_SECRET_WORD": ""})
    response = app.test_client().post("/ins", data=_ins_body(), headers=FORM)
    assert response.status_code == 503
    assert "not configured" in response.text
    assert _count(conn) == 0


def test_a_receiver_without_a_secret_key_refuses_to_start():
    from webhooks.app import create_app

    with pytest.raises(ConfigError, match="TWOCHECKOUT_SECRET_KEY"):
        create_app({"TWOCHECKOUT_SECRET_KEY": " , "})


def test_settings_read_the_documented_defaults():
    settings = Settings.from_env({"TWOCHECKOUT_SECRET_KEY": "a, b"})
    assert settings.database_url == "postgresql://localhost:5432/rinnovo"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.secret_keys == ("a", "b")
    assert settings.accept_md5 is False
    assert settings.reminder_days == (30, 7, 1)


def test_health_and_readiness_answer_when_database_and_redis_do(client):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"ready": True, "checks": {"database": "ok", "redis": "ok"}}


def test_a_nul_character_in_a_value_is_refused_naming_the_field(client, conn):
    body = signed_ipn(extra={"COMPANY": "Acme\x00Corp"})
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 400
    assert response.text == "field COMPANY: contains a NUL character"
    assert _count(conn) == 0
