"""Tests for the portal and renewal links."""

from __future__ import annotations

import pytest

from emails.links import portal_url, renewal_url

TEMPLATE = "https://shop.example.com/renew?license={license_code}&product={product_code}&e={email}"


def test_renewal_url_fills_every_placeholder_url_quoted() -> None:
    url = renewal_url(
        TEMPLATE, license_code="AB/12+3", product_code="DOC FLOW", email="mario+rossi@example.com"
    )
    assert url == (
        "https://shop.example.com/renew?license=AB%2F12%2B3&product=DOC%20FLOW"
        "&e=mario%2Brossi%40example.com"
    )


def test_a_value_cannot_smuggle_extra_query_parameters_into_the_renewal_url() -> None:
    url = renewal_url(TEMPLATE, license_code="X&admin=1#frag", product_code="P", email="a@b.it")
    assert "license=X%26admin%3D1%23frag&" in url


def test_placeholders_may_repeat_or_be_left_out_and_double_braces_are_literal() -> None:
    url = renewal_url(
        "https://x.example/{license_code}/{license_code}?t={{v}}",
        license_code="L1",
        product_code="unused",
        email="unused@example.com",
    )
    assert url == "https://x.example/L1/L1?t={v}"


@pytest.mark.parametrize(
    "template",
    [
        "https://x.example/?l={license}",
        "https://x.example/?l={}",
        "https://x.example/?l={license_code!r}",
        "https://x.example/?l={license_code:>10}",
        "https://x.example/?l={license_code.upper}",
        "https://x.example/?l={license_code",
    ],
)
def test_an_unknown_or_malformed_placeholder_is_a_value_error(template: str) -> None:
    with pytest.raises(ValueError):
        renewal_url(template, license_code="L", product_code="P", email="e@example.com")


@pytest.mark.parametrize(
    "template", ["ftp://x.example/{license_code}", "javascript:alert('{license_code}')", "/renew"]
)
def test_a_renewal_url_that_is_not_http_is_refused(template: str) -> None:
    with pytest.raises(ValueError):
        renewal_url(template, license_code="L", product_code="P", email="e@example.com")


def test_portal_url_returns_an_http_url_unchanged() -> None:
    assert portal_url(" https://secure.2checkout.com/myaccount/ ") == (
        "https://secure.2checkout.com/myaccount/"
    )
    assert portal_url("http://localhost:8000/portal") == "http://localhost:8000/portal"


@pytest.mark.parametrize(
    "base",
    ["javascript:alert(1)", "ftp://example.com/", "https://", "example.com", "https://a b.com/"],
)
def test_portal_url_refuses_anything_but_absolute_http_urls(base: str) -> None:
    with pytest.raises(ValueError):
        portal_url(base)
