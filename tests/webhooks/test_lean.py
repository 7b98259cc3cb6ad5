"""The receiver stays lean: its app loads neither the rules nor the actors, and enqueues by name."""

from __future__ import annotations

import subprocess
import sys

from tests.test_layers import ROOT
from workers.jobs import actors, broker


def _loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after running `statement`."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_importing_the_app_loads_neither_the_rules_nor_the_actors():
    loaded = _loaded_after("import webhooks.app")

    assert "webhooks.app" in loaded
    assert [
        name for name in loaded if name.startswith(("workers.billing", "workers.jobs.actors"))
    ] == []


def test_the_receiver_enqueues_the_actor_that_applies_events_by_its_name_and_queue():
    assert actors.process_event.actor_name == broker.PROCESS_EVENT
    assert actors.process_event.queue_name == broker.EVENTS_QUEUE
