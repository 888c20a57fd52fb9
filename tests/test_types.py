"""The handler contract, checked by a tool: mypy, strict on what a job type is (base_controller.py), the
handlers and planners (controller_*.py), the work they call (services_*.py) and the engine that runs them
(engine_*.py, task_manager.py); configured in pyproject.toml ([tool.mypy]). A type error fails ``./dev.sh test``.

And the tagged results: what the engine makes of one run of a handler (``Completed``, ``Failed``, ``Retry``).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

import controller_factory
from base_controller import Completed, Failed, Retry, TaskHandler, output_json
from errors import ErrorCode
from models import Status, TaskRecord, make_task_id

ROOT = Path(__file__).resolve().parents[1]
MYPY_BUDGET_S = 120  # a cold run (no .mypy_cache) takes about 15 s on 2 cores; a warm one about 1 s


def mypy(*args: str) -> tuple[int, str, float]:
    """Run mypy with the project's configuration from the repository root: (exit code, output, seconds)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed: ./dev.sh setup installs requirements-dev.txt")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=MYPY_BUDGET_S)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - began


def test_the_handler_contract_type_checks():
    code, output, took = mypy()
    assert code == 0, f"mypy found type errors (pyproject.toml [tool.mypy]; run .venv/bin/mypy):\n{output}"
    assert "no issues found" in output, output
    print(f"mypy: {output.strip()} in {took:.1f} s")


def test_a_handler_that_breaks_the_contract_fails_the_check(tmp_path):
    """The check can fail: a handler calling what TaskIO does not offer, returning what is not a
    ``TaskOutput``, or passing ``TaskIO`` where a path is expected, is reported."""
    planted = tmp_path / "controller_planted.py"
    planted.write_text('''
from pydantic import BaseModel

from base_controller import TaskContext, TaskHandler


class Params(BaseModel):
    blob: str


def bad_call(p: Params, ctx: TaskContext) -> dict[str, str]:
    return {"url": ctx.io.rasters.sign(p.blob)}


def bad_result(p: Params, ctx: TaskContext) -> int:
    return 3


HANDLERS = (TaskHandler("bad_call", Params, bad_call), TaskHandler("bad_result", Params, bad_result))
''')
    code, output, _ = mypy("--python-executable", sys.executable, str(planted))  # the project's configuration
    assert code == 1, output
    assert 'controller_planted.py:12: error: "RasterBlobs" has no attribute "sign"' in output, output
    assert ('controller_planted.py:19: error: Argument 3 to "TaskHandler" has incompatible type '
            '"Callable[[Params, TaskContext], int]"') in output, output


# ------------------------------------------------------------------ tagged results
class Greeting(BaseModel):
    greeting: str


def test_a_handler_output_is_stored_as_json_whether_a_model_or_a_json_object():
    assert output_json(Greeting(greeting="hi")) == {"greeting": "hi"}
    assert output_json({"greeting": "hi"}) == {"greeting": "hi"}


def test_each_tagged_result_names_the_status_the_task_takes():
    assert Completed({"x": 1}).status == Status.COMPLETED
    assert Failed("no", ErrorCode.TASK_FAILED).status == Status.FAILED
    assert Retry("later", ErrorCode.STORAGE).status == Status.QUEUED  # handed back, tried again


def test_the_engine_makes_a_tagged_result_of_each_way_a_handler_ends(engine, monkeypatch):
    from errors import TaskError, TransientError

    def handler(p: Greeting, ctx) -> Greeting:
        if p.greeting == "fail":
            raise TaskError("asked to fail")
        if p.greeting == "later":
            raise TransientError("storage is busy")
        if p.greeting == "bug":
            raise KeyError("oops")
        return Greeting(greeting=f"{p.greeting} from {ctx.task_id}")

    monkeypatch.setitem(controller_factory.TASK_HANDLERS, "greet_typed", TaskHandler("greet_typed", Greeting, handler))

    task_id = make_task_id("j" * 64, 1, 0)

    def run(parameters: dict) -> object:
        row = TaskRecord(job_id="j" * 64, task_id=task_id, stage=1, index=0, task_type="greet_typed",
                         parameters=parameters, attempts=1)
        return engine._call_handler(row)

    assert run({"greeting": "hi"}) == Completed({"greeting": f"hi from {task_id}"})
    assert run({"greeting": "fail"}) == Failed("asked to fail", ErrorCode.TASK_FAILED)
    assert run({"greeting": "later"}) == Retry("storage is busy", ErrorCode.STORAGE)
    assert run({"greeting": "bug"}) == Failed("KeyError: 'oops'", ErrorCode.INTERNAL_ERROR)
    invalid = run({"greeting": 3})
    assert isinstance(invalid, Failed) and invalid.code == ErrorCode.INVALID_PARAMETERS
    assert invalid.error.startswith("invalid task parameters: greeting:")
