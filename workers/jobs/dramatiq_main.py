"""`python -m workers.jobs.dramatiq_main`: Dramatiq's command, JSON lines from its main process.

Dramatiq's main process logs in plain text (`logging.basicConfig` with its own format) before
any module of ours is imported; `basicConfig` does nothing when the root logger already has a
handler, so installing the JSON one first makes the main process's lines JSON too. Its worker
processes inherit it, and the WorkerLogging middleware keeps it so after they boot.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main as dramatiq_main

from workers.logs import configure_logging


def main() -> int:
    """Run Dramatiq's command line with the arguments given."""
    configure_logging()
    return int(dramatiq_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
