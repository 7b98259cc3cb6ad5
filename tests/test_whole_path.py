"""The whole path: a signed order over HTTP, the worker, one email in a real SMTP server."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest

from tests.emails.conftest import Recorder
from tests.support import FORM, KEY, drain, runtime_from_env
from workers.jobs import actors
from workers.ops import replay, samples
from workers.protocol import form

pytestmark = pytest.mark.slow  # end to end: real processes, services or a browser


@pytest.fixture
def smtp_sink(monkeypatch, smtp_server):
    """A real SMTP server the workers in this process send to."""
    recorder = Recorder()
    controller = smtp_server(recorder)
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{controller.port}")
    monkeypatch.setenv("MAIL_FROM", "AWDoc <billing@awdoc.example>")
    runtime_from_env()
    yield recorder


def test_a_completed_order_sends_one_confirmation_in_the_customers_language_and_never_again(
    client, conn, smtp_sink
):
    item = samples.SampleItem(license_ref="LIC-WHOLE-1", code="AWDOC-TEAM-Y", price="300.00")
    pairs = samples.ipn_pairs(
        items=(item,), refno="W1", language="it", email="giulia@example.it", first_name="Giulia"
    )
    body = form.encode(samples.sign_pairs(pairs, KEY))
    assert client.post("/ipn", data=body, headers=FORM).status_code == 200
    drain()

    assert len(smtp_sink.envelopes) == 1
    envelope = smtp_sink.envelopes[0]
    assert envelope.rcpt_tos == ["giulia@example.it"]
    message = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
    assert message["X-Rinnovo-Kind"] == "order_confirmation"
    assert message["Subject"].startswith("Conferma ordine W1")
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    assert "Ciao Giulia" in text and "LIC-WHOLE-1" in text and "annuale" in text
    assert message["Message-ID"] and message["Date"]

    # The provider's retry and an operator's replay send nothing more.
    assert client.post("/ipn", data=body, headers=FORM).status_code == 200
    event_id = conn.execute("SELECT id FROM events").fetchone()["id"]
    replay.replay(actors.settings(), [event_id])
    drain()
    assert len(smtp_sink.envelopes) == 1
    sent = conn.execute("SELECT status, kind FROM emails").fetchall()
    assert sent == [{"status": "sent", "kind": "order_confirmation"}]
