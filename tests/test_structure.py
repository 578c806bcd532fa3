"""The shape of the codebase that lets a newcomer carry it on, checked on every run.

Small modules and functions, and packages that import each other in one direction only:
``engine`` must never need ``demo`` or ``serve``, ``sink`` never ``serve``, and so on. Imports
inside functions count, since they are how cycles hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ray_dit"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[tuple[str, Path, ast.Module]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path, ast.parse(path.read_text(), str(path))))
    return found


def _unit(module: str) -> str:
    """The package a module belongs to: ``ray_dit.engine.cache`` -> ``ray_dit.engine``; top-level
    modules (``ray_dit.api``) are units of their own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _imports(module: str, tree: ast.Module) -> set[str]:
    """Every ray_dit module imported anywhere in ``tree`` (module level or inside functions)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name == "ray_dit" or name.startswith("ray_dit.")}


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, _, tree in _modules():
        unit = _unit(name)
        targets = {_unit(target) for target in _imports(name, tree)} - {unit, "ray_dit"}
        graph.setdefault(unit, set()).update(targets)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between packages, as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_is_over_the_line_budget():
    long = {str(path): len(path.read_text().splitlines()) for _, path, _ in _modules()}
    assert {p: n for p, n in long.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_over_the_line_budget():
    long = {}
    for _, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{path.name}:{node.lineno} {node.name}"] = size
    assert long == {}


def test_packages_import_each_other_in_one_direction():
    graph = _package_graph()
    assert graph, "no ray_dit modules found"
    assert _cycle(graph) is None


def test_the_cycle_check_finds_a_cycle():
    """The check above can fail: a two-package loop and a longer one are found."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_knows_no_demo_and_no_server():
    graph = _package_graph()
    assert not graph["ray_dit.engine"] & {"ray_dit.demo", "ray_dit.serve", "ray_dit.sink"}
    assert "ray_dit.serve" not in graph["ray_dit.sink"]
