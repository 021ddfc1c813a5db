"""The layering of ``src/`` (docs/architecture.md): imports run only downwards and never in a circle.

Walks every module's imports with ``ast`` (module-level and inside functions alike), so a lazy import
cannot hide an upward dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# layer -> the layers it must never import
FORBIDDEN = {
    "errors": {"cli", "training", "tasks", "tools", "data", "models", "losses", "metrics"},
    "training": {"cli", "tasks", "tools"},
    "data": {"cli", "tasks", "tools"},
    "models": {"cli", "tasks", "tools"},
    "losses": {"cli", "tasks", "tools", "models"},
    "metrics": {"cli", "tasks", "tools", "models", "training"},
}


def module_name(path: Path, repo: Path) -> str:
    parts = path.relative_to(repo).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = REPO / "src") -> dict[str, set[str]]:
    """``{module: the src modules it imports}`` for every module under ``root`` (a ``src`` folder)."""
    modules = {module_name(p, root.parent): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if layer(d) in FORBIDDEN.get(layer(m), ()))


def test_src_has_no_import_circle():
    assert circles(import_graph()) == []


def test_no_layer_imports_a_higher_one():
    assert upward_imports(import_graph()) == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """The walk sees function-level imports, a circle and an upward import in a planted tree."""
    pkg = tmp_path / "src"
    for sub in ("training", "tasks", "metrics"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "training" / "a.py").write_text("def f():\n    from src.tasks.b import g\n")
    (pkg / "tasks" / "b.py").write_text("import src.training.a\n")
    (pkg / "metrics" / "c.py").write_text("from src.training import a\n")
    graph = import_graph(pkg)
    assert circles(graph) == [["src.tasks.b", "src.training.a"]]
    assert upward_imports(graph) == ["src.metrics.c -> src.training", "src.metrics.c -> src.training.a",
                                     "src.training.a -> src.tasks.b"]
