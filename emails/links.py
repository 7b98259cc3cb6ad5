"""Links in emails: the customer portal and the renewal link, built from configuration.

Templates never assemble a URL: callers build ``portal_url`` and ``renewal_url`` here and
pass them in the rendering context.

``RENEWAL_URL`` is a template with these placeholders, each replaced by its value
percent-encoded (``quote(value, safe="")``, so ``/``, ``&``, ``+`` and ``@`` are encoded too):

- ``{license_code}``: the subscription's license code at the provider;
- ``{product_code}``: the product's code in the catalog;
- ``{email}``: the customer's email address.

A placeholder may appear more than once or not at all; ``{{`` and ``}}`` stand for literal
braces. Any other placeholder is a configuration error (``ValueError``). Example::

    https://secure.2checkout.com/renewal/?LICENSE={license_code}&PRODUCT={product_code}
"""

from __future__ import annotations

import string
from urllib.parse import quote, urlsplit

PLACEHOLDERS: tuple[str, ...] = ("license_code", "product_code", "email")

_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f", " "}


def check_http_url(url: str) -> str:
    """Return ``url`` unchanged if it is an absolute http(s) URL, else raise ``ValueError``."""
    if not isinstance(url, str):
        raise ValueError(f"URL must be a string, not {type(url).__name__}")
    if any(ch in _CONTROL for ch in url):
        raise ValueError("URL contains whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    return url


def portal_url(base: str) -> str:
    """Return the customer portal URL (``PORTAL_URL``) after checking it is http(s)."""
    return check_http_url(base.strip())


def renewal_url(template: str, *, license_code: str, product_code: str, email: str) -> str:
    """Fill the ``RENEWAL_URL`` template with URL-quoted values and return an http(s) URL."""
    values = {"license_code": license_code, "product_code": product_code, "email": email}
    out: list[str] = []
    try:
        fields = list(string.Formatter().parse(template.strip()))
    except ValueError as exc:
        raise ValueError(f"malformed renewal URL template: {exc}") from None
    for literal, field, spec, conversion in fields:
        out.append(literal)
        if field is None:
            continue
        if field not in values or spec or conversion:
            raise ValueError(
                f"unknown placeholder {{{field}}} in renewal URL template; "
                f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        out.append(quote(str(values[field]), safe=""))
    return check_http_url("".join(out))
