"""The import graph of alray/: one direction (ARCHITECTURE.md), no cycle.

Every import counts, the lazy ones inside functions too: a function that imports a layer
above its own is still an upward dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "alray"
# lowest first; a module may import its own layer and the ones below it
LAYERS = [
    ("alray.config", "alray.errors", "alray.seeds", "alray.runtime"),
    ("alray.pool",),
    ("alray.model",),
    ("alray.acquisition",),
    ("alray.scoring",),
    ("alray.train",),
    ("alray.loop",),
    ("alray.experiments", "alray.serve"),
    ("alray.cli", "alray.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The alray modules ``name`` imports: ``from pkg import sub`` is an edge to the
    submodule when ``pkg.sub`` is one, else to ``pkg``."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("alray")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("alray"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m != "alray"} - {name}


def layer_of(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "alray":
            layer_of(name)


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{name} (layer {layer_of(name)}) imports {dep} (layer {layer_of(dep)})"
                    for name in MODULES if name != "alray"
                    for dep in imports_of(name) if layer_of(dep) > layer_of(name))
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(name) for name in MODULES if name != "alray"}
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_graph_sees_a_planted_upward_import(tmp_path):
    """The checks above can fail: an import of the CLI from the pool layer is caught."""
    tree_text = "from alray.cli.common import Progress\n"
    imported = {n.module for n in ast.walk(ast.parse(tree_text))
                if isinstance(n, ast.ImportFrom)}
    assert any(layer_of(m) > layer_of("alray.pool.io") for m in imported)


def test_no_file_in_alray_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def private_imports(source: str) -> list[str]:
    """``module.name`` for every ``from alray... import _name`` in ``source``."""
    return [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alray")
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")]


def test_no_module_imports_another_modules_private_names():
    found = {name: private_imports(path.read_text()) for name, path in MODULES.items()}
    assert {name: names for name, names in found.items() if names} == {}
    assert private_imports("from alray.scoring.clusters import _parts\n") == [
        "alray.scoring.clusters._parts"]
