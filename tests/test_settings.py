"""Settings have one home and one way in (issue 21): config.Settings groups them by concern and the settings
table in docs/configuration.md lists them in the same order; job types and handlers read the settings they are
handed (``validate(raw, settings)``, ``ctx.io.settings``), never the process's global ``get_settings()``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from config import Settings
from controller_factory import get_controller
from errors import ParameterValidationError
from support import settings_table

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_DOC = ROOT / "docs" / "configuration.md"


def _env_names(field_name: str) -> list[str]:
    alias = Settings.model_fields[field_name].validation_alias
    return [c for c in getattr(alias, "choices", []) if isinstance(c, str) and c != field_name]


def test_the_settings_table_follows_the_order_of_config():
    by_env = {env: field for field in Settings.model_fields for env in _env_names(field)}
    documented = [by_env[name] for name in settings_table() if name in by_env]
    assert documented == list(Settings.model_fields), "docs/configuration.md lists settings in config.py's order"


def test_no_job_type_or_service_reaches_for_the_global_settings():
    readers = []
    for path in [ROOT / "base_controller.py", *ROOT.glob("controller_*.py"), *ROOT.glob("services_*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name | ast.Attribute) and "get_settings" in (getattr(node, "id", None),
                                                                                getattr(node, "attr", None)):
                readers.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and any(a.name == "get_settings" for a in node.names):
                readers.append(f"{path.name}:{node.lineno}")
    assert not readers, f"read the settings handed in (validate(raw, settings), ctx.io.settings): {readers}"


def test_validation_reads_the_settings_it_is_handed():
    """A job type validates against the deployment's settings it is given, whatever the process's are."""
    noop, hello = get_controller("noop"), get_controller("hello_world")
    assert noop.validate({"n": 50}, Settings(max_tasks_per_stage=100)).n == 50
    with pytest.raises(ParameterValidationError, match="MAX_TASKS_PER_STAGE"):
        noop.validate({"n": 101}, Settings(max_tasks_per_stage=100))
    with pytest.raises(ParameterValidationError, match="TASK_TIME_LIMIT_S"):
        hello.validate({"sleep_ms": 3000}, Settings(task_time_limit_s=2))
    raster = get_controller("process_raster").validate({"blob": "a.tif"}, Settings(input_container="mine"))
    assert raster.container == "mine"  # SETTINGS_DEFAULTS: the field's default is the setting handed in
