"""The import structure: shared/ holds only what components share, no import circles, a shallow web folder.

The graph is read from the source with ast (nothing is imported): an edge A -> B for every
``import B`` / ``from B import x`` / ``from P import B`` naming a project module, at module level
or inside a function (a lazy import still runs in the same process, so it still counts as a floor).
"""
from __future__ import annotations

import ast
import os
from functools import lru_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = ("webserver", "worker", "autoscaler", "classifycloud")
PACKAGES = ("shared",) + COMPONENTS
WEB_ENTRIES = ("webserver.app", "webserver.wsgi")   # the app factory, and gunicorn's module above it
MAX_WEB_DEPTH = 8                                   # the review of 2026-12-06 counted 9 floors from wsgi
PLUGIN_FOLDERS = ("shared.kinds",)                  # packages that import every module of their folder themselves


def module_files(root: str = ROOT) -> dict[str, str]:
    """{dotted module name: path} for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(root, package)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imported_modules(tree: ast.AST, modules: dict[str, str], module_level_only: bool) -> set[str]:
    """The project modules an ast imports (``from P import m`` names module P.m when there is one)."""
    nodes = tree.body if module_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    out.add(full)
                elif node.module in modules:
                    out.add(node.module)
    return out


def file_imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project files one file names anywhere in it: module level, in functions, under TYPE_CHECKING,
    relative imports resolved (``from . import m``, ``from .base import X``)."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
    return (out & set(modules)) - {name}


def file_graph(root: str = ROOT) -> dict[str, frozenset[str]]:
    """{module: the project files it names}: the graph file-level import cycles are read from."""
    modules = module_files(root)
    return {name: frozenset(file_imports(name, path, modules)) for name, path in modules.items()}


@lru_cache(maxsize=2)
def import_graph(module_level_only: bool = False) -> dict[str, frozenset[str]]:
    """{module: the project modules it imports}."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        graph[name] = frozenset(imported_modules(tree, modules, module_level_only) - {name})
    return graph


def longest_chain(graph: dict[str, frozenset[str]], start: str) -> list[str]:
    """The longest chain of imports from start that visits no module twice (the modules, start included)."""
    best: list[str] = []

    def walk(path: list[str]) -> None:
        nonlocal best
        if len(path) > len(best):
            best = list(path)
        for nxt in sorted(graph[path[-1]] - set(path)):
            walk(path + [nxt])

    walk([start])
    return best


def circles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_in_shared_is_imported_by_two_or_more_components():
    graph = import_graph()
    lonely = {}
    for module in (m for m in graph if m.startswith("shared.")):
        # a plug-in (shared/kinds/<kind>.py) is loaded by its package's discovery: its users are the package's
        target = next((p for p in PLUGIN_FOLDERS if module.startswith(p + ".")), module)
        users = {importer.split(".")[0] for importer, imports in graph.items() if target in imports}
        if len(users & set(COMPONENTS)) < 2:
            lonely[module] = sorted(users & set(COMPONENTS))
    assert not lonely, f"shared/ modules with fewer than two components importing them (move to the owner): {lonely}"


def test_no_module_level_import_circles():
    assert circles(import_graph(module_level_only=True)) == []


def test_the_runtime_folders_do_not_import_the_cli_or_the_web():
    graph = import_graph()
    wrong = sorted(f"{a} -> {b}" for a, imports in graph.items() for b in imports
                   if a.split(".")[0] in ("shared", "worker", "autoscaler") and b.split(".")[0] in ("classifycloud", "webserver"))
    assert wrong == []


def test_the_models_import_nothing_of_the_queue_side():
    # "models know nothing of SQS": no consumer, loop, transport or live wiring under worker/models
    graph = import_graph()
    wrong = sorted(f"{a} -> {b}" for a, imports in graph.items() if a.startswith("worker.models") for b in imports
                   if b == "shared.transport" or (b.startswith("worker.") and not b.startswith("worker.models")))
    assert wrong == []


def test_the_web_folder_is_at_most_eight_floors_of_imports_deep():
    graph = import_graph()
    chains = {entry: longest_chain(graph, entry) for entry in WEB_ENTRIES}
    for entry, chain in chains.items():
        print(f"{entry}: {len(chain)} floors: {' -> '.join(chain)}")
    assert all(len(chain) <= MAX_WEB_DEPTH for chain in chains.values()), chains


def test_the_chain_measure_counts_lazy_imports_and_every_floor():
    # the measure itself: a module importing in a function still adds a floor, and floors count modules
    graph = {"a": frozenset({"b"}), "b": frozenset({"c", "a"}), "c": frozenset()}
    assert longest_chain(graph, "a") == ["a", "b", "c"]
    tree = ast.parse("import x\ndef f():\n    from x import y\n")
    modules = {"x": "x.py", "x.y": "x/y.py"}
    assert imported_modules(tree, modules, module_level_only=False) == {"x", "x.y"}
    assert imported_modules(tree, modules, module_level_only=True) == {"x"}


def test_no_file_imports_one_that_imports_it_back_lazily_for_typing_or_through_its_package():
    # every cycle of files, not only the module-level ones: a lazy or TYPE_CHECKING import is still a
    # dependency a reader follows, and a package __init__ that imports its modules must not be imported by them
    assert circles(file_graph()) == []


def test_the_file_cycle_check_finds_a_typing_import_and_a_package_that_its_module_imports_back(tmp_path):
    pkg = tmp_path / "shared" / "plug"
    pkg.mkdir(parents=True)
    (tmp_path / "shared" / "__init__.py").write_text("")
    (tmp_path / "shared" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from shared.b import B\n")
    (tmp_path / "shared" / "b.py").write_text("def f():\n    import shared.a\n")
    (pkg / "__init__.py").write_text("from .impl import run\n")
    (pkg / "impl.py").write_text("from shared.plug import helper\n")
    (pkg / "base.py").write_text("")
    found = circles(file_graph(str(tmp_path)))
    assert sorted(found) == [["shared.a", "shared.b"], ["shared.plug", "shared.plug.impl"]]
    (pkg / "impl.py").write_text("from .base import helper\n")   # the cure: a base module both import
    assert circles(file_graph(str(tmp_path))) == [["shared.a", "shared.b"]]


def test_importing_the_web_package_loads_no_app_until_create_app_is_asked_for():
    import subprocess
    import sys
    code = ("import sys, webserver; before = 'webserver.app' in sys.modules; webserver.create_app; "
            "print(before, 'webserver.app' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]
