"""The protocol and rules tests need no services: they pass with PostgreSQL and Redis down."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import free_port
from tests.test_layers import ROOT

# Unit tests of the parts that touch no database and no broker: the wire formats, the catalog,
# the policies (RULES.md's worked examples and property tests), the layering.
SERVICE_FREE = (
    "tests/workers/protocol",
    "tests/workers/billing/test_catalog.py",
    "tests/workers/billing/test_products.py",
    "tests/workers/billing/test_policies.py",
    "tests/workers/billing/test_policies_upgrade.py",
    "tests/workers/billing/test_policies_properties.py",
    "tests/workers/billing/test_statuses.py",
    "tests/workers/store/test_jsonable.py",
    "tests/workers/store/test_statuses.py",
    "tests/workers/store/reports/test_filters.py",
    "tests/test_layers.py",
    "tests/test_tree.py",
    "tests/test_wire_names.py",
)


def test_the_protocol_and_rules_tests_pass_with_no_postgresql_and_no_redis():
    nothing = free_port()  # nothing listens there
    env = {
        **os.environ,
        "RINNOVO_TEST_PG": f"postgresql://127.0.0.1:{nothing}",
        "RINNOVO_TEST_REDIS": f"redis://127.0.0.1:{nothing}/15",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SERVICE_FREE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout
    assert "error" not in done.stdout.splitlines()[-1]
