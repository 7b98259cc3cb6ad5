"""Errors raised while reading and verifying provider notifications."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class for every error of the provider protocols."""


class MalformedNotification(ProtocolError):
    """A notification that cannot be read: bad encoding, a missing or malformed field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SignatureError(ProtocolError):
    """A notification whose signature is missing, refused or wrong."""
