"""Render an email kind in a locale to a subject, a text body and an HTML body.

Templates live in ``emails/templates/<kind>/<locale>/{subject.txt,body.txt,body.html}`` and
extend the shared layouts in ``emails/templates/_base/``. The context each kind needs is
documented in :mod:`emails.contexts`. Filters available to templates, all in the email's locale:

- ``date``: medium date ("30 giu 2026", "Jun 30, 2026") of an aware datetime or ISO string, in UTC;
- ``date_with_article(preposition="")``: in Italian the date with its article, optionally
  joined to ``"a"``, ``"da"`` or ``"di"`` ("il 30 giu 2026", "all'8 ago 2026"); in English the date;
- ``datetime``: medium date and short time, in UTC ("16 gen 2027, 12:00 UTC");
- ``money(currency)``: an amount in a currency ("1.000,00 €", "€1,000.00");
- ``number``: a number with the locale's separators;
- ``cycle``: ``monthly``/``annual`` as an adjective ("mensile"/"annuale");
- ``period``: ``monthly``/``annual`` as one period ("un mese"/"un anno").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import babel.numbers
import jinja2
from babel.dates import format_date, format_time, get_datetime_format

from emails.contexts import OPTIONAL_KEYS, REQUIRED_KEYS
from emails.links import check_http_url

KINDS: tuple[str, ...] = (
    "order_confirmation",
    "renewal_reminder",
    "auto_renewal_notice",
    "expiry_notice",
    "renewal_confirmation",
    "upgrade_confirmation",
    "payment_failed",
    "refund_notice",
    "cancellation_notice",
    "payment_recovered",
)
LOCALES: tuple[str, ...] = ("en", "it")

TEMPLATES_DIR = Path(__file__).parent / "templates"

_CYCLES: dict[str, dict[str, str]] = {
    "en": {"monthly": "monthly", "annual": "annual"},
    "it": {"monthly": "mensile", "annual": "annuale"},
}
_PERIODS: dict[str, dict[str, str]] = {
    "en": {"monthly": "one month", "annual": "one year"},
    "it": {"monthly": "un mese", "annual": "un anno"},
}
# Italian elides the article before days read with a leading vowel: l'1, l'8, l'11.
_ELIDED_DAYS = (1, 8, 11)
_IT_ARTICLES: dict[str, tuple[str, str]] = {
    "": ("il ", "l'"),
    "a": ("al ", "all'"),
    "da": ("dal ", "dall'"),
    "di": ("del ", "dell'"),
}
_URL_KEYS = ("portal_url", "renewal_url", "support_url")


class TemplateError(Exception):
    """An email could not be rendered (missing data, bad value or broken template): permanent."""


@dataclass(frozen=True)
class Rendered:
    """A rendered email: the kind, the locale actually used, and its three parts."""

    kind: str
    locale: str
    subject: str
    text: str
    html: str


def _language(tag: str | None) -> str:
    """Return the language part of a locale tag ("it_IT.UTF-8", "it-CH" -> "it")."""
    if not tag:
        return ""
    tag = tag.strip().replace("-", "_")
    for sep in (".", "@", "_"):
        tag = tag.split(sep, 1)[0]
    return tag.lower()


def template_locale(tag: str | None) -> str | None:
    """Return the locale with templates that ``tag`` names ("it_IT" -> "it"), or None."""
    language = _language(tag)
    return language if language in LOCALES else None


def resolve_locale(requested: str | None, default: str) -> str:
    """Return the supported locale for ``requested``, else ``default``, else ``"en"``."""
    for candidate in (_language(requested), _language(default)):
        if candidate in LOCALES:
            return candidate
    return "en"


def _to_utc(value: Any) -> datetime:
    """Return an aware datetime (or ISO 8601 string) as a UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date/time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} (times must be aware, in UTC)")
    return value.astimezone(UTC)


def _to_day(value: Any) -> date:
    """Return a calendar date from a date, an ISO date string, or an aware instant (in UTC)."""
    if type(value) is date:
        return value
    if isinstance(value, str) and len(value.strip()) == len("2026-06-30"):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO 8601 date: {value!r}") from None
    return _to_utc(value).date()


def _filters(locale: str) -> dict[str, Callable[..., str]]:
    """Return the template filters bound to ``locale``."""

    def date_filter(value: Any) -> str:
        """Format a date as the locale's medium date."""
        return format_date(_to_day(value), format="medium", locale=locale)

    def date_with_article_filter(value: Any, preposition: str = "") -> str:
        """Format a date preceded by its (articulated) article where the language needs one."""
        day = _to_day(value)
        text = format_date(day, format="medium", locale=locale)
        if locale != "it":
            return text
        plain, elided = _IT_ARTICLES[_lookup_key(_IT_ARTICLES, preposition, "preposition")]
        return (elided if day.day in _ELIDED_DAYS else plain) + text

    def datetime_filter(value: Any) -> str:
        """Format an instant as the locale's medium date and short time, in UTC."""
        moment = _to_utc(value)
        pattern = str(get_datetime_format("medium", locale=locale)).replace("'", "")
        time_part = format_time(moment, format="short", tzinfo=UTC, locale=locale)
        date_part = format_date(moment, format="medium", locale=locale)
        return pattern.replace("{0}", time_part).replace("{1}", date_part) + " UTC"

    def money_filter(amount: Any, currency: str) -> str:
        """Format an amount in ``currency`` the way the locale writes money."""
        return babel.numbers.format_currency(_decimal(amount), currency, locale=locale)

    def number_filter(value: Any) -> str:
        """Format a number with the locale's separators."""
        return babel.numbers.format_decimal(_decimal(value), locale=locale)

    def cycle_filter(value: Any) -> str:
        """Name a billing cycle as an adjective."""
        return _lookup(_CYCLES[locale], value, "billing cycle")

    def period_filter(value: Any) -> str:
        """Name one period of a billing cycle."""
        return _lookup(_PERIODS[locale], value, "billing cycle")

    return {
        "date": date_filter,
        "date_with_article": date_with_article_filter,
        "datetime": datetime_filter,
        "money": money_filter,
        "number": number_filter,
        "cycle": cycle_filter,
        "period": period_filter,
    }


def _decimal(value: Any) -> Decimal:
    """Return ``value`` as a Decimal; floats go through ``str`` to keep what was meant."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    try:
        result = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def _lookup_key(names: Mapping[str, Any], value: Any, what: str) -> str:
    """Return ``value`` if it is a key of ``names``, else raise a ValueError naming the keys."""
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(names)}")
    return value


def _lookup(names: Mapping[str, str], value: Any, what: str) -> str:
    """Return ``names[value]`` or raise a ValueError naming the accepted values."""
    return names[_lookup_key(names, value, what)]


def _finalize(value: Any) -> Any:
    """Refuse to print ``None``: a missing value must fail, never show up as "None"."""
    if value is None:
        raise ValueError("a template printed None; guard optional values with {% if %}")
    return value


@functools.cache
def _environment(locale: str) -> jinja2.Environment:
    """Return the Jinja2 environment whose filters format for ``locale``."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html",), default_for_string=False, default=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
        auto_reload=False,
    )
    env.filters.update(_filters(locale))
    return env


def _one_line(subject: str) -> str:
    """Collapse a subject to one line: no CR/LF or other control characters survive."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in subject)
    return " ".join(cleaned.split())


def _load(locale: str, kind: str) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template]:
    """Return the subject, text and HTML templates of ``kind`` in ``locale``."""
    env = _environment(locale)
    return (
        env.get_template(f"{kind}/{locale}/subject.txt"),
        env.get_template(f"{kind}/{locale}/body.txt"),
        env.get_template(f"{kind}/{locale}/body.html"),
    )


def render(
    kind: str, locale: str, context: Mapping[str, Any], *, default_locale: str = "en"
) -> Rendered:
    """Render ``kind`` in ``locale`` (falling back to ``default_locale``, then English)."""
    if kind not in KINDS:
        raise TemplateError(f"unknown email kind {kind!r}; expected one of {', '.join(KINDS)}")
    missing = [key for key in REQUIRED_KEYS[kind] if context.get(key) is None]
    if missing:
        raise TemplateError(f"{kind}: missing context values: {', '.join(missing)}")
    for key in _URL_KEYS:
        if key not in REQUIRED_KEYS[kind] and context.get(key) is None:
            continue
        try:
            check_http_url(context[key])
        except ValueError as exc:
            raise TemplateError(f"{kind}: {key}: {exc}") from None

    first = resolve_locale(locale, default_locale)
    candidates = list(dict.fromkeys((first, resolve_locale(default_locale, "en"), "en")))
    values = {key: None for key in OPTIONAL_KEYS[kind]} | dict(context)
    for candidate in candidates:
        try:
            subject, text, html = _load(candidate, kind)
        except jinja2.TemplateNotFound:
            continue
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{kind}/{candidate}: broken template: {exc}") from exc
        values["locale"] = candidate
        try:
            return Rendered(
                kind=kind,
                locale=candidate,
                subject=_one_line(subject.render(values)),
                text=text.render(values),
                html=html.render(values),
            )
        except (jinja2.TemplateError, ValueError, TypeError, ArithmeticError) as exc:
            raise TemplateError(f"{kind}/{candidate}: {exc}") from exc
    raise TemplateError(f"{kind}: no templates for locales {', '.join(candidates)}")
