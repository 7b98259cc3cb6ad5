"""The worker's boot module (`dramatiq workers.jobs.worker`): the runtime first, then the actors.

Dramatiq declares each actor on the broker set when its module is imported, so the runtime is
built from the environment and installed here, before the actors' module is.
"""

from __future__ import annotations

from workers.jobs.runtime import Runtime

runtime = Runtime.from_env().install()

from workers.jobs import actors  # noqa: E402  # declared on the broker just installed

actors.check_settings(runtime.settings)
