"""The import graph points one way: the architecture the README draws, enforced on every change."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("webhooks", "workers", "emails")

# Lowest first: a module may import from its own layer or below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("emails",),
    (
        "workers.errors",
        "workers.config",
        "workers.logs",
        "workers.terminal",
        "workers.protocol",
        "workers.provider_api",
    ),
    ("workers.store",),
    ("workers.billing",),
    ("workers.jobs",),
    ("workers.ops",),
    ("workers.cli",),
    ("webhooks",),
)
# Packages that may import only from themselves (and the standard library or third parties).
PURE = {"workers.protocol": ("workers.protocol",), "emails": ("emails",)}
# A comment on an import inside a function must say it keeps something out of start-up.
DEFERRED_REASON = "start-up"


@dataclass(frozen=True)
class Import:
    """One project import: which module imports which, where, and whether inside a function."""

    importer: str
    imported: str
    line: int
    in_function: bool
    commented: bool


def module_name(path: Path) -> str:
    """The dotted name of a source file under the project's root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> Iterator[Path]:
    """Every Python source file of the three packages."""
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def known(name: str) -> bool:
    """Whether a dotted name is a module or package of the project."""
    base = ROOT / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    module = node.module or ""
    if node.level:  # relative: resolve against the importer's package
        base = importer.split(".")[: -node.level] if node.level else []
        module = ".".join([*base, module]) if module else ".".join(base)
    return [f"{module}.{a.name}" if known(f"{module}.{a.name}") else module for a in node.names]


def _comment_of(lines: list[str], lineno: int) -> str:
    """The import's line and the comment lines right above it."""
    start = lineno - 1
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return " ".join(lines[start:lineno])


def imports_of(path: Path) -> Iterator[Import]:
    """The project imports of one file, each with its place."""
    text = path.read_text()
    lines = text.splitlines()
    importer = module_name(path)

    def walk(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                here = _comment_of(lines, child.lineno)
                for target in _targets(child, importer):
                    if target.split(".")[0] in PACKAGES:
                        yield Import(importer, target, child.lineno, in_function,
                                     DEFERRED_REASON in here)  # fmt: skip
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from walk(child, in_function or nested)

    yield from walk(ast.parse(text), False)


def all_imports() -> list[Import]:
    """Every project import in the three packages."""
    return [found for path in sources() for found in imports_of(path)]


def layer_of(module: str) -> int:
    """The index of the layer a module belongs to (the longest prefix wins)."""
    best, index = -1, -1
    for position, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best:
                best, index = len(member), position
    assert index >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return index


def test_every_module_belongs_to_a_layer() -> None:
    for path in sources():
        name = module_name(path)
        if name not in PACKAGES and name != "workers":
            layer_of(name)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{found.importer}:{found.line} imports {found.imported}"
        for found in all_imports()
        if found.importer not in ("workers", "webhooks")
        and layer_of(found.imported) > layer_of(found.importer)
    ]
    assert upward == []


def test_the_pure_packages_import_only_themselves() -> None:
    stray = [
        f"{found.importer}:{found.line} imports {found.imported}"
        for found in all_imports()
        for package, allowed in PURE.items()
        if found.importer == package or found.importer.startswith(package + ".")
        if not any(found.imported == ok or found.imported.startswith(ok + ".") for ok in allowed)
    ]
    assert stray == []


def test_an_import_inside_a_function_says_what_it_keeps_out_of_start_up() -> None:
    silent = [
        f"{found.importer}:{found.line} imports {found.imported}"
        for found in all_imports()
        if found.in_function and not found.commented
    ]
    assert silent == []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as a path, or an empty list."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_import_cycle_even_through_an_import_inside_a_function() -> None:
    graph: dict[str, set[str]] = {}
    for found in all_imports():
        if found.imported != found.importer and not found.importer.startswith(found.imported + "."):
            graph.setdefault(found.importer, set()).add(found.imported)
    assert _cycle(graph) == []


def test_the_check_finds_a_cycle_and_an_upward_import_when_there_is_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
    assert layer_of("workers.store.events") < layer_of("workers.billing.policies")
    assert layer_of("workers.jobs.actors") < layer_of("webhooks.app")
