"""The package's layout: the layers import downward only, no private name crosses a package, no import loop
(read from the source with ``ast``, nothing imported); the old module paths still import, with a warning."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest

import backbonekit as bk
from backbonekit._aliases import MOVED

PACKAGE = Path(bk.__file__).resolve().parent  # the package under test, wherever it was imported from
NAME = "backbonekit"
# a layer: the packages it must never import
FORBIDDEN = {"detection": ("train",), "train": ("detection",), "engine": ("train", "detection")}


# -- reading the source ---------------------------------------------------------------------------

@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((NAME, *parts))] = path
    return found


def is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def unit(module: str) -> str:
    """The part of the package a module belongs to: its top-level subpackage, or itself for a root module
    (``""`` for the root package)."""
    parts = module.split(".")[1:]
    if not parts:
        return ""
    return parts[0]


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of ``from X import ...``'s X, as seen from ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package(module):
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: not those in functions or under TYPE_CHECKING."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and is_type_checking(node):
            todo.extend(node.orelse)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


@cache
def tree(module: str) -> ast.Module:
    path = modules()[module]
    return ast.parse(path.read_text(), str(path))


def targets(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """What an import statement reaches inside the package: (module, the name imported from it or None)."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == NAME]
    source = resolve(module, node)
    if source.split(".")[0] != NAME:
        return []
    reached = []
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        reached.append((submodule, None) if submodule in modules() else (source, alias.name))
    return reached


def edges(module: str, top_level_only: bool) -> list[tuple[int, str, str | None]]:
    nodes = top_level_imports(tree(module)) if top_level_only else \
        [n for n in ast.walk(tree(module)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return [(node.lineno, target, name) for node in nodes for target, name in targets(module, node)]


def where(module: str, line: int) -> str:
    return f"{modules()[module].relative_to(PACKAGE)}:{line}"


# -- the layers -------------------------------------------------------------------------------------

def layer_offenders() -> list[str]:
    offenders = []
    for module in modules():
        banned = FORBIDDEN.get(unit(module), ())
        for line, target, _ in edges(module, top_level_only=False):  # a function-local import counts too
            if unit(target) in banned:
                offenders.append(f"{where(module, line)} imports {target}")
    return offenders


def private_name_offenders() -> list[str]:
    """``from X import _y`` (a private module or name) where X lies outside the importer's own part of the
    package (its top-level subpackage; a root module is a part of its own). The root package's own
    ``__init__`` may use the root's private modules."""
    offenders = []
    for module in modules():
        for node in (n for n in ast.walk(tree(module)) if isinstance(n, ast.ImportFrom)):
            for target, name in targets(module, node):
                imported = name if name is not None else target.rsplit(".", 1)[-1]
                if not imported.startswith("_") or imported.startswith("__"):
                    continue
                owner = target if name is not None else target.rsplit(".", 1)[0]
                if unit(owner) != unit(module) and not (module == NAME and owner == NAME):
                    offenders.append(f"{where(module, node.lineno)} imports {imported} from {owner}")
    return offenders


def packages_above(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports when it is imported: its module-level imports, and the
    ``__init__`` of every package they pass through on the way (which runs, re-exports and all)."""
    graph = {}
    for module in modules():
        imported = {target for _, target, _ in edges(module, top_level_only=True) if target in modules()}
        passed = {p for target in imported for p in packages_above(target) - packages_above(module) - {module}}
        graph[module] = imported | passed
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return [one_cycle(graph, set(c), c[0]) for c in components]


def one_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A path start -> ... -> start inside one strongly connected component (breadth first: a shortest one)."""
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is not on a cycle")


# -- the checks -------------------------------------------------------------------------------------

def test_the_reader_sees_every_module_and_its_imports():
    """The checks below see the package: a wrong resolution of relative imports would make them pass empty."""
    assert f"{NAME}.detection.training.trainer" in modules() and f"{NAME}.engine.runs" in modules()
    graph = import_graph()
    assert f"{NAME}.engine.runs" in graph[f"{NAME}.detection.training.trainer"]
    assert f"{NAME}._aliases" in graph[NAME]


def test_layers_import_downward_only():
    """detection/ and train/ sit side by side on engine/; neither imports the other, engine imports neither."""
    assert layer_offenders() == []


def test_no_private_name_is_imported_across_packages():
    assert private_name_offenders() == []


def test_no_import_cycle_among_module_level_imports():
    assert find_cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_loop_and_only_a_loop():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


# -- the old paths ----------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_every_moved_module_still_imports_as_the_same_module_with_a_warning(old, new):
    new_module = importlib.import_module(f"{NAME}.{new}")
    sys.modules.pop(f"{NAME}.{old}", None)  # a test before may have imported the old path already
    with pytest.warns(DeprecationWarning, match=f"{NAME}.{new}"):
        old_module = importlib.import_module(f"{NAME}.{old}")
    assert old_module is new_module
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert importlib.import_module(f"{NAME}.{new}") is new_module  # the new path: no warning


# -- what the README and docs show ----------------------------------------------------------------

ROOT = PACKAGE.parents[1]
DOCUMENTED_NON_MODULES = {"backbonekit.lock", "backbonekit.fpn"}  # a lock file's and an ONNX metadata key's names


def documented_paths() -> list[str]:
    import re

    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {m.group(0).rstrip(".") for path in texts if path.exists()
             for m in re.finditer(r"\bbackbonekit(?:\.[A-Za-z_]\w*)+", path.read_text(encoding="utf-8"))}
    return sorted(found - DOCUMENTED_NON_MODULES)


def resolves(path: str) -> bool:
    """``path`` is a module, or an attribute (chain) of the longest importable module prefix."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        try:
            for name in parts[end:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="run from an installed copy without the docs")
def test_every_python_path_the_readme_and_docs_show_imports():
    paths = documented_paths()
    assert len(paths) > 30  # the scan reads the docs (a broken regex would pass with nothing to check)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        broken = [path for path in paths if not resolves(path)]
    assert not broken, f"documented but not importable: {broken}"


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="run from an installed copy without the docs")
def test_every_benchmark_script_the_readme_and_docs_name_exists():
    import re

    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {m.group(0) for path in texts for m in re.finditer(r"\bbenchmarks/\w+\.py\b", path.read_text(encoding="utf-8"))}
    assert len(named) > 3  # the scan reads the docs
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"documented but not in the repository: {missing}"
