"""One-click unsubscribe: the signed link, the POST that records, the GET that only asks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests

from emails import unsubscribe
from tests.conftest import SECRET_KEYS, TEST_DATABASE_URL
from tests.support import host_port, insert_subscription

KEYS = SECRET_KEYS.split(",")
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def customer_id(conn) -> int:
    sub_id = insert_subscription(
        conn, email="Giulia.Rossi@Example.com", expires_at=datetime(2030, 6, 30, tzinfo=UTC)
    )
    return int(
        conn.execute("SELECT customer_id FROM subscriptions WHERE id = %s", (sub_id,)).fetchone()[
            "customer_id"
        ]
    )


def suppressions(conn) -> list[dict]:
    return conn.execute("SELECT address, family, how FROM email_suppressions").fetchall()


def test_a_one_click_post_records_the_suppression_at_once(client, conn, customer_id):
    token = unsubscribe.make(KEYS, customer_id, "reminders")

    response = client.post(f"/unsubscribe/{token}", data=ONE_CLICK)

    assert response.status_code == 200
    assert suppressions(conn) == [
        {"address": "giulia.rossi@example.com", "family": "reminders", "how": "one-click"}
    ]


def test_a_get_shows_a_page_whose_button_posts_and_records_nothing(client, conn, customer_id):
    token = unsubscribe.make(KEYS, customer_id, "reminders")

    response = client.get(f"/unsubscribe/{token}")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    # The customer is Italian: the page speaks Italian, and its form posts the one-click body.
    assert 'lang="it"' in page and "promemoria di rinnovo" in page
    assert '<form method="post">' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert "<script" not in page
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert suppressions(conn) == []

    client.post(f"/unsubscribe/{token}", data={**ONE_CLICK, "from": "page"})
    assert [row["how"] for row in suppressions(conn)] == ["page"]


def foreign(token: str) -> str:
    """The same customer and family, signed with another installation's key."""
    return unsubscribe.make(["another shop's key"], int(token.split(".")[0]), "reminders")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda token: token[:-1], id="truncated"),
        pytest.param(lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"), id="forged"),
        pytest.param(foreign, id="foreign"),
        pytest.param(lambda token: "1" + token, id="another customer"),
        pytest.param(lambda token: "", id="empty"),
    ],
)
def test_a_tampered_token_is_refused_and_changes_nothing(client, conn, customer_id, tamper):
    token = tamper(unsubscribe.make(KEYS, customer_id, "reminders"))

    posted = client.post(f"/unsubscribe/{token}", data=ONE_CLICK)
    shown = client.get(f"/unsubscribe/{token}")

    assert posted.status_code in (400, 404) and shown.status_code in (400, 404)
    if token:
        assert (posted.status_code, shown.status_code) == (400, 400)
    assert suppressions(conn) == []


def test_a_post_without_the_one_click_body_is_refused(client, conn, customer_id):
    token = unsubscribe.make(KEYS, customer_id, "reminders")

    response = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "yes"})

    assert response.status_code == 400
    assert suppressions(conn) == []


def test_a_token_signed_with_an_older_key_still_works_after_a_rotation(client, conn, customer_id):
    token = unsubscribe.make(KEYS[1:], customer_id, "reminders")

    assert client.post(f"/unsubscribe/{token}", data=ONE_CLICK).status_code == 200
    assert len(suppressions(conn)) == 1


def test_a_token_names_only_a_customer_and_a_family():
    token = unsubscribe.make(KEYS, 42, "reminders")

    assert unsubscribe.read(KEYS, token) == unsubscribe.Token(42, "reminders")
    assert unsubscribe.read(KEYS, token.replace(".reminders.", ".receipts.")) is None
    with pytest.raises(ValueError, match="unknown email family"):
        unsubscribe.make(KEYS, 42, "receipts")


def test_with_the_database_down_a_one_click_post_answers_503_and_works_once_it_is_back(
    conn, customer_id, proxy_factory, receiver_factory
):
    proxy = proxy_factory(*host_port(TEST_DATABASE_URL))
    dbname = TEST_DATABASE_URL.rsplit("/", 1)[1]
    receiver = receiver_factory(DATABASE_URL=f"postgresql://127.0.0.1:{proxy.port}/{dbname}")
    link = f"{receiver.url}/unsubscribe/{unsubscribe.make(KEYS, customer_id, 'reminders')}"
    proxy.cut()

    down = requests.post(link, data=ONE_CLICK, timeout=30)
    proxy.start()
    back = requests.post(link, data=ONE_CLICK, timeout=30)

    assert (down.status_code, down.headers.get("Retry-After")) == (503, "60")
    assert back.status_code == 200
    assert len(suppressions(conn)) == 1
