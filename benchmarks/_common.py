"""What every benchmark needs: a database and a Redis db of its own, on the configured servers."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent


def own_database_url(name: str) -> str:
    """The benchmark's own database, on the server DATABASE_URL names (or the local one)."""
    server = os.environ.get("DATABASE_URL") or "postgresql://127.0.0.1:5432"
    return make_conninfo(server, dbname=name)


def own_redis_url(db_number: int) -> str:
    """The benchmark's own Redis db, on the server REDIS_URL names (or the local one)."""
    parts = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    return urlunsplit(parts._replace(path=f"/{db_number}"))


def cpus() -> int:
    """The CPUs this process may run on, as `nproc` counts them: the Procfile's default number
    of receiver processes."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def procfile_gunicorn_options(*, drop: tuple[str, ...] = ("--bind", "--workers")) -> list[str]:
    """The gunicorn options of the Procfile's `web:` line (worker class, deadlines, logger).

    Options in `drop` (with their values) and the app target are left out, so a caller serving
    another app or port runs it the way production does.
    """
    line = next(
        line.removeprefix("web:")
        for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("web:")
    )
    words = shlex.split(line)
    assert words[0] == "gunicorn", line
    options: list[str] = []
    rest = iter(words[1:-1])  # the last word is the app target
    for word in rest:
        if word in (*drop, "--access-logfile"):  # the caller decides where it listens and logs
            next(rest)
        else:
            options.append(word)
    return options


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds used so far by each process and by the whole machine (Linux /proc)."""

    processes: dict[int, tuple[str, int, float]]  # pid -> (command name, parent pid, seconds)
    busy: float
    total: float


def cpu_snapshot() -> Snapshot | None:
    """Read every process's CPU time, or None where there is no /proc."""
    proc = Path("/proc")
    if not (proc / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    processes = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        processes[int(entry.name)] = (name, int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    ticks = [int(value) for value in (proc / "stat").read_text().split("\n")[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return Snapshot(processes, (sum(ticks) - idle) / tick, sum(ticks) / tick)


_BACKEND_TITLE = re.compile(r" (\S+) (?:\S+\([0-9]+\)|\[local\]) ")


def postgres_backends(snapshot: Snapshot, database: str) -> tuple[set[int], set[int]]:
    """PostgreSQL's client backends, and those serving `database`."""
    backends: set[int] = set()
    ours: set[int] = set()
    for pid, (name, _, _) in snapshot.processes.items():
        if not name.startswith("postgres"):
            continue
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        # A backend's title is "postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE".
        if match := _BACKEND_TITLE.search(title.replace("\0", " ")):
            backends.add(pid)
            if match.group(1) == database:
                ours.add(pid)
    return backends, ours


def cpu_by_party(
    before: Snapshot, after: Snapshot, *, database: str, roots: dict[int, str], parties: list[str]
) -> dict[str, float]:
    """CPU seconds between two snapshots by party: PostgreSQL (the server, and the backends of
    `database`), Redis, each process tree of `roots` (pid -> party, the nearest root wins), else
    "other"."""
    parents = {pid: parent for pid, (_, parent, _) in after.processes.items()}
    backends, ours = postgres_backends(after, database)

    def party(pid: int, name: str) -> str:
        if name.startswith("postgres"):
            # Backends serving other databases (someone else's tests) are not ours.
            return "postgres" if pid in ours or pid not in backends else "other"
        if name.startswith("redis"):
            return "redis"
        ancestor = pid
        while ancestor > 1:
            if ancestor in roots:
                return roots[ancestor]
            ancestor = parents.get(ancestor, 0)
        return "other"

    used = dict.fromkeys([*parties, *roots.values(), "postgres", "redis", "other"], 0.0)
    for pid, (name, _, seconds) in after.processes.items():
        earlier = before.processes.get(pid)
        used[party(pid, name)] += seconds - (earlier[2] if earlier and earlier[0] == name else 0.0)
    return used
