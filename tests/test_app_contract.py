"""The app's contract with the Functions host: function index, its table in docs/api.md, message encoding."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

import function_app
from config import STORAGE_CONNECTION, load_host_json, queue_message_encoding
from local_host import describe_functions
from local_host_queues import decode_body
from models import StageMessage, TaskMessage, decode_job_message
from repository_queues import encode_policies

FUNCTION_TABLE_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented_function_table() -> dict[str, dict[str, str]]:
    """Rows of the function table in docs/api.md (between the <!-- functions --> markers)."""
    text = FUNCTION_TABLE_DOC.read_text()
    block = text.split("<!-- functions -->")[1].split("<!-- /functions -->")[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = {"trigger": cells[1], "target": cells[2], "methods": cells[3], "connection": cells[4]}
    return rows


@pytest.fixture(scope="module")
def functions(monkeypatch_module_env):
    return {f.name: f for f in describe_functions(function_app.app)}


@pytest.fixture(scope="module")
def monkeypatch_module_env():
    mp = pytest.MonkeyPatch()
    mp.setenv("JOBS_QUEUE", "geoetl-jobs")
    mp.setenv("TASKS_QUEUE", "geoetl-tasks")
    yield
    mp.undo()


def test_function_index_matches_the_documented_table(functions):
    documented = documented_function_table()
    assert set(documented) == set(functions)
    for name, fn in functions.items():
        row = documented[name]
        assert row["trigger"] == fn.trigger
        if fn.trigger == "http":
            assert row["target"] == f"/api/{fn.route}" and row["methods"] == ",".join(fn.methods)
            assert fn.auth_level == "function"
        elif fn.trigger == "queue":
            assert row["target"] == fn.queue_name_raw and row["connection"] == fn.connection
            assert fn.connection == STORAGE_CONNECTION
        elif fn.trigger == "timer":
            assert row["target"] == fn.schedule_raw


def test_queue_names_come_from_settings(functions):
    assert functions["process_job_message"].queue_name_raw == "%JOBS_QUEUE%"
    assert functions["process_task_message"].queue_name_raw == "%TASKS_QUEUE%"
    assert functions["process_job_message"].queue_name == "geoetl-jobs"


@pytest.mark.parametrize("encoding", ["base64", "none"])
def test_producer_encoding_agrees_with_what_the_host_decodes(azurite, encoding):
    """What our producer puts on the wire is what a host configured by host.json hands the function."""
    from repositories import Repositories
    from support import fresh_settings

    settings = fresh_settings(azurite.connection_string)
    repos = Repositories(settings)
    from repository_queues import QueueProducer

    producer = QueueProducer(repos.clients.queues, settings.jobs_queue, encoding=encoding)
    producer.ensure()
    sent = StageMessage(job_id="a" * 64, stage=1)
    producer.send(sent)
    raw = QueueClient.from_connection_string(azurite.connection_string, settings.jobs_queue)  # no decoding
    (wire,) = list(raw.receive_messages())
    if encoding == "base64":
        assert base64.b64decode(wire.content).decode() == sent.encode()
    else:
        assert wire.content == sent.encode()
    assert decode_job_message(decode_body(wire.content, encoding)) == sent


def test_the_shipped_host_json_and_producers_use_the_same_encoding():
    host = load_host_json()
    assert host["extensions"]["queues"]["messageEncoding"] == queue_message_encoding() == "base64"
    encode, _ = encode_policies(queue_message_encoding())
    wire = encode.encode(TaskMessage(job_id="b" * 64, task_id="b" * 12 + "-s01-t000001").encode())
    assert json.loads(decode_body(wire, "base64"))["task_id"] == "b" * 12 + "-s01-t000001"


def test_host_json_writes_every_queue_setting_out():
    queues = load_host_json()["extensions"]["queues"]
    assert set(queues) >= {"batchSize", "newBatchThreshold", "maxDequeueCount", "visibilityTimeout",
                           "maxPollingInterval", "messageEncoding"}
    assert re.fullmatch(r"\d\d:\d\d:\d\d", queues["visibilityTimeout"])


@pytest.mark.infra
def test_azure_functions_doctor_finds_no_failure(tmp_path):
    """An independent static check of the v2 app (what `func start` and Azure expect): no failed rule.

    The doctor walks every file under its path, so it reads a copy of the files git tracks: the project as
    deployed, without local environments and caches (.venv, node_modules, .venv-checkov: minutes of walking)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doctor = shutil.which("azure-functions-doctor", path=str(Path(sys.executable).parent))
    if doctor is None:
        pytest.skip("azure-functions-doctor is not installed (requirements-dev.txt installs it)")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=False)
    app = root
    if tracked.returncode == 0 and tracked.stdout:
        app = tmp_path / "app"
        for name in filter(None, tracked.stdout.decode().split("\0")):
            if (root / name).is_file():
                (app / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, app / name)
    run = subprocess.run([doctor, "doctor", "--path", str(app), "--format", "json"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    failed = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("status") == "fail":
                failed.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(run.stdout))
    assert failed == []
