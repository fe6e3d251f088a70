"""The layer rule, checked from the code's own imports: each top-level folder is one layer
and imports only itself and the layers below it, and no two modules import each other,
directly or around a loop.

Imports inside functions count too: a function-level import that only exists to hide a
cycle would show up here as the cycle it hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module may import modules of its own layer or of any layer below.
LAYERS = [
    ("emulators",),  # provider emulators: talk HTTP, import nothing of Herald's
    ("cluster",),  # the ground: settings, vocabulary, keys and stores, event log, metrics
    ("models",),  # features, ranker, registry, training, synthetic population
    ("pipelines",),  # pure polars: rules, segments, eligibility, campaign planning
    ("api",),  # the typed edge: schemas (HTTP and Kafka), errors, auth
    ("actors",),  # shards, routers and their flows, fan-out, senders, Kafka ingestor
    ("serve_app",),  # the Serve entry point
    ("ops",),  # the operator's tools: CLI, local stack, demo, import
    ("bench", "loadtest"),  # benchmarks and load tests drive everything
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for top in RANK:
        single = ROOT / f"{top}.py"
        paths = [single] if single.exists() else sorted((ROOT / top).rglob("*.py"))
        for path in paths:
            found[_module_name(path)] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Herald modules `module` imports anywhere in its file (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    targets = set()
    for name in names:
        while name and name not in known:  # `from a.b import c` where c is not a module
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {module: _imports(path, module, known) for module, path in sources.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_every_layer_and_real_imports() -> None:
    graph = _graph()
    assert {m.split(".")[0] for m in graph} >= {"cluster", "models", "actors", "api", "ops"}
    # a known downward import, so an empty graph cannot pass the tests below
    assert "cluster.settings" in graph["cluster.state.keys"]
    assert "actors.router" in graph["actors.bootstrap"]


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if RANK[target.split(".")[0]] > RANK[module.split(".")[0]]
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
