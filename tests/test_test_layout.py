"""The tests grow by sharing: helpers live in helper modules, not in each other.

Every helper more than one test file uses lives in a helper module (support.py, conftest_geo.py,
chaos_cluster.py, and the process wrappers azurite_proc.py, host_proc.py, postgres_proc.py). conftest.py
holds fixtures only, which pytest finds by itself: nothing imports it as a module, and nothing imports a test
module (``test_*.py``), lazy imports included. No helper is written out twice in two test files.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
BENCHMARKS = TESTS.parent / "benchmarks"


def importers() -> list[Path]:
    """Every file that may import test helpers: the tests, their helper modules, the benchmarks."""
    return sorted(TESTS.glob("*.py")) + sorted(BENCHMARKS.glob("*.py"))


def imported(path: Path) -> set[str]:
    """Every top-level module name ``path`` imports, at any depth (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def forbidden_imports(paths: list[Path]) -> list[str]:
    """Every import of conftest or of a test module, as 'file -> module'."""
    return [f"{path.name} -> {name}" for path in paths for name in sorted(imported(path))
            if name == "conftest" or (name.startswith("test_") and name != path.stem)]


def test_no_file_imports_conftest_or_a_test_module():
    wrong = forbidden_imports(importers())
    assert not wrong, ("import helpers from support.py (or conftest_geo.py, chaos_cluster.py), not from conftest "
                       "or another test module:\n" + "\n".join(wrong))


def is_fixture(node: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in node.decorator_list)


def helpers(path: Path) -> dict[str, str]:
    """A test file's top-level helpers (not tests, not fixtures): name -> their shape (the code without
    names and docstrings, so a renamed copy still matches)."""
    out = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("test_"):
            continue
        if isinstance(node, ast.FunctionDef) and is_fixture(node):
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            body = body[1:]  # the docstring
        shape = ast.dump(ast.Module(body=body, type_ignores=[]))
        if isinstance(node, ast.FunctionDef):
            shape = ast.dump(node.args) + shape
        if len(shape) > 400:  # one-liners (a tiny lambda-like helper) may coincide without being copies
            out[node.name] = shape
    return out


def copied_helpers(paths: list[Path]) -> list[str]:
    """Every helper written out in more than one test file, as 'name in a.py = name in b.py'."""
    seen: dict[str, str] = {}
    copies = []
    for path in paths:
        for name, shape in helpers(path).items():
            if shape in seen:
                copies.append(f"{name} in {path.name} = {seen[shape]}")
            else:
                seen[shape] = f"{name} in {path.name}"
    return copies


def test_no_helper_is_copied_between_test_files():
    copies = copied_helpers(sorted(TESTS.glob("test_*.py")))
    assert not copies, "move these into support.py (or conftest_geo.py) and import them:\n" + "\n".join(copies)


@pytest.mark.parametrize("line, expected", [
    ("from conftest import fresh_settings", "-> conftest"),
    ("import conftest", "-> conftest"),
    ("from test_http_api import wait_terminal", "-> test_http_api"),
    ("import test_engine as engine_tests", "-> test_engine"),
    ("def later():\n    from test_chaos_transport import run_transport\n", "-> test_chaos_transport"),
])
def test_the_import_check_catches_a_planted_import(tmp_path, line, expected):
    """The check can fail: plant one such import in a copy of a test file and see it named."""
    copy = tmp_path / "test_engine_copy.py"
    copy.write_text((TESTS / "test_engine.py").read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    assert forbidden_imports([TESTS / "test_engine.py"]) == []
    assert [f for f in forbidden_imports([copy]) if f.endswith(expected)] == [f"test_engine_copy.py {expected}"]


def test_the_copy_check_catches_a_planted_copy(tmp_path):
    """The check can fail: copy a support helper into two test files (renamed in one) and see it named."""
    source = ast.get_source_segment((TESTS / "support.py").read_text(encoding="utf-8"), next(
        n for n in ast.parse((TESTS / "support.py").read_text(encoding="utf-8")).body
        if isinstance(n, ast.FunctionDef) and n.name == "wait_terminal"))
    (tmp_path / "test_a.py").write_text(source + "\n", encoding="utf-8")
    (tmp_path / "test_b.py").write_text(source.replace("def wait_terminal", "def _wait") + "\n", encoding="utf-8")
    assert copied_helpers([tmp_path / "test_a.py", tmp_path / "test_b.py"]) == ["_wait in test_b.py = wait_terminal "
                                                                               "in test_a.py"]
