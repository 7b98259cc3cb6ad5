"""HMAC signatures of IPN and LCN notifications, and the receipts that acknowledge them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from workers.protocol import form
from workers.protocol.errors import SignatureError


class Algorithm(StrEnum):
    """A signature algorithm, named as the provider's receipts name it."""

    SHA3_256 = "sha3-256"
    SHA256 = "sha256"
    MD5 = "md5"


# Strongest first: verification looks at the first one present.
SIGNATURE_FIELDS: dict[str, Algorithm] = {
    "SIGNATURE_SHA3_256": Algorithm.SHA3_256,
    "SIGNATURE_SHA2_256": Algorithm.SHA256,
    "HASH": Algorithm.MD5,
}

_DIGESTS = {
    Algorithm.SHA3_256: hashlib.sha3_256,
    Algorithm.SHA256: hashlib.sha256,
    Algorithm.MD5: hashlib.md5,
}


# Lengths spelled once: str() on each of some 300 lengths per notification is a measurable cost.
_SPELLED = [str(number) for number in range(4096)]


def length_prefixed(values: Iterable[str]) -> str:
    """Concatenate each value preceded by its length in UTF-8 bytes."""
    values = list(values)
    if "".join(values).isascii():  # the usual case: lengths in characters are lengths in bytes
        lengths = list(map(len, values))
    else:
        lengths = [len(value.encode("utf-8")) for value in values]
    parts = [""] * (2 * len(values))
    short = not lengths or max(lengths) < len(_SPELLED)
    parts[0::2] = map(_SPELLED.__getitem__ if short else str, lengths)
    parts[1::2] = values
    return "".join(parts)


def source_string(fields: Mapping[str, Sequence[str]]) -> str:
    """Return the string the provider signs: every value of every non-signature field, in order."""
    return length_prefixed(form.all_values(fields, skip=SIGNATURE_FIELDS))


def sign(algorithm: Algorithm, key: str, message: str) -> str:
    """Return the lowercase hex HMAC of message under key."""
    digest = _DIGESTS[Algorithm(algorithm)]
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), digest).hexdigest()


@dataclass(frozen=True)
class Verified:
    """Which algorithm verified a notification, and with which of the configured keys."""

    algorithm: Algorithm
    key_index: int


def verify(
    fields: Mapping[str, Sequence[str]], keys: Sequence[str], *, accept_md5: bool
) -> Verified:
    """Verify the strongest signature present against each key, or raise SignatureError."""
    signatures: dict[str, str] = {}
    for name in SIGNATURE_FIELDS:
        found = form.values(fields, name)
        if len(found) > 1:
            raise SignatureError(f"signature field {name} present more than once")
        # A blank field signs nothing; skipping it cannot downgrade below what accept_md5 allows.
        if found and found[0]:
            signatures[name] = found[0]
    if not signatures:
        raise SignatureError("missing signature")
    name, received = next(iter(signatures.items()))
    algorithm = SIGNATURE_FIELDS[name]
    if algorithm is Algorithm.MD5 and not accept_md5:
        raise SignatureError("MD5 signatures are not accepted")
    # An empty key (e.g. a trailing comma in the configuration) would let anyone sign.
    usable = [(index, key) for index, key in enumerate(keys) if key]
    if not usable:
        raise SignatureError("no secret key configured")
    message = source_string(fields)
    # Bytes, because compare_digest refuses non-ASCII str and the received value is untrusted.
    candidate = received.lower().encode("utf-8")
    for index, key in usable:
        if hmac.compare_digest(candidate, sign(algorithm, key, message).encode("ascii")):
            return Verified(algorithm, index)
    raise SignatureError(f"{name} does not match")


def receipt_date(now: datetime | None = None) -> str:
    """Return the receipt date, UTC, as YYYYMMDDHHMMSS (a naive now is taken as UTC)."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is not None:
        now = now.astimezone(UTC)
    return now.strftime("%Y%m%d%H%M%S")


def receipt(algorithm: Algorithm, key: str, values: Sequence[str], date: str) -> str:
    """Return the response body that acknowledges a notification to the provider."""
    digest = sign(algorithm, key, length_prefixed([*values, date]))
    if algorithm == Algorithm.MD5:
        return f"<EPAYMENT>{date}|{digest}</EPAYMENT>"
    return f'<sig algo="{Algorithm(algorithm).value}" date="{date}">{digest}</sig>'
