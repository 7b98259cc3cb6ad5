"""The admin page over Flask's test client: login, CSRF, filters, detail, replay, subscriptions."""

from __future__ import annotations

import re
import time

import pytest
from psycopg.types.json import Jsonb

from tests.support import FORM, broker, insert_subscription, signed_ipn
from webhooks.admin import sessions
from webhooks.app import create_app
from workers.ops import samples
from workers.protocol import form

TOKEN = "correct horse battery staple"


@pytest.fixture
def admin(conn):
    return create_app({"ADMIN_TOKEN": TOKEN}).test_client()


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def log_in(client, token: str = TOKEN, next_page: str = ""):
    page = client.get("/admin/login")
    return client.post(
        "/admin/login",
        data={"csrf_token": csrf(page.text), "token": token, "next": next_page},
    )


def plain(html: str) -> str:
    """The page's text as a person reads it: no tags, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split()).replace(" :", ":")


@pytest.fixture
def logged_in(admin):
    assert log_in(admin).status_code == 303
    return admin


def store_event(conn, *, status: str = "received", summary: str = "COMPLETE REGULAR",
                kind: str = "ipn", license_code: str = "LIC0000001", error: str | None = None,
                traceback: str | None = None, received_at: str | None = None,
                fields: dict | None = None) -> int:  # fmt: skip
    fields = fields or {"REFNO": ["1"], "ORDERSTATUS": ["COMPLETE"]}
    row = conn.execute(
        """
        INSERT INTO events (kind, dedupe_key, status, raw_body, content_type, headers, fields,
                            signature_algo, key_index, summary, license_codes, last_error,
                            last_traceback, received_at)
        VALUES (%s, %s, %s, %s, 'application/x-www-form-urlencoded', %s, %s, 'sha256', 1,
                %s, %s, %s, %s, coalesce(%s::timestamptz, now()))
        RETURNING id
        """,
        (
            kind, f"{kind}:{time.monotonic_ns()}", status,
            form.encode([(name, value) for name, values in fields.items() for value in values]),
            Jsonb({"User-Agent": "2Checkout"}), Jsonb(fields),
            summary, [license_code], error, traceback, received_at,
        ),
    ).fetchone()  # fmt: skip
    return int(row["id"])


def test_without_an_admin_token_the_page_says_it_is_disabled_with_404(conn):
    client = create_app({"ADMIN_TOKEN": ""}).test_client()

    for path in ("/admin/", "/admin/login", "/admin/events/1"):
        response = client.get(path)
        assert response.status_code == 404
        assert "Set ADMIN_TOKEN to turn the admin page on." in response.text
    assert client.post("/admin/login", data={"token": ""}).status_code == 404


def test_a_visitor_without_a_session_is_sent_to_the_login_form(admin):
    response = admin.get("/admin/?status=failed")

    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login?next=/admin/?status%3Dfailed"
    form = admin.get(response.headers["Location"])
    assert form.status_code == 200
    assert 'type="password" name="token"' in form.text
    assert 'name="next" value="/admin/?status=failed"' in form.text


def test_the_right_token_logs_in_with_a_protected_session_cookie_and_goes_where_asked(admin):
    response = log_in(admin, next_page="/admin/?status=failed")

    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/?status=failed"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("rinnovo_admin=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert TOKEN not in cookie
    assert admin.get("/admin/").status_code == 200


def test_a_wrong_token_is_refused_and_starts_no_session(admin):
    response = log_in(admin, token="not it")

    assert response.status_code == 403
    assert "That is not the admin token." in response.text
    assert admin.get("/admin/").status_code == 302


def test_a_login_post_without_the_form_s_csrf_token_is_refused(admin):
    response = admin.post("/admin/login", data={"token": TOKEN})

    assert response.status_code == 400
    assert "This form is no longer valid" in response.text
    assert admin.get("/admin/").status_code == 302


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/admin/", "/ipn"])
def test_after_login_the_page_never_redirects_off_the_admin_page(admin, target):
    response = log_in(admin, next_page=target)

    assert response.headers["Location"] == "/admin/"


def test_the_session_cookie_works_in_every_worker_with_the_same_token_and_no_other(conn):
    first = create_app({"ADMIN_TOKEN": TOKEN}).test_client()
    log_in(first)
    cookie = first.get_cookie("rinnovo_admin", path="/admin")
    assert cookie is not None

    same = create_app({"ADMIN_TOKEN": TOKEN}).test_client()
    same.set_cookie("rinnovo_admin", cookie.value, path="/admin")
    assert same.get("/admin/").status_code == 200

    rotated = create_app({"ADMIN_TOKEN": "a new, longer admin token"}).test_client()
    rotated.set_cookie("rinnovo_admin", cookie.value, path="/admin")
    assert rotated.get("/admin/").status_code == 302


def test_a_session_older_than_twelve_hours_must_log_in_again(logged_in):
    with logged_in.session_transaction() as session:
        session["at"] = int(time.time()) - sessions.SESSION_SECONDS - 1

    assert logged_in.get("/admin/").status_code == 302


def test_logging_out_ends_the_session(logged_in):
    page = logged_in.get("/admin/")
    response = logged_in.post("/admin/logout", data={"csrf_token": csrf(page.text)})

    assert response.status_code == 303
    assert logged_in.get("/admin/").status_code == 302


def test_every_admin_page_forbids_framing_scripts_and_caching(logged_in):
    response = logged_in.get("/admin/")

    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script" not in response.text


def test_the_list_filters_by_status_and_links_each_event_and_license(logged_in, conn):
    failed = store_event(conn, status="failed", error="PermanentEventError: unknown product X",
                         license_code="LICFAILED1")  # fmt: skip
    processed = store_event(conn, status="processed", license_code="LICDONE001")

    everything = logged_in.get("/admin/")
    only_failed = logged_in.get("/admin/?status=failed")

    assert f'href="/admin/events/{processed}"' in everything.text
    assert f'href="/admin/events/{failed}"' in everything.text
    assert f'href="/admin/events/{failed}"' in only_failed.text
    assert f'href="/admin/events/{processed}"' not in only_failed.text
    assert "PermanentEventError: unknown product X" in only_failed.text
    assert 'href="/admin/subscriptions/LICFAILED1"' in only_failed.text
    assert '<option value="failed" selected>' in only_failed.text


def test_the_list_filters_by_kind_license_and_time(logged_in, conn):
    old = store_event(conn, kind="lcn", license_code="LICA", received_at="2026-01-05T10:00:00Z")
    new = store_event(conn, kind="ipn", license_code="LICB", received_at="2026-02-05T10:00:00Z")

    def ids(query: str) -> set[int]:
        text = logged_in.get(f"/admin/?{query}").text
        return {int(found) for found in re.findall(r'href="/admin/events/(\d+)"', text)}

    assert ids("kind=lcn") == {old}
    assert ids("license=LICB") == {new}
    assert ids("since=2026-02-01") == {new}
    assert ids("until=2026-01-31") == {old}
    assert ids("since=2026-01-01&until=2026-01-04") == set()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=lost", "unknown status &#39;lost&#39;"),
        ("kind=fax", "unknown kind &#39;fax&#39;"),
        ("since=yesterday", "&#39;yesterday&#39; is not a date"),
        ("since=2026-02-01&until=2026-01-01", "since must be before until"),
        ("before=ten", "before must be an event id"),
    ],
)
def test_a_filter_that_cannot_be_understood_is_a_400_that_says_why(logged_in, conn, query, message):
    response = logged_in.get(f"/admin/?{query}")

    assert response.status_code == 400
    assert message in response.text


def test_the_list_pages_backwards_fifty_at_a_time(logged_in, conn):
    ids = [store_event(conn, status="failed") for _ in range(55)]

    first = logged_in.get("/admin/?status=failed").text
    cursor = re.search(r'href="(/admin/\?before=\d+[^"]*)"', first)
    assert cursor, first
    second = logged_in.get(cursor.group(1).replace("&amp;", "&")).text

    shown = [int(i) for i in re.findall(r'href="/admin/events/(\d+)"', first + second)]
    assert shown == sorted(ids, reverse=True)


def test_an_event_page_shows_what_arrived_its_error_and_what_it_caused(logged_in, conn):
    event_id = store_event(
        conn, status="failed", license_code="LICSHOW01", error="ValueError: bad <thing>",
        traceback='Traceback (most recent call last):\n  File "x.py"\nValueError: bad <thing>',
        fields={"CUSTOMEREMAIL": ["a@example.com"], "IPN_PID[]": ["1", "2"]},
    )  # fmt: skip
    customer = conn.execute(
        "INSERT INTO customers (email, customer_key) VALUES ('a@example.com', 'a') RETURNING id"
    ).fetchone()["id"]
    sub = conn.execute(
        """
        INSERT INTO subscriptions (license_code, customer_id, product_code, product, status)
        VALUES ('LICSHOW01', %s, 'AWDOC-TEAM-M', 'AWDoc', 'active') RETURNING id
        """,
        (customer,),
    ).fetchone()["id"]
    conn.execute(
        """
        INSERT INTO subscription_history (subscription_id, event_id, change, before, after, note)
        VALUES (%s, %s, 'renewed', '{"expires_at": "2026-06-30"}', '{"expires_at": "2026-07-30"}',
                'manual renewal before expiry')
        """,
        (sub, event_id),
    )
    conn.execute(
        """
        INSERT INTO emails (subscription_id, event_id, kind, fact, to_address, locale, status,
                            message_id)
        VALUES (%s, %s, 'renewal_confirmation', 'f', 'a@example.com', 'it', 'sent', '<m@r>')
        """,
        (sub, event_id),
    )

    page = logged_in.get(f"/admin/events/{event_id}")

    assert page.status_code == 200
    text = page.text
    assert '<span class="status status-failed" id="status">failed</span>' in text
    assert "ValueError: bad &lt;thing&gt;" in text and "bad <thing>" not in text
    assert "Traceback (most recent call last):" in text
    assert "a@example.com" in text and "IPN_PID[]" in text and "1<br>2" in text
    fields_table = text[text.index('id="fields"') :]
    # In the order they arrived, not the stored JSON's (which sorts shorter names first).
    assert fields_table.index("CUSTOMEREMAIL") < fields_table.index("IPN_PID[]")
    assert "sha256, key #2 of the configured keys" in text
    assert "2Checkout" in text  # the User-Agent header kept at receipt
    assert "manual renewal before expiry" in text
    assert "expires_at: 2026-06-30 → 2026-07-30" in plain(text)
    assert "renewal_confirmation" in text
    assert 'http-equiv="refresh"' not in text  # nothing to wait for


def test_a_value_from_the_provider_is_escaped_on_the_page(logged_in, conn):
    event_id = store_event(conn, fields={"FIRSTNAME": ['<script>alert("x")</script>']})

    text = logged_in.get(f"/admin/events/{event_id}").text

    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text


def test_an_event_that_does_not_exist_is_a_404(logged_in, conn):
    assert logged_in.get("/admin/events/999999").status_code == 404
    assert logged_in.get("/admin/events/abc").status_code == 404


def test_replay_without_the_session_s_csrf_token_is_refused_and_changes_nothing(
    logged_in, conn, queued
):
    event_id = store_event(conn, status="failed")

    for data in ({}, {"csrf_token": "forged"}):
        response = logged_in.post(f"/admin/events/{event_id}/replay", data=data)
        assert response.status_code == 400

    assert conn.execute("SELECT status FROM events").fetchone()["status"] == "failed"
    assert queued() == []


def test_the_replay_button_enqueues_the_event_and_says_so(logged_in, client, conn, queued):
    assert client.post("/ipn", data=signed_ipn(), headers=FORM).status_code == 200
    event_id = conn.execute("SELECT id FROM events").fetchone()["id"]
    conn.execute(
        "UPDATE events SET status = 'failed', last_error = 'boom' WHERE id = %s", (event_id,)
    )
    broker.flush_all()
    page = logged_in.get(f"/admin/events/{event_id}")

    response = logged_in.post(
        f"/admin/events/{event_id}/replay", data={"csrf_token": csrf(page.text), "emails": "1"}
    )

    assert response.status_code == 303
    assert response.headers["Location"] == f"/admin/events/{event_id}"
    assert conn.execute("SELECT status FROM events").fetchone()["status"] == "enqueued"
    assert queued() == [event_id]
    shown = logged_in.get(f"/admin/events/{event_id}").text
    assert f"Event {event_id} enqueued for replay." in shown
    assert 'http-equiv="refresh"' in shown  # the page follows it until a worker is done


def test_replay_without_emails_is_offered_and_passed_to_the_worker(logged_in, conn):
    event_id = store_event(conn, status="failed", fields=None)
    conn.execute(
        "UPDATE events SET raw_body = %s WHERE id = %s",
        (signed_ipn(items=(samples.SampleItem(license_ref="LICNOMAIL1"),)), event_id),
    )
    page = logged_in.get(f"/admin/events/{event_id}")
    assert "Replay without emails" in page.text

    response = logged_in.post(
        f"/admin/events/{event_id}/replay", data={"csrf_token": csrf(page.text), "emails": "0"}
    )

    assert response.status_code == 303
    assert "enqueued for replay without emails" in logged_in.get(response.headers["Location"]).text
    raw = broker.client.hvals(f"{broker.namespace}:default.msgs")
    assert [b'"emails":false' in item for item in raw] == [True]


def test_a_subscription_page_shows_state_customer_history_and_a_policy_mismatch(logged_in, conn):
    customer = conn.execute(
        """
        INSERT INTO customers (email, first_name, last_name, locale, customer_key)
        VALUES ('m@example.com', 'Mario', 'Rossi', 'it', 'm') RETURNING id
        """
    ).fetchone()["id"]
    sub = conn.execute(
        """
        INSERT INTO subscriptions (license_code, customer_id, product_code, product, edition,
                                   status, expires_at, expected_expires_at, policy_mismatch)
        VALUES ('LICSUB0001', %s, 'AWDOC-TEAM-M', 'AWDoc', 'TEAM', 'past_due',
                '2026-07-30', '2026-06-30', true)
        RETURNING id
        """,
        (customer,),
    ).fetchone()["id"]
    event_id = store_event(conn, license_code="LICSUB0001")
    conn.execute(
        """
        INSERT INTO subscription_history (subscription_id, event_id, change, note)
        VALUES (%s, %s, 'license', 'LCN PASTDUE by SYSTEM')
        """,
        (sub, event_id),
    )

    page = logged_in.get("/admin/subscriptions/LICSUB0001")

    assert page.status_code == 200
    assert '<span class="status status-past_due" id="status">past_due</span>' in page.text
    assert "Mario Rossi &lt;m@example.com&gt;" in page.text
    assert "differs from the policy" in page.text
    assert "LCN PASTDUE by SYSTEM" in page.text
    assert f'href="/admin/events/{event_id}"' in page.text
    assert 'href="/admin/?license=LICSUB0001"' in page.text


def test_the_license_lookup_goes_to_the_subscription_or_says_there_is_none(logged_in, conn):
    found = logged_in.get("/admin/subscriptions?license=LIC%20X")
    assert found.status_code == 302
    assert found.headers["Location"] == "/admin/subscriptions/LIC%20X"

    missing = logged_in.get("/admin/subscriptions/LIC%20X")
    assert missing.status_code == 404
    assert "No subscription has license LIC X." in missing.text
    assert logged_in.get("/admin/subscriptions?license=").status_code == 400


def test_a_change_the_policy_refused_is_flagged_without_a_policy_expiry_to_compare(logged_in, conn):
    customer = conn.execute(
        "INSERT INTO customers (email, customer_key) VALUES ('r@example.com', 'r') RETURNING id"
    ).fetchone()["id"]
    conn.execute(
        """
        INSERT INTO subscriptions (license_code, customer_id, product_code, product, status,
                                   expires_at, expected_expires_at, policy_mismatch)
        VALUES ('LICSUB0002', %s, 'AWDOC-BUSINESS-M', 'AWDoc', 'active', '2026-03-03', NULL, true)
        """,
        (customer,),
    )

    page = logged_in.get("/admin/subscriptions/LICSUB0002")

    assert "the policy refused a change the provider made" in page.text
    assert "None" not in page.text


def test_times_read_to_the_second_and_history_reads_as_before_and_after(logged_in, conn):
    event_id = store_event(conn, received_at="2026-01-31T10:00:00.123456Z")
    sub = insert_subscription(conn, license_code="LIC0000001", expires_at=None)
    conn.execute(
        """
        INSERT INTO subscription_history (subscription_id, event_id, change, before, after, at)
        VALUES (%s, %s, 'renewal switched', %s, %s, '2026-02-01T08:30:00.654321Z')
        """,
        (
            sub,
            event_id,
            Jsonb({"auto_renew": False, "expires_at": "2026-06-30T00:00:00Z"}),
            Jsonb({"auto_renew": True, "expires_at": "2026-07-30T00:00:00.000250Z"}),
        ),
    )

    for path in (f"/admin/events/{event_id}", "/admin/subscriptions/LIC0000001"):
        text = logged_in.get(path).text
        readable = plain(text)
        assert "auto_renew: no → yes" in readable, path
        assert "expires_at: 2026-06-30 00:00:00 UTC → 2026-07-30 00:00:00 UTC" in readable, path
        assert "2026-02-01 08:30:00 UTC" in readable, path
        assert "True" not in readable and "False" not in readable, path
        assert not re.search(r"\d\d:\d\d:\d\d\.\d", text), path  # no fractions of a second
    assert "2026-01-31 10:00:00 UTC" in plain(logged_in.get("/admin/").text)


def test_blank_fields_are_folded_away_behind_a_toggle(logged_in, conn):
    event_id = store_event(
        conn, fields={"REFNO": ["1"], "COMPANY": [""], "FAX": [""], "IPN_PID[]": ["1", "2"]}
    )

    text = logged_in.get(f"/admin/events/{event_id}").text

    shown = text[text.index('id="fields"') : text.index("</table>", text.index('id="fields"'))]
    assert "REFNO" in shown and "IPN_PID[]" in shown
    assert "COMPANY" not in shown and "FAX" not in shown
    folded = text[text.index('<details id="blank-fields">') :]
    assert "2 blank fields not shown" in folded and "COMPANY, FAX" in folded


def test_a_failed_event_s_end_is_labelled_failed_and_each_attempt_is_listed(logged_in, conn):
    event_id = store_event(conn, status="failed", error="PermanentEventError: unknown product X")
    conn.execute(
        "UPDATE events SET processed_at = '2026-03-01T09:00:00Z', enqueued_by = 'replay-page' "
        "WHERE id = %s",
        (event_id,),
    )
    conn.execute(
        """
        INSERT INTO event_attempts (event_id, at, requested_by, retry, status, outcome)
        VALUES (%s, '2026-03-01T08:00:00Z', 'delivery', 0, 'failed', 'PermanentEventError: one'),
               (%s, '2026-03-01T09:00:00Z', 'replay-page', 2, 'failed', 'PermanentEventError: two')
        """,
        (event_id, event_id),
    )

    text = logged_in.get(f"/admin/events/{event_id}").text

    assert '<th id="finished-label">Failed</th>' in text
    assert ">Processed<" not in text
    attempts = plain(text[text.index('id="attempts"') :])
    assert attempts.index("provider delivery") < attempts.index("replay (admin page), retry 2")
    assert "2026-03-01 08:00:00 UTC failed provider delivery" in attempts


@pytest.mark.parametrize("path", ["/admin/nothing-here", "/admin/events/1/nothing"])
def test_an_unknown_admin_page_is_a_styled_404(logged_in, conn, path):
    response = logged_in.get(path)
    assert response.status_code == 404
    assert "<h1>Page not found</h1>" in response.text
    assert "Rinnovo admin" in response.text and "<style>" in response.text
    assert response.headers["X-Frame-Options"] == "DENY"


def test_unknown_paths_elsewhere_keep_their_own_404(logged_in, conn):
    api = logged_in.get("/admin/api/nothing-here")
    assert api.status_code == 401 and api.is_json  # the API's own answer, JSON
    elsewhere = logged_in.get("/nothing-here")
    assert elsewhere.status_code == 404 and "Page not found" not in elsewhere.text
