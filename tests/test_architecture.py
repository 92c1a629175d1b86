"""The import arrows point one way: core (the kernel) < methods, tasks < bench (the runner and the reports).

Every `import` of the product's modules is read from the source (module level, inside functions and under
TYPE_CHECKING alike): no module imports a package above its own or beside it (methods ⇄ tasks), and the modules
import no circle, even one hidden by an import inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = {"core": 0, "methods": 1, "tasks": 1, "bench": 2}
NAMESPACE = "peftbench"  # the folders install as peftbench.core, peftbench.methods, ... (pyproject.toml)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path) -> set[str]:
    """Every module name `path` imports (a `from pkg import name` counts `pkg.name` too, in case it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _imports(path: Path) -> set[str]:
    """The product modules `path` imports, by folder (`peftbench.methods.base` -> `methods.base`)."""
    names = {name.removeprefix(f"{NAMESPACE}.") for name in _imported_names(path) if name.startswith(f"{NAMESPACE}.")}
    return {name for name in names if name.split(".")[0] in LAYERS}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in LAYERS for p in sorted((REPO / package).rglob("*.py"))}
    return {name: {i for i in _imports(path) if i in files and i != name} for name, path in files.items()}


GRAPH = _graph()


def test_every_import_of_ours_is_namespaced() -> None:
    """No module, test or script imports `bench`, `methods`, `tasks` or `core` as a top-level package: installed,
    those names would collide with any other package of the same name; only peftbench.* is put on the path."""
    files = [
        p
        for folder in (*LAYERS, "tests", "scripts", "notebooks", "hydra_plugins")
        for p in (REPO / folder).rglob("*.py")
    ]
    bare = sorted(
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        for name in _imported_names(path)
        if name.split(".")[0] in LAYERS
    )
    assert not bare, bare


def test_the_packages_are_read() -> None:
    assert {
        "core.errors",
        "core.registry",
        "methods.base",
        "tasks.base",
        "bench.run",
    } <= set(GRAPH)
    assert "core.errors" in GRAPH["methods.base"] and "methods.base" in GRAPH["bench.run"]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_runs_up_or_sideways(package: str) -> None:
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in GRAPH.items()
        if source.split(".")[0] == package
        for target in targets
        if (top := target.split(".")[0]) != package and LAYERS[top] >= LAYERS[package]
    )
    assert not wrong, "; ".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_check_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
