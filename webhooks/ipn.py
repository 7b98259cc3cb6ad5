"""The IPN endpoint: order events."""

from flask import Blueprint, Response

from webhooks import intake
from workers.protocol import ipn

bp = Blueprint("ipn", __name__)


@bp.post("/ipn")
def receive() -> Response:
    """Receive one Instant Payment Notification."""
    return intake.receive(ipn)
