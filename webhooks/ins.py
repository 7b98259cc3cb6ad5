"""The INS endpoint: the legacy 2CO Instant Notification Service."""

from flask import Blueprint, Response

from webhooks import intake
from workers.protocol import ins

bp = Blueprint("ins", __name__)


@bp.post("/ins")
def receive() -> Response:
    """Receive one INS message."""
    return intake.receive(ins)
