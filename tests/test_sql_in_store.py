"""Every SQL statement is in workers/store/: no module elsewhere sends one or composes one.

A call of `execute`, `executemany` or `cursor` with arguments, or an import of psycopg's SQL
composition (`psycopg.sql`), outside workers/store/ fails. Two calls look alike and are not SQL:
a store module's own function (`batch.execute(conn, parts)`, the module imported from
workers.store) and a Redis pipeline's `execute()`, which takes no argument.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_layers import ROOT, sources

STORE = ROOT / "workers" / "store"
SENDS = frozenset({"execute", "executemany", "cursor"})


def _store_modules(tree: ast.AST) -> set[str]:
    """The names a file binds to modules of workers.store (`from workers.store import batch`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workers.store"):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _composes(node: ast.AST) -> bool:
    """Whether an import brings in psycopg's SQL composition."""
    if isinstance(node, ast.Import):
        return any(alias.name.startswith("psycopg.sql") for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        return module.startswith("psycopg.sql") or (
            module == "psycopg" and any(alias.name == "sql" for alias in node.names)
        )
    return False


def _sends(node: ast.AST, store_modules: set[str]) -> bool:
    """Whether a call sends a statement to a database connection."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr not in SENDS or not (node.args or node.keywords):
        return False  # not a statement: a Redis pipeline's execute() takes none
    receiver = node.func.value
    return not (isinstance(receiver, ast.Name) and receiver.id in store_modules)


def sql_outside_store(text: str) -> list[int]:
    """The lines of a module's source that send or compose SQL."""
    tree = ast.parse(text)
    store_modules = _store_modules(tree)
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.stmt | ast.expr)
        and (_composes(node) or _sends(node, store_modules))
    )


def test_no_sql_outside_the_store() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sources()
        if not path.is_relative_to(STORE)
        for line in sql_outside_store(Path(path).read_text())
    ]
    assert found == []


def test_the_check_finds_sql_and_leaves_store_calls_and_pipelines_alone() -> None:
    flagged = """
from psycopg import sql
from workers.store import batch

def f(conn, pipe, parts):
    conn.execute("SELECT 1")
    batch.execute(conn, parts)
    pipe.incr("k").execute()
    conn.cursor().executemany("INSERT INTO t VALUES (%s)", [(1,)])
    run.conn.execute(query="SELECT 2")
"""
    assert sql_outside_store(flagged) == [2, 6, 9, 10]
    assert sql_outside_store("import psycopg.sql\n") == [1]
    assert sql_outside_store("from workers.store import db\ndb.ping(url)\n") == []
