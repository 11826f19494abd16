"""The import graph of fedprune's packages has no cycles (function-level imports included).

Layers: ``server`` and ``client`` use ``common``; ``simulations`` launches them; a cycle
anywhere (even through an import inside a function) means two modules own each other's
concerns. Read from the source with :mod:`ast`, nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "client", "common", "simulations")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports; ``from pkg import sub`` counts as ``pkg.sub``."""
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package[: len(package) - (node.level - 1)]
                    base = ".".join([*parent, *([base] if base else [])])
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    imported.add(candidate if candidate in modules else base)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_packages_import_each_other_without_cycles():
    assert cycles(import_graph()) == []


def test_the_layers_point_one_way():
    graph = import_graph()
    for name, imported in graph.items():
        layer = name.split(".")[0]
        for other in imported:
            target = other.split(".")[0]
            if layer == "common":
                assert target == "common", f"{name} (common) imports {other}"
            if layer in ("server", "client"):
                assert target in (layer, "common"), f"{name} imports {other}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_generic_round_code_names_no_methods_statistic():
    """The strategy, the ClientApp and the node state carry a method's statistics unread:
    PruneFL's importance is named only in its own files (``common/pruning/prunefl*.py``)."""
    generic = ["server/strategy.py", "client/app.py", "server/mask_ledger.py"]
    for path in generic:
        text = (REPO / path).read_text(encoding="utf-8").lower()
        assert "importance" not in text, path
    imports = import_graph()
    for module in ("server.strategy", "client.app", "client.node_state"):
        assert not any(
            m.startswith("common.pruning.") and m != "common.pruning.base" for m in imports[module]
        ), module
