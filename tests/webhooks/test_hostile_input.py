"""Hostile input at the HTTP edge: each is a clear 4xx with a one-line warning, never a 500."""

from __future__ import annotations

import json

import pytest

ADMIN_TOKEN = "an-admin-token-long-enough-for-the-check"
BAD_CHUNKS = [b"zz\r\nabc\r\n0\r\n\r\n", b"-1\r\nabc\r\n0\r\n\r\n"]


def _chunked(path: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: {content_type}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize("body", BAD_CHUNKS, ids=["zz", "minus-one"])
def test_a_malformed_chunked_body_is_a_400_with_a_one_line_warning_everywhere(
    receiver_factory, body
):
    receiver = receiver_factory(ADMIN_TOKEN=ADMIN_TOKEN)
    form = "application/x-www-form-urlencoded"
    bearer = f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
    cases = [
        ("/ipn", form, "", b"text/plain"),
        ("/lcn", form, "", b"text/plain"),
        ("/ins", form, "", b"text/plain"),
        ("/admin/login", form, "", b"text/html"),
        ("/admin/events/1/replay", form, "", b"text/html"),
        ("/admin/api/events/replay", "application/json", bearer, b"application/json"),
        ("/admin/api/events/1/replay", "application/json", bearer, b"application/json"),
    ]
    for path, content_type, extra, answer_type in cases:
        answer = receiver.send_raw(_chunked(path, body, content_type, extra))
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert answer.startswith(b"HTTP/1.1 400 "), (path, answer)
        assert b"Content-Type: " + answer_type in head, (path, head)
    lines = [json.loads(line) for line in receiver.logged().splitlines() if line.startswith("{")]
    warnings = [line for line in lines if "request body unreadable" in line["message"]]
    assert len(warnings) == len(cases)
    assert all(line["level"] == "warning" for line in warnings)
    assert not [line for line in lines if line["level"] == "error" or "traceback" in line]
