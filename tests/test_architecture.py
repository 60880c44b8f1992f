"""The packages' shape: no import cycle inside ``uca_kernels`` or ``uca_model`` (imports anywhere in a
file count, function-level ones included), and no function longer than 120 lines (an exception
would be listed in LONG_TODAY with its length, which may only shrink)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("uca_kernels", "uca_model")
MAX_LINES = 120
#: functions allowed over MAX_LINES, with their length as a ceiling (none today)
LONG_TODAY: dict[str, int] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (``from . import x`` names module x when it
    is one; the compiled extension ``_C`` is a leaf)."""
    files = {_module_name(f): f for f in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, f in files.items():
        base = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if alias.name == "_C":
                        continue
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in files else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = import_graph(package)
    assert len(graph) > 5 and any(graph.values())  # the parser sees the package's imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_longer_than_the_limit():
    found = {}
    for package in PACKAGES:
        for f in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_LINES:
                        found[f"{f.relative_to(ROOT).as_posix()}:{node.name}"] = n
    grown = {k: n for k, n in found.items() if n > LONG_TODAY.get(k, MAX_LINES)}
    assert not grown, f"functions over {MAX_LINES} lines (or longer than listed): {grown}"
