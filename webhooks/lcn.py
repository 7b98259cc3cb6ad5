"""The LCN endpoint: license (subscription) changes."""

from flask import Blueprint, Response

from webhooks import intake
from workers.protocol import lcn

bp = Blueprint("lcn", __name__)


@bp.get("/lcn")
def check() -> Response:
    """Answer the provider's check when the merchant saves the LCN URL."""
    return Response("OK", mimetype="text/plain")


@bp.post("/lcn")
def receive() -> Response:
    """Receive one License Change Notification."""
    return intake.receive(lcn)
