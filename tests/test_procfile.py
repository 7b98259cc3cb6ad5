"""The Procfile's `web:` line as the shell that runs it (honcho's, a platform's) reads it."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _workers_word() -> str:
    line = next(
        line.removeprefix("web:")
        for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("web:")
    )
    words = shlex.split(line)
    return words[words.index("--workers") + 1]


def _expand(word: str, **env: str) -> str:
    shown = subprocess.run(
        ["sh", "-c", f"echo {word}"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return shown.stdout.strip()


def test_the_receiver_runs_one_process_per_cpu_unless_web_concurrency_says_otherwise():
    word = _workers_word()

    assert _expand(word) == str(len(os.sched_getaffinity(0)))
    assert _expand(word, WEB_CONCURRENCY="3") == "3"
