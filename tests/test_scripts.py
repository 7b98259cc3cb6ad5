"""`scripts/run` and `scripts/setup`, run for real in a copy of the checkout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dotenv import dotenv_values

from tests.conftest import REDIS_NAMESPACE, SECRET_KEYS, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.support import free_port

pytestmark = pytest.mark.slow  # end to end: real processes, services or a browser

ROOT = Path(__file__).resolve().parent.parent


def _copy(target: Path, env: str = "") -> Path:
    """The scripts, Procfile, pyproject and lock of this checkout, sharing its virtualenv."""
    target.mkdir()
    shutil.copytree(ROOT / "scripts", target / "scripts")
    for name in ("Procfile", "pyproject.toml", "requirements-dev.lock"):
        shutil.copy2(ROOT / name, target / name)
    # Older than the shared virtualenv's install stamp: setup installs nothing from the copy
    # (without the stamp it would reinstall the package from the copy into the shared one).
    assert (ROOT / ".venv" / ".rinnovo-installed").is_file(), "run scripts/setup first"
    for name in ("pyproject.toml", "requirements-dev.lock"):
        os.utime(target / name, (0, 0))
    (target / ".venv").symlink_to(ROOT / ".venv")
    if env:
        (target / ".env").write_text(env, encoding="utf-8")
    return target


@pytest.fixture
def running(conn, tmp_path) -> Iterator[tuple[Path, str]]:
    """A first `scripts/run`, answering on a port of its own; stopped after the test."""
    port = free_port()
    env = f"""DATABASE_URL={TEST_DATABASE_URL}
REDIS_URL={TEST_REDIS_URL}
REDIS_NAMESPACE={REDIS_NAMESPACE}-run
TWOCHECKOUT_SECRET_KEY={SECRET_KEYS}
ADMIN_TOKEN=scripts-run-token
PORT={port}
MAIL_DIR={tmp_path / "mail"}
MERCHANT_NAME=Example Shop
SUPPORT_EMAIL=support@example.com
WEB_CONCURRENCY=1
WORKER_PROCESSES=1
WORKER_THREADS=1
"""
    checkout = _copy(tmp_path / "checkout", env)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        ["scripts/run"], cwd=checkout, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_until_it_answers(port, first)
        yield checkout, env
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        try:
            first.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.close()


def _wait_until_it_answers(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first scripts/run stopped"
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError("the first scripts/run never answered")


def _second(checkout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scripts/run"], cwd=checkout, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_second_run_in_the_same_checkout_says_so_and_starts_nothing(running):
    checkout, _ = running

    second = _second(checkout)

    assert second.returncode == 1
    assert second.stderr == (
        "scripts/run: already running in this checkout (stop it with Ctrl-C there first)\n"
    )
    assert second.stdout == ""  # honcho never started: it would have printed its processes


def test_a_run_elsewhere_on_a_port_in_use_says_so_and_starts_nothing(running, tmp_path):
    _, env = running
    elsewhere = _copy(tmp_path / "elsewhere", env)

    second = _second(elsewhere)

    assert second.returncode == 1
    port = env.split("PORT=")[1].split()[0]
    assert f"port {port} is already in use" in second.stderr
    assert "nothing was started" in second.stderr
    assert second.stdout == ""


def test_setup_without_postgresql_redis_or_apt_stops_first_with_the_commands(tmp_path):
    checkout = tmp_path / "fresh"
    checkout.mkdir()
    shutil.copytree(ROOT / "scripts", checkout / "scripts")
    # A machine with a shell and coreutils only: no PostgreSQL, Redis or apt-get on the PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "cat", "ls", "head"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)

    # In a network namespace of its own (a user namespace too: no privilege needed), nothing
    # answers on 127.0.0.1:5432 or :6379.
    result = subprocess.run(
        [shutil.which("unshare") or "unshare", "--map-root-user", "--net", "scripts/setup"],
        cwd=checkout,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "postgresql redis-server not installed" in result.stderr
    assert (
        "    sudo apt-get install -y --no-install-recommends postgresql redis-server"
        in result.stderr.splitlines()
    )
    assert "sudo -u postgres createuser --superuser" in result.stderr
    assert not (checkout / ".venv").exists()  # stopped before anything else


def test_the_generated_env_reads_the_same_under_honcho_and_rinnovo(tmp_path):
    env_file = tmp_path / ".env"
    made = subprocess.run(
        [str(ROOT / "scripts" / "new-env")], capture_output=True, text=True, check=True
    )
    env_file.write_text(made.stdout, encoding="utf-8")

    honcho = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "honcho"), "-e", str(env_file), "run", "env"],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = dict(line.split("=", 1) for line in honcho.stdout.splitlines() if "=" in line)
    read = dotenv_values(env_file)

    assert seen["MERCHANT_NAME"] == read["MERCHANT_NAME"] == "Example Shop"
    for name, value in read.items():
        assert seen[name] == value, name
    assert len(read["ADMIN_TOKEN"] or "") >= 16  # the receiver refuses a shorter one
