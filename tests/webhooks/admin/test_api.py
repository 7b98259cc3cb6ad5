"""The admin JSON API: bearer token, every endpoint's JSON, errors as JSON with their status."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.conftest import TEST_DATABASE_URL
from tests.support import QUICK_OUTAGE, Receiver, drain, post_signed
from tests.workers.ops.test_replay import (
    add_monthly_product,
    catalog_file_fixture,  # noqa: F401  # fixture, by name
    ipn,
    mail_dir_fixture,  # noqa: F401  # fixture, by name
    queued_messages,
    row,
    signed,
    snapshot,
    store_event,
)
from webhooks.app import create_app

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DISABLED = {"error": "admin API is disabled: set ADMIN_TOKEN"}
ROUTES = [
    ("GET", "/admin/api/events"),
    ("GET", "/admin/api/events/1"),
    ("POST", "/admin/api/events/1/replay"),
    ("POST", "/admin/api/events/replay"),
    ("GET", "/admin/api/subscriptions/LIC-1"),
    ("GET", "/admin/api/emails"),
    ("GET", "/admin/api/openapi.json"),
    ("GET", "/admin/api/no-such-thing"),
]


@pytest.fixture
def admin(conn, monkeypatch):
    """A test client of an app with the admin API turned on."""
    monkeypatch.setenv("ADMIN_TOKEN", TOKEN)
    return create_app().test_client()


def call(client, method: str, path: str, **kwargs):
    return client.open(path, method=method, **kwargs)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_admin_token_set_every_admin_route_is_404_with_the_reason(
    conn, monkeypatch, method, path
):
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    client = create_app().test_client()
    response = call(client, method, path, headers=AUTH)
    assert response.status_code == 404
    assert response.get_json() == DISABLED


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, "missing bearer token"),
        ("Bearer", "missing bearer token"),
        (f"Basic {TOKEN}", "missing bearer token"),
        ("Bearer not-the-token", "wrong bearer token"),
        (f"Bearer {TOKEN}x", "wrong bearer token"),
        (f"Bearer {TOKEN[:-1]}", "wrong bearer token"),
    ],
)
def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(
    admin, method, path, authorization, error
):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = call(admin, method, path, headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"error": error}
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_the_receiver_is_untouched_by_the_admin_api(admin):
    assert admin.get("/healthz").text == "ok"
    assert admin.get("/nowhere").status_code == 404
    assert admin.get("/nowhere").mimetype == "text/html"


def test_an_unknown_path_or_method_under_the_api_is_json(admin):
    missing = admin.get("/admin/api/nope", headers=AUTH)
    assert missing.status_code == 404
    assert set(missing.get_json()) == {"error"}
    wrong_method = admin.delete("/admin/api/events", headers=AUTH)
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.get_json()
    assert wrong_method.headers["Allow"]


def test_get_events_lists_newest_first_a_page_at_a_time(admin, conn):
    ids = [
        store_event(conn, signed(ipn(f"LIC-E{n}", refno=f"R3{n:02d}")), dedupe_key=f"e{n}")
        for n in range(5)
    ]
    conn.execute(
        "UPDATE events SET status = 'failed', last_error = 'boom', attempts = 2 WHERE id = %s",
        (ids[1],),
    )

    first = admin.get("/admin/api/events?limit=2", headers=AUTH)
    assert first.status_code == 200
    body = first.get_json()
    assert [e["id"] for e in body["events"]] == [ids[4], ids[3]]
    assert body["next"] == ids[3]
    second = admin.get(f"/admin/api/events?limit=2&before={body['next']}", headers=AUTH).get_json()
    assert [e["id"] for e in second["events"]] == [ids[2], ids[1]]
    last = admin.get(f"/admin/api/events?limit=2&before={second['next']}", headers=AUTH).get_json()
    assert ([e["id"] for e in last["events"]], last["next"]) == ([ids[0]], None)

    failed = admin.get("/admin/api/events?status=failed", headers=AUTH).get_json()
    assert failed["next"] is None
    [event] = failed["events"]
    assert event == {
        "id": ids[1],
        "kind": "ipn",
        "status": "failed",
        "summary": "COMPLETE REGULAR",
        "license_codes": ["LIC-E1"],
        "test": False,
        "received_at": event["received_at"],
        "processed_at": None,
        "deliveries": 1,
        "attempts": 2,
        "last_error": "boom",
        "outcome": None,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", event["received_at"])


def test_get_events_filters_by_kind_license_and_time(admin, conn):
    old = store_event(conn, signed(ipn("LIC-OLD", refno="R320")), dedupe_key="old")
    new = store_event(conn, signed(ipn("LIC-NEW", refno="R321")), dedupe_key="new")
    conn.execute("UPDATE events SET received_at = '2026-01-05 10:00Z' WHERE id = %s", (old,))

    def ids(query: str) -> list[int]:
        response = admin.get(f"/admin/api/events?{query}", headers=AUTH)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.get_json()["events"]]

    assert ids("license=LIC-OLD") == [old]
    assert ids("kind=ipn") == [new, old]
    assert ids("kind=lcn") == []
    assert ids("until=2026-01-05") == [old]
    assert ids("since=2026-01-05T10:00:01Z") == [new]
    assert ids("since=2026-01-05T11:00:00%2B01:00&until=2026-01-06") == [old]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=done", "unknown status 'done'"),
        ("kind=sms", "unknown kind 'sms'"),
        ("since=yesterday", "'yesterday' is not a date"),
        ("until=2026-13-01", "is not a date"),
        ("since=2026-02-01&until=2026-01-01", "since must be before until"),
        ("license=", "license is blank"),
        ("limit=0", "limit must be a whole number from 1 to 500"),
        ("limit=501", "limit must be a whole number from 1 to 500"),
        ("limit=ten", "limit must be a whole number"),
        ("before=-1", "before must be a whole number"),
        ("before=99999999999999999999", "before must be a whole number"),
        ("licence=LIC-1", "unknown query parameter(s) licence: use status, kind, license"),
        ("license=LIC%00X", "license code contains a NUL character"),
    ],
)
def test_a_bad_filter_or_page_is_400_with_the_reason(admin, query, message):
    response = admin.get(f"/admin/api/events?{query}", headers=AUTH)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_get_event_shows_what_it_said_how_it_was_verified_and_what_it_caused(
    admin, client, conn, mail_dir
):
    event_id = post_signed(client, "/ipn", ipn("LIC-DETAIL", refno="R330"))
    drain()

    response = admin.get(f"/admin/api/events/{event_id}", headers=AUTH)

    assert response.status_code == 200
    detail = response.get_json()
    assert (detail["id"], detail["status"], detail["kind"]) == (event_id, "processed", "ipn")
    assert detail["verification"] == {"signature_algo": "sha256", "key_index": 0}
    assert detail["headers"]["User-Agent"].startswith("Werkzeug")
    assert detail["fields"]["REFNO"] == ["R330"]
    assert detail["raw_body"] == bytes(row(conn, event_id)["raw_body"]).decode()
    assert detail["dedupe_key"].startswith("ipn:")
    assert (detail["last_error"], detail["last_traceback"]) == (None, None)
    [change] = detail["changes"]
    assert (change["license_code"], change["change"]) == ("LIC-DETAIL", "created")
    assert change["after"]["status"] == "active"
    [email] = detail["emails"]
    assert (email["kind"], email["status"], email["event_id"]) == (
        "order_confirmation",
        "sent",
        event_id,
    )
    assert email["to_address"] == "mario.rossi@example.com"


def test_get_event_of_a_dead_letter_has_its_error_and_traceback(admin, client, conn, catalog_file):
    event_id = post_signed(client, "/ipn", ipn("LIC-DEAD", refno="R331"))
    drain()

    detail = admin.get(f"/admin/api/events/{event_id}", headers=AUTH).get_json()

    assert detail["status"] == "failed"
    assert detail["last_error"].startswith("PermanentEventError: unknown product AWDOC-TEAM-M")
    assert detail["last_traceback"].startswith("Traceback (most recent call last):")
    assert (detail["changes"], detail["emails"]) == ([], [])


@pytest.mark.parametrize(
    ("event_id", "status", "message"),
    [
        ("42", 404, "no event with id 42"),
        ("abc", 400, "event id must be a positive whole number"),
        ("0", 400, "event id must be a positive whole number"),
        ("99999999999999999999", 400, "event id must be a positive whole number"),
    ],
)
def test_an_unknown_or_malformed_event_id_is_refused_in_json(admin, event_id, status, message):
    for method, path in (
        ("GET", f"/admin/api/events/{event_id}"),
        ("POST", f"/admin/api/events/{event_id}/replay"),
    ):
        response = call(admin, method, path, headers=AUTH)
        assert response.status_code == status
        assert message in response.get_json()["error"]


def test_post_event_replay_hands_the_event_to_the_workers(admin, conn):
    event_id = store_event(conn, signed(ipn("LIC-RP", refno="R340")))

    response = admin.post(f"/admin/api/events/{event_id}/replay", headers=AUTH)

    assert response.status_code == 202
    assert response.get_json() == {
        "event_ids": [event_id],
        "enqueued": 1,
        "dry_run": False,
        "previews": [],
        "errors": [],
        "refreshed": 0,
    }
    assert row(conn, event_id)["status"] == "enqueued"
    assert [(m["args"], m["kwargs"]) for m in queued_messages()] == [([event_id], {"emails": True})]


def test_post_event_replay_without_emails_says_so_to_the_worker(admin, conn):
    event_id = store_event(conn, signed(ipn("LIC-RQ", refno="R341")))
    response = admin.post(
        f"/admin/api/events/{event_id}/replay", headers=AUTH, json={"emails": False}
    )
    assert response.status_code == 202
    assert [m["kwargs"] for m in queued_messages()] == [{"emails": False}]


def test_post_event_replay_dry_run_previews_and_changes_nothing(
    admin, client, conn, catalog_file, mail_dir
):
    event_id = post_signed(client, "/ipn", ipn("LIC-RD", refno="R342"))
    drain()
    add_monthly_product(catalog_file)
    before = snapshot(conn), row(conn, event_id)

    response = admin.post(
        f"/admin/api/events/{event_id}/replay", headers=AUTH, json={"dry_run": True}
    )

    assert response.status_code == 200
    report = response.get_json()
    assert (report["dry_run"], report["enqueued"]) == (True, 0)
    [preview] = report["previews"]
    assert (preview["event_id"], preview["status"]) == (event_id, "processed")
    assert [c["change"] for c in preview["changes"]] == ["created"]
    assert [e["kind"] for e in preview["emails"]] == ["order_confirmation"]
    assert (snapshot(conn), row(conn, event_id)) == before
    assert queued_messages() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"dry_run": "yes"}', "dry_run must be true or false"),
        (b'{"emails": 0}', "emails must be true or false"),
        (b'{"dryrun": true}', "unknown field(s) dryrun"),
    ],
)
def test_a_bad_replay_body_is_400_and_replays_nothing(admin, conn, body, message):
    event_id = store_event(conn, signed(ipn("LIC-RB", refno="R343")))
    response = admin.post(
        f"/admin/api/events/{event_id}/replay",
        headers={**AUTH, "Content-Type": "application/json"},
        data=body,
    )
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert queued_messages() == []


def test_post_events_replay_takes_the_events_its_filter_names(admin, conn):
    failed = store_event(conn, signed(ipn("LIC-F1", refno="R350")), dedupe_key="f1")
    other = store_event(conn, signed(ipn("LIC-F2", refno="R351")), dedupe_key="f2")
    conn.execute("UPDATE events SET status = 'failed' WHERE id = %s", (failed,))

    response = admin.post("/admin/api/events/replay", headers=AUTH, json={"failed": True})
    assert response.status_code == 202
    assert response.get_json()["event_ids"] == [failed]

    by_license = admin.post(
        "/admin/api/events/replay",
        headers=AUTH,
        json={"license": "LIC-F2", "since": "2020-01-01", "emails": False},
    )
    assert by_license.status_code == 202
    assert by_license.get_json()["event_ids"] == [other]
    assert [(m["args"][0], m["kwargs"]) for m in queued_messages()] == [
        (failed, {"emails": True}),
        (other, {"emails": False}),
    ]

    nothing = admin.post("/admin/api/events/replay", headers=AUTH, json={"kind": "lcn"})
    assert nothing.status_code == 202
    assert nothing.get_json()["event_ids"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "say which events to replay"),
        ({"failed": False}, "say which events to replay"),
        ({"kind": "sms"}, "unknown kind 'sms'"),
        ({"since": "last week"}, "'last week' is not a date"),
        ({"license": 7}, "license must be a string"),
        ({"since": None, "until": "2026-01-01"}, "since must be a string"),
        ({"status": "failed"}, "unknown field(s) status"),
    ],
)
def test_a_bulk_replay_without_a_sensible_filter_is_400(admin, conn, body, message):
    store_event(conn, signed(ipn("LIC-NF", refno="R352")))
    response = admin.post("/admin/api/events/replay", headers=AUTH, json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert queued_messages() == []


def test_get_subscription_describes_it_and_an_unknown_one_is_404(admin, client, conn, mail_dir):
    post_signed(client, "/ipn", ipn("LIC-SUB", refno="R360"))
    drain()

    found = admin.get("/admin/api/subscriptions/LIC-SUB", headers=AUTH)
    assert found.status_code == 200
    sub = found.get_json()
    assert (sub["license_code"], sub["status"], sub["cycle"]) == ("LIC-SUB", "active", "monthly")
    assert sub["customer"]["email"] == "mario.rossi@example.com"
    assert sub["expires_at"] == "2026-02-10T09:00:00Z"
    assert [h["change"] for h in sub["history"]] == ["created"]

    missing = admin.get("/admin/api/subscriptions/LIC-NOPE", headers=AUTH)
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "no subscription with license code 'LIC-NOPE'"}
    assert admin.get("/admin/api/subscriptions/LIC%00SUB", headers=AUTH).status_code == 404


def test_get_emails_lists_the_outbox_by_recipient_kind_and_status(admin, client, conn, mail_dir):
    for number in range(3):  # one at a time, so email ids follow the orders
        post_signed(client, "/ipn", ipn(f"LIC-M{number}", refno=f"R37{number}"))
        drain()
    conn.execute("UPDATE emails SET to_address = 'Other@Example.com' WHERE id = 3")
    conn.execute("UPDATE emails SET status = 'failed', last_error = 'refused' WHERE id = 1")

    page = admin.get("/admin/api/emails?limit=2", headers=AUTH).get_json()
    assert [e["id"] for e in page["emails"]] == [3, 2]
    assert page["next"] == 2
    rest = admin.get("/admin/api/emails?limit=2&before=2", headers=AUTH).get_json()
    assert ([e["id"] for e in rest["emails"]], rest["next"]) == ([1], None)

    [failed] = admin.get("/admin/api/emails?status=failed", headers=AUTH).get_json()["emails"]
    assert failed == {
        "id": 1,
        "event_id": failed["event_id"],
        "license_code": "LIC-M0",
        "kind": "order_confirmation",
        "fact": "order/R370",
        "to_address": "mario.rossi@example.com",
        "locale": "en",
        "status": "failed",
        "attempts": 1,
        "last_error": "refused",
        "created_at": failed["created_at"],
        "sent_at": failed["sent_at"],
        "failure": None,
        "message_id": failed["message_id"],
    }
    to_other = admin.get("/admin/api/emails?to=other@example.COM", headers=AUTH).get_json()
    assert [e["id"] for e in to_other["emails"]] == [3]
    by_kind = admin.get("/admin/api/emails?kind=renewal_reminder", headers=AUTH).get_json()
    assert by_kind == {"emails": [], "next": None}
    for query, message in (
        ("status=lost", "unknown email status 'lost'"),
        ("to=a%00b", "to contains a NUL character"),
        ("recipient=x", "unknown query parameter(s) recipient"),
    ):
        bad = admin.get(f"/admin/api/emails?{query}", headers=AUTH)
        assert bad.status_code == 400
        assert message in bad.get_json()["error"]


def test_the_openapi_file_is_served_as_json(admin):
    response = admin.get("/admin/api/openapi.json", headers=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert json.loads(response.data)["info"]["title"] == "Rinnovo admin API"


@pytest.mark.slow  # a real gunicorn or dramatiq process
def test_with_the_database_down_the_api_answers_503_in_json(conn, proxy_factory):
    host, port = re.search(r"//([^:/]+):(\d+)", TEST_DATABASE_URL).groups()  # type: ignore[union-attr]
    pg_proxy = proxy_factory(host, int(port))
    dbname = TEST_DATABASE_URL.rsplit("/", 1)[1]
    receiver = Receiver(
        {
            "DATABASE_URL": f"postgresql://127.0.0.1:{pg_proxy.port}/{dbname}",
            "ADMIN_TOKEN": TOKEN,
            **QUICK_OUTAGE,
        }
    )
    try:
        up = requests.get(f"{receiver.url}/admin/api/events", headers=AUTH, timeout=15)
        assert up.status_code == 200
        pg_proxy.cut()
        down = requests.get(f"{receiver.url}/admin/api/events", headers=AUTH, timeout=15)
    finally:
        receiver.stop()
    assert down.status_code == 503
    assert down.json()["error"].startswith("database unavailable")
    assert down.headers["Retry-After"] == "30"


def test_get_event_lists_every_attempt_and_an_api_replay_adds_one_of_its_own(admin, conn):
    event_id = post_signed(admin, "/ipn", ipn("LIC-AT", refno="R360"))
    drain()

    admin.post(f"/admin/api/events/{event_id}/replay", headers=AUTH)
    drain()
    history = admin.get(f"/admin/api/events/{event_id}", headers=AUTH).get_json()["attempt_history"]

    assert [(a["requested_by"], a["status"], a["retry"]) for a in history] == [
        ("delivery", "processed", 0),
        ("replay-api", "processed", 0),
    ]
    assert history[0]["outcome"].startswith("LIC-AT: active until")
    assert history[0]["at"] <= history[1]["at"] and history[0]["enqueued_at"].endswith("Z")
