"""A small v2 app for tests of local_host: one function per trigger kind, recording what each receives.

Every invocation appends one JSON line to the file named by ``TOY_RECORD_FILE``. A queue message body
that is JSON may say ``{"sleep": s, "sleep_first": s, "fail": true, "announce": true}``; the timer is
``%TOY_SCHEDULE%``.
"""
from __future__ import annotations

import json
import os
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
_lock = threading.Lock()


def record(**fields: object) -> None:
    """Append one JSON line to ``$TOY_RECORD_FILE``."""
    line = json.dumps({"pid": os.getpid(), **fields}) + "\n"
    with _lock, open(os.environ["TOY_RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(line)


@app.route(route="items/{item_id:int}/{action?}", methods=["GET", "POST"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    """Echo the request as JSON; ``?boom=1`` raises."""
    if req.params.get("boom"):
        raise RuntimeError("boom requested")
    body = {"method": req.method, "route": dict(req.route_params), "params": dict(req.params),
            "body": req.get_body().decode("utf-8"), "content_type": req.headers.get("content-type"),
            "url": req.url}
    return func.HttpResponse(json.dumps(body), status_code=201 if req.method == "POST" else 200,
                             mimetype="application/json", headers={"X-Toy": "1"})


@app.route(route="plain", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
def plain(req: func.HttpRequest) -> str:
    """Return a bare string (the worker turns it into a 200 text response)."""
    return "deleted"


@app.route(route="echo/{*rest}")
async def echo(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Any method: an async function that also takes the invocation context."""
    body = {"function": context.function_name, "invocation_id": context.invocation_id,
            "rest": req.route_params.get("rest"), "body": req.get_body().decode("utf-8")}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.queue_trigger(arg_name="msg", queue_name="%TOY_QUEUE%", connection="AzureWebJobsStorage")
def toy_queue(msg: func.QueueMessage) -> None:
    """Record the message; announce, sleep (on every or the first attempt) and/or fail as its JSON body says."""
    started = time.time()
    text = msg.get_body().decode("utf-8")
    try:
        options = json.loads(text)
    except ValueError:
        options = {}
    options = options if isinstance(options, dict) else {}
    if options.get("announce"):
        record(kind="queue_start", id=msg.id, body=text, dequeue_count=msg.dequeue_count, start=started)
    time.sleep(float(options.get("sleep", 0)) + (float(options.get("sleep_first", 0)) if msg.dequeue_count == 1 else 0))
    record(kind="queue", id=msg.id, body=text, dequeue_count=msg.dequeue_count, pop_receipt=msg.pop_receipt,
           inserted=str(msg.insertion_time), start=started, end=time.time(), thread=threading.current_thread().name)
    if options.get("fail"):
        raise ValueError(f"failing as asked (attempt {msg.dequeue_count})")


@app.timer_trigger(arg_name="timer", schedule="%TOY_SCHEDULE%", run_on_startup=False)
def toy_timer(timer: func.TimerRequest) -> None:
    """Record the occurrence this invocation is for."""
    record(kind="timer", occurrence=timer.schedule_status.get("Next"), past_due=timer.past_due, at=time.time())
