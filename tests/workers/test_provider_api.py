"""The REST 6.0 client against the fake provider: authentication, paging, faults, parsing."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal

import pytest

from tests.fake_provider import FakeProvider, order, provider_hash, subscription
from workers import provider_api
from workers.config import DEFAULT_API_URL, Settings
from workers.errors import ConfigError
from workers.provider_api import (
    AuthenticationFailed,
    Client,
    MalformedAnswer,
    ProviderApiError,
    ProviderUnavailable,
)

DOC_TIME = datetime(2020, 6, 18, 8, 5, 46, tzinfo=UTC)
SINCE = date(2026, 1, 1)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    yield provider
    provider.stop()


def client_for(fake: FakeProvider, key: str | None = None, **options: object) -> Client:
    """A client of the fake, quick to give up: timeouts and delays in tenths of a second."""
    settings = {"read_timeout": 0.5, "max_total": 5.0, "first_delay": 0.05} | options
    return Client(fake.url, fake.merchant_code, key or fake.key, "sha3-256", **settings)  # type: ignore[arg-type]


def everything(pages: Iterator[list[provider_api.Subscription]]) -> list[str]:
    return [sub.reference for page in pages for sub in page]


# --- the authentication header ------------------------------------------------------------------


def test_the_header_matches_the_documented_sha3_256_worked_example():
    assert provider_api.authentication("YOURCODE123", "SECRET_KEY", "sha3-256", DOC_TIME) == (
        'code="YOURCODE123" date="2020-06-18 08:05:46" '
        'hash="89cff582a336094aa0a917003e383016c173b0bcb38d812375b2b10ea6ce99ed" algo="sha3-256"'
    )


def test_the_header_matches_the_documented_sha256_worked_example():
    assert provider_api.authentication("YOURCODE123", "SECRET_KEY", "sha256", DOC_TIME) == (
        'code="YOURCODE123" date="2020-06-18 08:05:46" '
        'hash="483fc633a309cadc65b89519f55cc55e0d0611a6e1dfa62ac4d48fc3703a6a42" algo="sha256"'
    )


def test_the_signed_string_reproduces_the_vector_the_provider_published():
    source = provider_api.signed_string("AVANGATE", "2010-05-13 12:12:12")
    assert source == "8AVANGATE192010-05-13 12:12:12"
    # The published value is HMAC-MD5 of that string: the length-prefix recipe is the provider's.
    published = hmac.new(b"SECRET_KEY", source.encode(), hashlib.md5).hexdigest()
    assert published == "bf763db7d333e9c3038698cf59ada3e6"
    when = datetime(2010, 5, 13, 12, 12, 12, tzinfo=UTC)
    header = provider_api.authentication("AVANGATE", "SECRET_KEY", "sha3-256", when)
    assert 'hash="0c7e9c0c96148e5bf8e199a0a0e27977edc099ff0b27794e761853b96e04c7fb"' in header


def test_the_fake_checks_hashes_by_the_same_published_recipe():
    assert provider_hash("SECRET_KEY", "AVANGATE", "2010-05-13 12:12:12", "md5") == (
        "bf763db7d333e9c3038698cf59ada3e6"
    )
    assert provider_hash("SECRET_KEY", "AVANGATE", "2010-05-13 12:12:12", "sha256") == (
        "29e85dbf92ce0113e7755c31c0438a7db98a4de9f910bf0a527e005f35e43739"
    )


def test_lengths_in_the_signed_string_are_counted_in_utf8_bytes():
    assert provider_api.signed_string("CODÉ", "2026-01-01 00:00:00") == (
        "5CODÉ192026-01-01 00:00:00"
    )


def test_every_request_carries_a_fresh_header_and_json_headers_on_a_path_ending_in_a_slash(fake):
    ticks = itertools.count()
    clock = lambda: datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=next(ticks))  # noqa: E731
    fake.add_subscription(subscription("AAAA000001"), SINCE)
    with client_for(fake, clock=clock) as client:
        assert client.subscription("AAAA000001") is not None
        assert client.subscription("AAAA000001") is not None
    first, second = (seen.headers for seen in fake.seen)
    assert first["X-Avangate-Authentication"] != second["X-Avangate-Authentication"]
    for headers in (first, second):
        assert headers["Accept"] == "application/json"
        assert headers["Content-Type"] == "application/json"
    assert fake.paths() == [
        "/rest/6.0/subscriptions/AAAA000001/",
        "/rest/6.0/subscriptions/AAAA000001/",
    ]


def test_a_wrong_key_gives_one_clear_error_naming_the_code_and_algorithm_but_not_the_key(fake):
    with client_for(fake, key="WRONG-KEY-123") as client, pytest.raises(AuthenticationFailed) as e:
        client.subscription("AAAA000001")
    message = str(e.value)
    assert "RINNOVOTEST" in message and "sha3-256" in message
    assert "WRONG-KEY-123" not in message and "\n" not in message
    assert len(fake.seen) == 1  # refused credentials are not retried


def test_an_authentication_error_is_recognized_by_its_code_whatever_the_http_status(fake):
    fake.auth_status = 400
    with client_for(fake, key="WRONG") as client, pytest.raises(AuthenticationFailed):
        list(client.search_subscriptions(SINCE))


def test_a_header_dated_outside_the_providers_window_is_refused(fake):
    stale = lambda: datetime.now(UTC) - timedelta(hours=1)  # noqa: E731
    with client_for(fake, clock=stale) as client, pytest.raises(AuthenticationFailed):
        client.order("123456789")


# --- paging -------------------------------------------------------------------------------------


def test_searching_subscriptions_follows_pagination_count_two_hundred_at_a_time(fake):
    for n in range(450):
        fake.add_subscription(subscription(f"SUB{n:07d}"), SINCE + timedelta(days=n % 3))
    fake.add_subscription(subscription("OLD0000001"), SINCE - timedelta(days=1))
    with client_for(fake) as client:
        pages = list(client.search_subscriptions(SINCE))
    assert [len(page) for page in pages] == [200, 200, 50]
    assert sorted(sub.reference for page in pages for sub in page) == [
        f"SUB{n:07d}" for n in range(450)
    ]
    assert fake.paths() == [
        f"/rest/6.0/subscriptions/?ModifiedAfter=2026-01-01&Limit=200&Page={page}"
        for page in (1, 2, 3)
    ]


def test_a_search_answered_with_a_bare_list_is_accepted(fake):
    fake.bare_lists = True
    fake.add_subscription(subscription("BARE000001"), SINCE)
    fake.add_subscription(subscription("BARE000002"), SINCE)
    with client_for(fake) as client:
        assert everything(client.search_subscriptions(SINCE)) == ["BARE000001", "BARE000002"]
    assert len(fake.seen) == 1


def test_a_bare_list_that_ignores_the_page_asked_for_is_refused_not_read_forever(fake):
    fake.bare_lists = True
    for n in range(200):
        fake.add_subscription(subscription(f"SUB{n:07d}"), SINCE)
    with client_for(fake) as client, pytest.raises(MalformedAnswer, match="paging is ignored"):
        everything(client.search_subscriptions(SINCE))


def test_searching_orders_sends_the_window_and_pages(fake):
    for n in range(205):
        fake.add_order(order(f"{700000000 + n}", ordered="2026-03-02 10:00:00"))
    fake.add_order(order("699999999", ordered="2026-02-27 10:00:00"))
    with client_for(fake) as client:
        pages = list(client.search_orders(date(2026, 3, 1), date(2026, 3, 3)))
    assert [len(page) for page in pages] == [200, 5]
    assert fake.paths()[0] == (
        "/rest/6.0/orders/?StartDate=2026-03-01&EndDate=2026-03-03&Limit=200&Page=1"
    )


# --- faults -------------------------------------------------------------------------------------


def test_a_429_then_a_200_succeeds_after_waiting_as_retry_after_says(fake):
    fake.add_subscription(subscription("AAAA000001"), SINCE)
    fake.fail_next(1, "429", retry_after="1")
    start = time.monotonic()
    with client_for(fake) as client:
        assert everything(client.search_subscriptions(SINCE)) == ["AAAA000001"]
    assert len(fake.seen) == 2
    assert time.monotonic() - start >= 1.0  # Retry-After, not the 0.05 s backoff


def test_timeouts_cut_connections_cut_bodies_and_5xx_are_retried_until_an_answer_comes(fake):
    fake.stall_seconds = 1.5
    fake.add_order(order("123456789", ordered="2026-03-02 10:00:00"))
    for fault in ("timeout", "reset", "truncated", "500", "503"):
        fake.fail_next(1, fault)
    with client_for(fake, read_timeout=0.3) as client:
        found = client.order("123456789")
    assert found is not None and found.refno == "123456789"
    assert len(fake.seen) == 6


def test_5xx_without_end_gives_up_within_the_bounded_time(fake):
    fake.fail_next(1000, "500")
    start = time.monotonic()
    client = client_for(fake, max_total=1.0, first_delay=0.1)
    with client, pytest.raises(ProviderUnavailable, match="within 1 s") as e:
        client.subscription("AAAA000001")
    assert "HTTP 500" in str(e.value)
    assert 2 <= len(fake.seen) <= 6  # 0.1, 0.2, 0.4 s apart, then the budget is spent
    assert time.monotonic() - start < 1.0 + 0.5  # the budget, plus one request's slack


def test_a_retry_after_beyond_the_budget_gives_up_at_once_instead_of_sleeping(fake):
    fake.fail_next(1, "503", retry_after="3600")
    with client_for(fake) as client, pytest.raises(ProviderUnavailable, match="HTTP 503"):
        client.subscription("AAAA000001")
    assert len(fake.seen) == 1


def test_retry_after_is_read_in_seconds_or_as_an_http_date():
    assert provider_api._retry_after("7") == 7.0
    later = datetime.now(UTC) + timedelta(seconds=90)
    waited = provider_api._retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert waited is not None and 80 < waited <= 90
    assert provider_api._retry_after("soon") is None


@pytest.mark.parametrize("fault", ["garbage", "shape"])
def test_a_page_that_cannot_be_parsed_stops_the_search_and_yields_nothing_of_it(fake, fault):
    for n in range(250):
        fake.add_subscription(subscription(f"SUB{n:07d}"), SINCE)
    with client_for(fake) as client:
        pages = client.search_subscriptions(SINCE)
        assert len(next(pages)) == 200
        fake.fail_next(1, fault)
        with pytest.raises(MalformedAnswer, match="subscriptions"):
            next(pages)
    assert len(fake.seen) == 2  # a malformed answer is not retried


def test_one_bad_object_spoils_its_whole_page(fake):
    fake.add_subscription(subscription("GOOD000001"), SINCE)
    fake.add_subscription(subscription("BAD0000001", RecurringEnabled="yes"), SINCE)
    with client_for(fake) as client, pytest.raises(MalformedAnswer) as e:
        everything(client.search_subscriptions(SINCE))
    assert "BAD0000001" in str(e.value) and "RecurringEnabled" in str(e.value)


def test_an_unknown_reference_is_none_and_other_refusals_are_errors(fake):
    with client_for(fake) as client:
        assert client.subscription("NOPE000001") is None
        assert client.order("999999999") is None
        fake.add_subscription(subscription("AAAA000001"), SINCE)
        with pytest.raises(ProviderApiError, match="Limit is 1 to 200"):
            client._get("subscriptions", {"Limit": "500"})


# --- records ------------------------------------------------------------------------------------


def test_a_subscription_becomes_a_typed_record(fake):
    fake.add_subscription(
        subscription("AAAA000001", expires="2027-01-10", quantity=3, recurring=False, enabled=True),
        SINCE,
    )
    with client_for(fake) as client:
        sub = client.subscription("AAAA000001")
    assert sub == provider_api.Subscription(
        reference="AAAA000001",
        product_code="AWDOC-TEAM-Y",
        quantity=3,
        expires_at=datetime(2027, 1, 10, tzinfo=UTC),
        recurring=False,
        enabled=True,
        email="customer@example.com",
        name="Mario Rossi",
        lifetime=False,
        status=None,
        starts_at=datetime(2026, 1, 10, tzinfo=UTC),
        first_name="Mario",
        last_name="Rossi",
    )


def test_an_order_becomes_a_typed_record_with_its_subscriptions(fake):
    fake.add_order(order("123456789", ordered="2026-03-02 10:00:00", references=("A1", "B2")))
    with client_for(fake) as client:
        found = client.order("123456789")
    assert found is not None
    assert (found.status, found.currency, found.gross_price) == ("COMPLETE", "EUR", Decimal("300"))
    assert found.subscription_references == ("A1", "B2")
    assert found.ordered_at == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert found.items[0].product_code == "AWDOC-TEAM-Y"
    assert (found.email, found.first_name) == ("customer@example.com", "Mario")


def test_a_stored_record_is_told_apart_by_its_reference_field():
    sub = provider_api.parse_record(subscription("AAAA000001"))
    placed = provider_api.parse_record(order("123456789", ordered="2026-03-02 10:00:00"))
    assert isinstance(sub, provider_api.Subscription) and sub.raw["SubscriptionReference"]
    assert isinstance(placed, provider_api.Order) and placed.refno == "123456789"


def test_an_expiry_with_an_offset_is_taken_to_utc():
    raw = subscription("AAAA000001", expires="2027-01-10T01:00:00+02:00")
    assert provider_api.parse_subscription(raw).expires_at == datetime(2027, 1, 9, 23, tzinfo=UTC)


def test_a_lifetime_subscription_may_come_without_an_expiry():
    raw = subscription("LIFE000001", lifetime=True)
    del raw["ExpirationDate"]
    assert provider_api.parse_subscription(raw).expires_at is None
    del raw["Lifetime"]
    with pytest.raises(MalformedAnswer, match="ExpirationDate"):
        provider_api.parse_subscription(raw)


@pytest.mark.parametrize(
    "change",
    [
        {"ExpirationDate": "10/01/2027"},
        {"Product": None},
        {"SubscriptionEnabled": 1},
        {"SubscriptionReference": None},
    ],
)
def test_a_subscription_of_the_wrong_shape_is_refused(change):
    with pytest.raises(MalformedAnswer):
        provider_api.parse_subscription(subscription("AAAA000001") | change)


# --- settings -----------------------------------------------------------------------------------


def test_the_api_is_off_without_a_merchant_code_and_defaults_to_sha3_256():
    settings = Settings.from_env({})
    assert (settings.merchant_code, settings.api_url, settings.api_algo) == (
        None,
        DEFAULT_API_URL,
        "sha3-256",
    )
    with pytest.raises(ConfigError, match="TWOCHECKOUT_MERCHANT_CODE is not set"):
        Client.from_settings(settings)


def test_the_first_secret_key_signs_with_the_configured_algorithm():
    settings = Settings.from_env(
        {
            "TWOCHECKOUT_MERCHANT_CODE": "YOURCODE123",
            "TWOCHECKOUT_SECRET_KEY": "SECRET_KEY,older-key",
            "TWOCHECKOUT_API_ALGO": "SHA256",
            "TWOCHECKOUT_API_URL": "https://api.example.test/rest/6.0/",
        }
    )
    client = Client.from_settings(settings, clock=lambda: DOC_TIME)
    assert client.base_url == "https://api.example.test/rest/6.0"
    assert (
        "483fc633a309cadc65b89519f55cc55e0d0611a6e1dfa62ac4d48fc3703a6a42"
        in (client._headers()["X-Avangate-Authentication"])
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TWOCHECKOUT_API_ALGO", "md5"),
        ("TWOCHECKOUT_API_ALGO", "sha512"),
        ("TWOCHECKOUT_MERCHANT_CODE", 'CODE" algo="md5'),
        ("TWOCHECKOUT_MERCHANT_CODE", "CODE\r\nX-Other: 1"),
        ("TWOCHECKOUT_API_URL", "ftp://api.example.test"),
        ("RECONCILE_AT", "25:00"),
        ("RECONCILE_AT", "3h30"),
        ("RECONCILE_EMAIL_MAX_AGE", "two"),
        ("EXPECTED_NOTIFICATION_GRACE", "-1"),
    ],
)
def test_settings_the_api_cannot_use_stop_with_a_clear_error(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_the_reconciliation_settings_have_their_defaults_and_can_be_turned_off():
    defaults = Settings.from_env({})
    assert (defaults.reconcile_at, defaults.reconcile_email_max_age) == (clock(3, 30), timedelta(2))
    assert defaults.expected_notification_grace == timedelta(hours=6)
    chosen = Settings.from_env(
        {"RECONCILE_AT": "off", "RECONCILE_EMAIL_MAX_AGE": "7", "EXPECTED_NOTIFICATION_GRACE": "12"}
    )
    assert chosen.reconcile_at is None and chosen.reconcile_email_max_age == timedelta(days=7)
    assert chosen.expected_notification_grace == timedelta(hours=12)
    assert Settings.from_env({"RECONCILE_AT": "04:05"}).reconcile_at == clock(4, 5)
