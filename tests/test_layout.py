"""The flat root reads as a table of contents: every module is in one room, and imports point one way.

Walks every application module's imports (ast, at any depth, lazy imports included) and fails naming
each wrong-way edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN_CARD = ("function_app.py", "host.json", "requirements.txt", "local.settings.json.example",
               "base_controller.py", "controller_hello_world.py", "controller_factory.py", "task_manager.py",
               "repositories.py", "services_raster.py", "services_stac.py", "models.py", "README.md")
FOUNDATIONS = {"models", "config", "errors", "logs"}

# room -> the rooms it may import (besides itself and the foundations)
RULES: dict[str, set[str]] = {
    "app": {"api", "engine"},
    "api": {"engine"},
    "engine": {"controller", "repository"},
    "controller": {"services"},
    "services": set(),
    "repository": set(),
    "local_host": set(),
    "cli": set(),
    "foundation": set(),
}
# third-party packages only some rooms may import: storage and database SDKs live in repositories
SDKS = {"azure.data", "azure.storage", "azure.core", "azure.identity", "psycopg", "psycopg_pool", "pypgstac",
        "requests", "urllib3"}
SDK_ROOMS = {"repository", "local_host", "cli"}


def room(module: str) -> str | None:
    """The room a root module belongs to, by its name (None: not an application module)."""
    if module in FOUNDATIONS:
        return "foundation"
    if module == "function_app":
        return "app"
    if module in ("task_manager",) or module.startswith("engine_"):
        return "engine"
    if module == "base_controller" or module.startswith("controller_"):
        return "controller"
    if module == "repositories" or module.startswith("repository_"):
        return "repository"
    for prefix, name in (("api_", "api"), ("services_", "services"), ("cli", "cli"), ("local_host", "local_host")):
        if module.startswith(prefix):
            return name
    return None


def modules() -> dict[str, Path]:
    """Every Python module at the root."""
    return {p.stem: p for p in sorted(ROOT.glob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (absolute imports only: the layout is flat)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_root_module_is_in_one_room():
    homeless = [name for name in modules() if room(name) is None]
    assert not homeless, f"modules with no room prefix: {homeless}"
    assert not [p for p in ROOT.glob("*/__init__.py")], "no packages for application code: the layout is flat"


def test_the_design_card_names_stay():
    missing = [name for name in DESIGN_CARD if not (ROOT / name).exists()]
    assert not missing, f"missing from the root: {missing}"


def wrong_way_edges() -> list[str]:
    """Every import that breaks the rules, as 'a.py -> b (room -> room)'."""
    local = modules()
    wrong = []
    for name, path in local.items():
        here = room(name)
        allowed = RULES[here] | {here, "foundation"}
        for target in sorted(imports(path)):
            top = target.split(".")[0]
            if top in local:
                there = room(top)
                if there not in allowed:
                    wrong.append(f"{name}.py -> {top} ({here} -> {there})")
            elif any(target == sdk or target.startswith(sdk + ".") for sdk in SDKS) and here not in SDK_ROOMS:
                wrong.append(f"{name}.py -> {target} ({here} -> SDK)")
    return wrong


def test_imports_point_one_way():
    wrong = wrong_way_edges()
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)


@pytest.mark.parametrize("edge, expected", [
    ({"services_raster": "repositories"}, "services -> repository"),
    ({"repository_rasters": "task_manager"}, "repository -> engine"),
    ({"engine_status": "api_jobs"}, "engine -> api"),
    ({"controller_raster": "repository_rasters"}, "controller -> repository"),
    ({"services_stac": "azure.storage.blob"}, "services -> SDK"),
])
def test_the_rule_check_catches_a_wrong_edge(tmp_path, monkeypatch, edge, expected):
    """The check can fail: plant one wrong import in a copy of a module and see it named."""
    ((module, target),) = edge.items()
    copy = tmp_path / f"{module}.py"
    copy.write_text((ROOT / f"{module}.py").read_text() + f"\nimport {target}\n")
    real = modules()
    monkeypatch.setattr(__import__(__name__), "modules", lambda: {**real, module: copy})
    assert any(expected in edge_text and edge_text.startswith(module) for edge_text in wrong_way_edges())


def import_graph() -> dict[str, set[str]]:
    """Root module -> the root modules it imports (at any depth: function-level and TYPE_CHECKING imports count)."""
    local = modules()
    return {name: {t.split(".")[0] for t in imports(path)} & set(local) - {name} for name, path in local.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan's
    algorithm, iterative), each sorted; a module importing itself counts too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)


def test_no_import_cycles():
    """No two root modules import each other, directly or around a loop, counting lazy and TYPE_CHECKING
    imports (a cycle hidden behind either is still a design that cannot be read one module at a time)."""
    found = cycles(import_graph())
    assert not found, "import cycles between root modules:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"d"}, "d": {"c"}, "e": {"e"}}, [["c", "d"], ["e"]]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_check_finds_a_cycle_in_a_small_graph(graph, expected):
    assert cycles(graph) == expected


def test_the_cycle_check_catches_a_planted_cycle(tmp_path, monkeypatch):
    """The check can fail on the real root: copies of two modules that import each other (one only when type
    checking, the other inside a function) are named as a cycle."""
    planted = {"engine_counters": "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import engine_faults\n",
               "engine_faults": "\n\ndef _planted():\n    import engine_counters\n    return engine_counters\n"}
    real = modules()
    copies = {}
    for name, tail in planted.items():
        copies[name] = tmp_path / f"{name}.py"
        copies[name].write_text((ROOT / f"{name}.py").read_text() + tail)
    assert not any({"engine_counters", "engine_faults"} <= set(c) for c in cycles(import_graph()))
    monkeypatch.setattr(__import__(__name__), "modules", lambda: {**real, **copies})
    assert any({"engine_counters", "engine_faults"} <= set(c) for c in cycles(import_graph()))
