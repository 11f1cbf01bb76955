"""The package's imports point one way: front ends -> nodes -> accel / models -> samplers, with no circles.

Every ``from .x import`` / ``from ..x import`` in the package's modules counts, including imports inside functions
(a lazy import is still a dependency).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("samplers", "models", "accel", "nodes", "web")
LAYER = {"samplers": 0, "models": 1, "accel": 1, "nodes": 2, "web": 3, "cli": 3}


def import_graph() -> dict[str, set[str]]:
    modules = {f"{p}.{f.stem}": f for p in PACKAGES for f in (ROOT / p).glob("*.py")}
    modules["cli"] = ROOT / "cli.py"
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name.split(".")[0] if "." in name else ""
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = ([package] if node.level == 1 else []) + ([node.module] if node.module else [])
            target = ".".join(base)
            candidates = [target] + [f"{target}.{a.name}" if target else a.name for a in node.names]
            graph[name] |= {c for c in candidates if c in modules and c != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_real_edges():
    graph = import_graph()
    assert "samplers.registry" in graph["samplers.run"] and "accel.ras" in graph["accel.magcache"]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_no_layer_imports_a_higher_one():
    upward = [(a, b) for a, targets in import_graph().items() for b in targets
              if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert upward == []
