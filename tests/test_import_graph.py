"""The package's import graph has no cycles, and shared constants are defined once.

The graph is read from the source (``ast``), so it also sees imports inside functions: a
lazy import that hides a cycle (module A imports B at the top, B imports A in a function) is
still a cycle here. Importing ``a.b.c`` from outside ``a.b`` also runs ``a/b/__init__.py``,
so such an import is an edge to every package on the way that the importer is not inside.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mtl_lightning

PACKAGE = Path(mtl_lightning.__file__).parent
ROOT = PACKAGE.name


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when
    that is a module, else ``a.b``)."""
    name = module_name(path)
    package = name if is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in modules}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        importer = module_name(path)
        edges: set[str] = set()
        for target in imported_modules(path, modules):
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):  # the packages run on the way, then it
                step = ".".join(parts[:depth])
                inside = importer == step or importer.startswith(step + ".")
                if not inside and step != importer:
                    edges.add(step)
        graph[importer] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return [*path[path.index(successor):], successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import() -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) is None


def test_an_import_from_outside_a_package_runs_its_init() -> None:
    graph = import_graph()
    # tasks/depth.py reads DepthMap: an edge to the module, and none to the data package
    # (whose __init__ imports the data modules, which import the tasks).
    assert f"{ROOT}.tasks" in graph[f"{ROOT}.data.coco.dense_map_files"]
    assert not any(target.startswith(f"{ROOT}.data") for target in graph[f"{ROOT}.tasks.depth"])


def test_mtl_lightning_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_ignore_index_is_defined_once() -> None:
    definitions = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in targets):
                definitions.append(module_name(path))
    assert definitions == [f"{ROOT}.shared.constants"]


def test_no_constant_is_defined_twice_with_the_same_value() -> None:
    """An upper-case module-level name assigned the same value in two modules is one value
    defined twice (IGNORE_INDEX once was, in eight files): define it once and import it."""
    seen: dict[tuple[str, str], str] = {}
    twice = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            for target in targets:
                if (isinstance(target, ast.Name) and target.id.isupper()
                        and node.value is not None):
                    key = (target.id, ast.unparse(node.value))
                    if key in seen:
                        twice.append(f"{target.id} in {seen[key]} and {module_name(path)}")
                    seen.setdefault(key, module_name(path))
    assert not twice, "; ".join(twice)

