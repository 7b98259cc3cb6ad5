"""A bare Flask receiver: the baseline the real receiver is compared with in `ingest`."""

from __future__ import annotations

from flask import Flask, Response, request

BODY = "OK"

app = Flask(__name__)


@app.post("/ipn")
def receive() -> Response:
    """Read the whole body, as the real receiver does, and answer a fixed short text."""
    request.get_data(cache=False)
    return Response(BODY, status=200, mimetype="text/plain")
