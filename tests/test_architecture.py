"""The package layout holds: each layer imports only from itself and the layers below, modules do not import
each other in a circle, and no module grows past 400 lines unless it owns a single concept (listed here, with
the reason)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("poclip", "annotation_db")
# Lower layers first; a module may import from its own layer and those before it.
LAYERS = (
    ("poclip", "poclip.errors", "poclip.zerogpu", "poclip.settings"),
    ("poclip.world",),
    ("poclip.engine",),
    ("annotation_db",),
    ("poclip.app",),
    ("poclip.app.ui",),
    ("poclip.cli", "poclip.__main__", "app"),
)
MAX_LINES = 400
# Modules allowed past MAX_LINES, each owning one concept.
LONG_BUT_ONE_CONCEPT: dict[str, str] = {
    "annotation_db/judgments.py": "recording a judgment and undoing it, with its checks, trust and counters moved in "
                                  "the same transaction; the upload variant writes picture, sample and judgment as "
                                  "one unit",
    "poclip/cli.py": "the command line: each command's arguments and a few lines calling into the package, and the "
                     "table that lists them (--help is generated from it)",
}


def _modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts and "versions" in path.parts:
                continue  # Alembic revisions are data, not code that others import
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, at any depth (lazy imports inside functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


MODULES = _modules()
GRAPH = {name: _imports(path, name, set(MODULES)) for name, path in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    assert [m for m in MODULES if _layer(m) < 0] == []


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m))
    assert upward == []


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # A package's __init__ re-exporting its own modules is not a cycle between concepts.
    real = [c for c in cycles if not any(MODULES[part].name == "__init__.py" for part in c.split(" -> "))]
    assert real == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small_unless_they_own_one_concept(name):
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    relative = path.relative_to(ROOT).as_posix()
    if relative in LONG_BUT_ONE_CONCEPT:
        assert lines > MAX_LINES, f"{relative} is {lines} lines now: take it off the list"
    else:
        assert lines <= MAX_LINES, f"{relative} has {lines} lines (at most {MAX_LINES}, or list it with the reason)"
