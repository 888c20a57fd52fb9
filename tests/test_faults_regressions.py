"""Regression tests for reliability issue #10, one per numbered case, against real Azurite.

Each test plays out the case's exact sequence: lost replies come from the transport fault injector
(repository_faults, armed per request), races from a hook at the engine's own fault points or around
one store call. Every test fails on the engine before f24dec5 (049579e) for the reason its case names.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from functools import partial

import pytest
from azure.functions.queue import QueueMessage
from pydantic import BaseModel

import api_jobs
import engine_faults
import engine_recovery
import function_app
import repository_clients
import repository_faults
from base_controller import JobController, Stage, TaskHandler
from support import (
    NoRetryClients, Receiver, assert_completed_exactly, replace_handler, submit, take,
    take_job_message, take_task_message,
)
from support import make_engine as any_engine
from controller_factory import JOB_TYPES, TASK_HANDLERS
from errors import TaskError, TransientError
from models import (
    CompletionMessage, StageMessage, Status, TaskMessage, make_task_id,
    utcnow,
)
from queue_driver import QueueDriver
from repositories import Repositories
from repository_entities import task_row_key
from task_manager import Engine

JOB_ROW = "RowKey='job')"  # URL path of a job row (the listing rows have other keys)
SECRET = "regression secret"


# ---------------------------------------------------------------- fixtures and helpers
class ScriptedFaults(repository_faults.TransportFaults):
    """The transport fault injector, scripted only: the first armed fault that fires disarms the others
    (its alternatives: a task row is written by a PUT of its own, or inside a $batch); ``fail_write(k)``
    gives the k-th table write from now (0: the next) a fault, whichever request it is."""

    countdown: int | None = None

    def fail_write(self, k: int | None, mode: str = "refuse") -> None:
        self.countdown, self.countdown_mode = k, mode

    def decide(self, service: str, method: str, url: str):
        if self.countdown is not None and service == "table" and method.upper() not in ("GET", "HEAD"):
            if self.countdown == 0:
                self.arm(self.countdown_mode, method=method, service=service)
                self.countdown = None
            else:
                self.countdown -= 1
        fault = super().decide(service, method, url)
        if fault is not None:
            self.disarm()
        return fault


def lose_task_write(faults: ScriptedFaults, stage: int, index: int) -> None:
    """Lose the reply to the next write of one task row, whichever request carries it."""
    faults.arm("lose", method="PUT", match=task_row(stage, index), service="table")
    faults.arm("lose", method="POST", match="$batch", service="table")


@pytest.fixture
def faults(monkeypatch):
    """A transport fault injector with no random faults, installed for the clients built in this test."""
    injector = ScriptedFaults(repository_faults.FaultSpec(process_seed=10))
    previous = repository_faults.install(injector)
    if not hasattr(repository_clients, "repository_faults"):  # the clients before f24dec5: mount it here
        original = repository_clients._CountingTransport._init_session

        def init_session(self, session):
            original(self, session)
            adapter = repository_faults.FaultyAdapter(
                injector, self._service, pool_connections=4, pool_maxsize=self._pool_size,
                max_retries=repository_clients.requests.adapters.Retry(total=False, redirect=False,
                                                                      raise_on_status=False))
            for prefix in ("http://", "https://"):
                session.mount(prefix, adapter)

        monkeypatch.setattr(repository_clients._CountingTransport, "_init_session", init_session)
    yield injector
    repository_faults.install(previous)


# An engine over fresh storage names: no backoff, no sweeper grace, 2 s leases (unless overridden).
make_engine = partial(any_engine, task_time_limit_s=2)


@pytest.fixture
def engine(azurite, faults):
    """The engine, its clients behind the fault injector."""
    return make_engine(azurite)


def http(call) -> tuple[int, dict]:
    """What the HTTP client sees: domain errors as their status codes."""
    return api_jobs.respond(call)


def depth(queue) -> int:
    """Messages in a queue, visible or not."""
    return queue.client.get_queue_properties().approximate_message_count


def task_row(stage: int, index: int) -> str:
    """URL path fragment of one task row."""
    return f"RowKey='{task_row_key(stage, index)}')"


# ---------------------------------------------------------------- 1. release after a transient error
def test_case01_lost_reply_to_the_release_still_requeues_the_task(engine, faults, monkeypatch):
    """The release is applied and its reply lost (the SDK's re-sent PUT meets 412 on our own write): the
    write id recognises it and the retry message is sent (before: a conflict, no message, the task stranded)."""
    job_id = submit(engine, {"n": 1, "transient_failures": 1})
    engine.run_stage(take_job_message(engine))
    msg = take_task_message(engine)

    def greet_then_lose_the_release(p, ctx):
        if ctx.attempt == 1:
            lose_task_write(faults, 1, 0)
        return greet.run(p, ctx)  # attempt 1: a transient error

    greet = replace_handler(monkeypatch, "hello_greeting", greet_then_lose_the_release)
    engine.run_task(msg)  # returns normally: the host deletes the message
    assert faults.counts()["lose"] == 1 and faults.armed() == 0
    task = engine.store.get_task(job_id, 1, 0)
    assert (task.status, task.attempts) == (Status.QUEUED, 1)
    assert depth(engine.repos.tasks_queue) == 1, "the task is queued with no message: nothing will ever run it"
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 1)


def test_case01_sweeper_redrives_queued_tasks_whose_messages_are_gone(azurite):
    """The backstop: queued tasks of a dispatched stage with no progress for retry_max_delay_s + grace."""
    engine = make_engine(azurite, retry_max_delay_s=1)
    job_id = submit(engine, {"n": 3})
    engine.run_stage(take_job_message(engine))
    engine.repos.tasks_queue.client.clear_messages()  # every task message lost
    assert engine.sweep() == {}  # too early: the retry delay may still be running
    later = utcnow() + timedelta(seconds=5)
    assert engine.sweep(now=later) == {"resent_stale_task": 3}
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 3)


# ---------------------------------------------------------------- 2. the poison function itself failing
def test_case02_a_storage_fault_in_the_poison_function_requeues_its_message(azurite, faults, monkeypatch):
    """The poison function never raises: a storage fault puts the message back on its own queue (with a
    delay), so nothing can reach ``<queue>-poison-poison``, which no function reads."""
    monkeypatch.setattr(engine_recovery, "POISON_RETRY_DELAY_S", 0, raising=False)
    engine = make_engine(azurite)
    job_id = submit(engine, {"n": 1, "transient_failures": 100})
    engine.run_stage(take_job_message(engine))
    Engine(engine.repos, max_attempts=1).run_task(take_task_message(engine))  # gives up: a poison message
    (poison,) = take(engine.repos.tasks_poison)
    outage = Engine(Repositories(engine.settings, NoRetryClients(engine.settings)))
    faults.arm("busy", method="GET", match=task_row(1, 0), service="table")  # storage answers 503
    try:
        outage.on_task_poison(poison.content)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the poison function raised {type(exc).__name__}: {exc}; the host retries it and then "
                    "moves it to <queue>-poison-poison, which nothing reads: the task stays queued forever")
    assert faults.counts()["busy"] == 1
    assert depth(engine.repos.tasks_poison) == 1  # back on its own queue
    (again,) = take(engine.repos.tasks_poison)
    engine.on_task_poison(again.content)  # storage is back: the failure is recorded
    QueueDriver(engine).run(job_id)
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.FAILED and task.error_details.startswith("gave up after 1 attempts")
    assert engine.store.get_job(job_id).status == Status.FAILED


# ---------------------------------------------------------------- 3. retry racing a late completion
def test_case03_a_late_completion_during_retry_cannot_fail_the_job_again(engine, monkeypatch):
    """The failure's completion message arrives again right after retry writes the job row: it must find
    the stage already reopened (before: the job failed again, its reopened stage completed, and later
    stages never ran)."""
    job_id = submit(engine, {"n": 4, "fail_indices": [1]})
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).status == Status.FAILED
    t = engine.store.get_task(job_id, 1, 1)
    engine.store.replace_task(t.model_copy(update={"parameters": {**t.parameters, "fail": False}}))
    real_replace, raced = engine.store.replace_job, []

    def replace_then_late_completion(job):
        written = real_replace(job)
        if not raced and written.status == Status.PROCESSING:
            raced.append(True)
            engine.complete(CompletionMessage(job_id=job_id))  # redelivered late
        return written

    monkeypatch.setattr(engine.store, "replace_job", replace_then_late_completion)
    assert http(lambda: api_jobs.retry(engine, job_id))[0] == 202
    assert raced
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 4)


# ---------------------------------------------------------------- 4. a delayed duplicate stage message
def test_case04_a_delayed_duplicate_stage_message_never_moves_the_job_backwards(engine, monkeypatch):
    """Copy A of the stage-1 message stops after writing the rows; copy B runs stage 1 to its end and
    stage 2 starts; then A resumes with the job row it read at stage 1."""
    job_id = submit(engine, {"n": 2})
    first = take_job_message(engine)
    real_point, state = engine_faults.point, {"raced": False}

    def copy_b_runs_ahead(name: str) -> None:
        if name == "stage_rows_written" and not state["raced"]:
            state["raced"] = True
            engine.run_stage(first)
            for i in range(2):
                engine.run_task(TaskMessage(job_id=job_id, task_id=make_task_id(job_id, 1, i)))
            engine.run_stage(take_job_message(engine))
            assert engine.store.get_job(job_id).stage == 2
        real_point(name)

    monkeypatch.setattr(engine_faults, "point", copy_b_runs_ahead)
    engine.run_stage(first)  # copy A
    assert state["raced"]
    job = engine.store.get_job(job_id)
    assert (job.stage, job.stage_name, job.status) == (2, "worlds_reply", Status.PROCESSING)
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 2)


# ---------------------------------------------------------------- 5. end-of-task transaction reply lost
def test_case05_lost_reply_to_the_end_of_task_transaction_still_advances_at_once(engine, faults, monkeypatch):
    """The SDK does not re-send a $batch: the commit landed but a TransientError surfaces. The end token
    recognises it and the advance is sent now (before: the error handed the task back and the advance
    waited for the sweeper)."""
    job_id = submit(engine, {"n": 1})
    engine.run_stage(take_job_message(engine))
    msg = take_task_message(engine)

    def greet_then_lose_the_end(p, ctx):
        faults.arm("lose", method="POST", match="$batch", service="table")  # the next one: the task's end
        return greet.run(p, ctx)

    greet = replace_handler(monkeypatch, "hello_greeting", greet_then_lose_the_end)
    try:
        engine.run_task(msg)
    except TransientError as exc:
        pytest.fail(f"the committed end was not recognised: {exc.message}")
    assert faults.counts()["lose"] == 1
    assert engine.store.get_task(job_id, 1, 0).status == Status.COMPLETED
    assert take_job_message(engine) == StageMessage(job_id=job_id, stage=2)  # the advance, sent at once
    engine.run_stage(StageMessage(job_id=job_id, stage=2))
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 1)


# ---------------------------------------------------------------- 6. transactions sized by wire bytes
class CjkParameters(BaseModel):
    """A job of ``n`` tasks, each carrying ``chars`` CJK characters."""

    n: int
    chars: int


class TextParameters(BaseModel):
    """One task's text."""

    text: str


CJK = {"fail": False}


def cjk_text(chars: int, i: int) -> str:
    return "".join(chr(0x4E00 + (i * 31 + k) % 20000) for k in range(chars))


def count_chars(p: TextParameters, ctx) -> dict:
    if CJK["fail"]:
        raise TaskError(f"task {ctx.task_id} was asked to fail")
    return {"chars": len(p.text)}


@pytest.fixture
def cjk_job(monkeypatch):
    """A one-stage job type whose tasks carry CJK text (about 180 kB each on the wire, 60 kB stored)."""
    stage = Stage("count", "cjk_count", lambda p, prev: [{"text": cjk_text(p.chars, i)} for i in range(p.n)])
    controller = JobController("cjk_fanout", "tasks with CJK text", CjkParameters, (stage,),
                               lambda p, outcomes: {"chars": sum(o.result["chars"] for o in outcomes[1])})
    monkeypatch.setitem(JOB_TYPES, controller.job_type, controller)
    monkeypatch.setitem(TASK_HANDLERS, "cjk_count", TaskHandler("cjk_count", TextParameters, count_chars))
    monkeypatch.setitem(CJK, "fail", False)
    return controller.job_type


N_CJK, CJK_CHARS = 40, 30_000  # 40 x 180 kB: one 7 MB request if sized by storage bytes; Azurite takes <= 4 MiB


def test_case06_a_stage_of_large_cjk_parameters_fans_out_in_transactions_the_service_accepts(azurite, cjk_job):
    engine = make_engine(azurite)
    _, body = api_jobs.submit(engine, cjk_job, json.dumps({"n": N_CJK, "chars": CJK_CHARS}).encode(), "http://t")
    job_id = body["job_id"]
    driver = QueueDriver(engine)
    driver.run(job_id)
    job = engine.store.get_job(job_id)
    assert job.status == Status.COMPLETED, (job.error_details, driver.errors[-1:])
    assert job.result_data == {"chars": N_CJK * CJK_CHARS}


def test_case06_retry_reopens_large_cjk_tasks_in_transactions_the_service_accepts(azurite, cjk_job):
    """Retry's reopen (one shard: every task in one group) must be chunked by wire bytes too."""
    engine = make_engine(azurite, counter_shards=1)
    CJK["fail"] = True
    _, body = api_jobs.submit(engine, cjk_job, json.dumps({"n": N_CJK, "chars": 1}).encode(), "http://t")
    job_id = body["job_id"]
    QueueDriver(engine).run(job_id)
    assert engine.store.get_job(job_id).status == Status.FAILED
    for t in engine.store.list_tasks(job_id, 1):  # the inputs are replaced by larger ones
        engine.store.replace_task(t.model_copy(update={"parameters": {"text": cjk_text(CJK_CHARS, t.index)}}))
    CJK["fail"] = False
    code, answer = http(lambda: api_jobs.retry(engine, job_id))
    assert code == 202, answer
    QueueDriver(engine).run(job_id)
    job = engine.store.get_job(job_id)
    assert job.status == Status.COMPLETED and job.result_data == {"chars": N_CJK * CJK_CHARS}


# ---------------------------------------------------------------- 7. lost replies on claim, cancel, retry, create
def test_case07_lost_reply_on_claim_runs_the_task_now(engine, faults):
    job_id = submit(engine, {"n": 1})
    engine.run_stage(take_job_message(engine))
    msg = take_task_message(engine)
    lose_task_write(faults, 1, 0)
    engine.run_task(msg)
    assert faults.counts()["lose"] == 1
    task = engine.store.get_task(job_id, 1, 0)
    assert (task.status, task.attempts) == (Status.COMPLETED, 1), "claimed, then left to wait out its lease"


def test_case07_lost_reply_on_cancel_still_flips_the_queued_tasks(engine, faults):
    job_id = submit(engine, {"n": 4})
    engine.run_stage(take_job_message(engine))
    faults.arm("lose", method="PUT", match=JOB_ROW)
    code, body = http(lambda: api_jobs.cancel(engine, job_id))
    assert faults.counts()["lose"] == 1
    assert (code, body.get("status")) == (200, "cancelled"), body
    assert body["tasks"]["cancelled"] == 4
    QueueDriver(engine).run(job_id)
    assert all(t.attempts == 0 and t.status == Status.CANCELLED for t in engine.store.list_tasks(job_id, 1))


def test_case07_cancelling_again_after_a_canceller_died_flips_the_tasks_and_answers_409(engine):
    job_id = submit(engine, {"n": 3})
    engine.run_stage(take_job_message(engine))
    job = engine.store.get_job(job_id)  # the first cancel wrote the job row, then its process died
    engine.store.replace_job(job.model_copy(update={"status": Status.CANCELLED}))
    assert http(lambda: api_jobs.cancel(engine, job_id))[0] == 409
    assert [t.status for t in engine.store.list_tasks(job_id, 1)] == [Status.CANCELLED] * 3


def test_case07_lost_reply_on_retry_reopens_and_resumes(engine, faults):
    job_id = submit(engine, {"n": 3, "fail_indices": [1]})
    QueueDriver(engine).run(job_id)
    t = engine.store.get_task(job_id, 1, 1)
    engine.store.replace_task(t.model_copy(update={"parameters": {**t.parameters, "fail": False}}))
    faults.arm("lose", method="PUT", match=JOB_ROW)
    code, body = http(lambda: api_jobs.retry(engine, job_id))
    assert faults.counts()["lose"] == 1
    assert code == 202, body
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 3)


def test_case07_lost_reply_on_job_creation_is_the_first_callers_and_starts_the_job(engine, faults):
    faults.arm("lose", method="POST", match=f"/{engine.settings.jobs_table}", service="table")
    code, body = http(lambda: api_jobs.submit(engine, "hello_world", b'{"n": 2}', "http://t"))
    assert faults.counts()["lose"] == 1
    assert (code, body.get("created")) == (202, True), body
    job_id = body["job_id"]
    assert take_job_message(engine) == StageMessage(job_id=job_id, stage=1)  # sent now, not by the sweeper
    engine.run_stage(StageMessage(job_id=job_id, stage=1))
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 2)


# ---------------------------------------------------------------- 8. poison acts only on the attempt that gave up
def test_case08_a_stale_poison_message_after_a_retry_changes_nothing(engine):
    job_id = submit(engine, {"n": 1, "transient_failures": 1})
    engine.run_stage(take_job_message(engine))
    Engine(engine.repos, max_attempts=1).run_task(take_task_message(engine))  # gives up
    (poison,) = take(engine.repos.tasks_poison)
    engine.on_task_poison(poison.content)
    engine.complete(take_job_message(engine))
    assert engine.store.get_job(job_id).status == Status.FAILED
    engine.retry(job_id)
    engine.on_task_poison(poison.content)  # the same poison message, delivered again
    task = engine.store.get_task(job_id, 1, 0)
    assert (task.status, task.attempts, task.error_details) == (Status.QUEUED, 0, None)
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 1)


def test_case08_a_host_poison_for_a_task_under_a_live_lease_changes_nothing(engine):
    job_id = submit(engine, {"n": 1})
    engine.run_stage(take_job_message(engine))
    msg = take_task_message(engine)
    task = engine.store.get_task(job_id, 1, 0)
    held = engine.store.replace_task(task.model_copy(update={  # another worker holds it
        "status": Status.PROCESSING, "attempts": 1, "started_at": utcnow(),
        "lease_until": utcnow() + timedelta(seconds=60)}))
    engine.on_task_poison(msg.encode())  # the host moved an old copy of its message
    task = engine.store.get_task(job_id, 1, 0)
    assert (task.status, task.attempts, task.error_details) == (Status.PROCESSING, 1, None)
    engine.end_task(held, Status.COMPLETED, {"greeting": f"hello from {msg.task_id}!"}, None)  # the worker ends
    QueueDriver(engine).run(job_id)
    assert_completed_exactly(engine, job_id, 1)


# ---------------------------------------------------------------- 9. cancel honoured on the task path
def test_case09_a_task_of_a_cancelled_job_that_hits_a_transient_error_is_cancelled(engine, monkeypatch):
    job_id = submit(engine, {"n": 1, "transient_failures": 1})
    engine.run_stage(take_job_message(engine))

    def cancelled_while_running(p, ctx):
        engine.cancel(job_id)  # the operator cancels; this task holds its lease
        return greet.run(p, ctx)  # then hits a transient error

    greet = replace_handler(monkeypatch, "hello_greeting", cancelled_while_running)
    engine.run_task(take_task_message(engine))
    task = engine.store.get_task(job_id, 1, 0)
    assert task.status == Status.CANCELLED, f"the task re-queued itself ({task.status}) and would run on"
    QueueDriver(engine).run(job_id)
    assert engine.store.get_task(job_id, 1, 0).attempts == 1
    assert engine.store.get_job(job_id).status == Status.CANCELLED


# ---------------------------------------------------------------- 10. shard count fixed at creation
def test_case10_instances_with_different_counter_shards_still_end_the_stage(azurite, faults):
    """Instance A (COUNTER_SHARDS=1) stops at its k-th table write of a stage, for every k; the redelivered
    message reaches instance B (COUNTER_SHARDS=4). The stage row must agree with the shard rows, and end."""
    a = make_engine(azurite, counter_shards=1)
    b = Engine(Repositories(a.settings.model_copy(update={"counter_shards": 4})).ensure())
    jobs = []
    for k in range(10):
        job_id = submit(a, {"n": 4, "message": f"k{k}"})  # 2 shards where 4 are allowed, 1 where 1 is
        jobs.append(job_id)
        msg = take_job_message(a)
        refused = faults.counts()["refuse"]
        faults.fail_write(k)
        try:
            a.run_stage(msg)
        except TransientError:
            pass
        faults.fail_write(None)
        b.run_stage(msg)  # the redelivery
        stages, shards = a.store.stage_rows(job_id)
        assert [(s.shards, s.shards_remaining) for s in stages] == [(len(shards), len(shards))], f"A stopped at {k}"
        if faults.counts()["refuse"] == refused:  # A wrote fewer than k + 1 times: every stop point is covered
            break
    assert k >= 2, k
    QueueDriver(a).run()
    for k, job_id in enumerate(jobs):
        assert_completed_exactly(a, job_id, 4, f"k{k}")


# ---------------------------------------------------------------- 11. one webhook delivery chain


def test_case11_sweeper_passes_while_a_webhook_is_pending_send_no_duplicates(azurite):
    engine = make_engine(azurite, webhook_secret=SECRET, webhook_allow_loopback=True)
    receiver = Receiver(hold_first=True)
    try:
        job_id = submit(engine, {"n": 1}, receiver.url)
        runner = threading.Thread(target=QueueDriver(engine).run, args=(job_id,), daemon=True)
        runner.start()  # runs the job, then its first delivery, which the receiver holds
        deadline = time.monotonic() + 30
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.requests, "the webhook was never posted"
        for _ in range(3):  # sweeper passes while the delivery is pending
            engine.sweep()
        for m in take(engine.repos.jobs_queue):  # whatever they sent is delivered
            function_app.process_job_message(QueueMessage(id=m.id, body=m.content.encode(),
                                                          dequeue_count=m.dequeue_count))
        receiver.release.set()
        runner.join(30)
        assert not runner.is_alive()
        assert len(receiver.requests) == 1, f"{len(receiver.requests)} deliveries of one terminal status"
        assert engine.store.get_job(job_id).webhook == "delivered"
    finally:
        receiver.close()
