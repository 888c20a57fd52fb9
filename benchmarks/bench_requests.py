"""Storage requests counted at the transport, in this process and in local host processes.

``RequestTally`` counts every HTTP request any azure-core ``RequestsTransport`` sends (the engine's
``_CountingTransport`` and the local host's own queue clients alike), by service and kind of operation:
``table.get`` (point read), ``table.query``, ``table.batch`` (entity-group transaction), ``table.insert``,
``table.update``, ``queue.send``, ``queue.receive``, ``queue.delete``, ``queue.update`` (visibility),
``blob.get``, ``blob.put``, ... and ``<service>.admin`` (create table/queue/container, properties).

Run as a program, this file is a local host (``local_host.main``, same arguments) whose requests are
counted; SIGUSR1 makes it write ``{"seq", "requests", "engine"}`` to ``$BENCH_REQUESTS_FILE``, where
``engine`` is the app's own ``REQUEST_COUNTER`` (so delivery = requests - engine).
``bench_hosts.CountedHost`` starts one from a benchmark and reads those counts.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import bench_common  # noqa: F401 - puts the repository root and tests/ on sys.path

SERVICES = ("table", "queue", "blob")
REQUESTS_FILE = "BENCH_REQUESTS_FILE"


class RequestTally:
    """Thread-safe counts of storage requests, keyed ``<service>.<kind>``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.endpoints: dict[str, str] = {}  # netloc -> service

    def add_endpoints(self, connection_string: str) -> None:
        """Learn which host:port serves which service from a connection string's ``*Endpoint`` parts."""
        for part in connection_string.split(";"):
            key, _, value = part.partition("=")
            if key.endswith("Endpoint") and key[:-8].lower() in SERVICES:
                self.endpoints[urlsplit(value).netloc] = key[:-8].lower()

    def service(self, netloc: str) -> str:
        """The service a host:port belongs to (Azure names contain it: ``<account>.table.core...``)."""
        if netloc in self.endpoints:
            return self.endpoints[netloc]
        return next((s for s in SERVICES if f".{s}." in netloc), "other")

    def record(self, method: str, url: str) -> None:
        """Count one request."""
        parts = urlsplit(url)
        service = self.service(parts.netloc)
        key = f"{service}.{classify(service, method.upper(), parts.path, parts.query)}"
        with self._lock:
            self.counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        """Counts so far."""
        with self._lock:
            return dict(self.counts)


def classify(service: str, method: str, path: str, query: str) -> str:
    """The kind of one storage request, from its method and URL."""
    segments = [s for s in path.split("/") if s]
    last = segments[-1] if segments else ""
    if service == "table":
        if last == "$batch":
            return "batch"
        if last.startswith("Tables"):
            return "admin"
        if method == "GET":
            return "get" if "(PartitionKey=" in last else "query"
        return {"POST": "insert", "PUT": "update", "PATCH": "update", "MERGE": "update", "DELETE": "delete"}.get(
            method, method.lower())
    if service == "queue":
        if last == "messages":
            if method == "GET":
                return "peek" if "peekonly=true" in query.lower() else "receive"
            return {"POST": "send", "DELETE": "clear"}.get(method, method.lower())
        if len(segments) >= 2 and segments[-2] == "messages":
            return {"DELETE": "delete", "PUT": "update"}.get(method, method.lower())
        return "admin"
    if service == "blob":
        if "restype=container" in query or "comp=list" in query:
            return "admin"
        return method.lower()
    return method.lower()


TALLY = RequestTally()
_installed = False


def install() -> RequestTally:
    """Count every request azure-core's requests transport sends in this process (idempotent)."""
    global _installed
    if not _installed:
        from azure.core.pipeline.transport import RequestsTransport

        original = RequestsTransport.send

        def send(self, request, **kwargs):  # noqa: ANN001 - azure-core's signature
            TALLY.record(request.method, request.url)
            return original(self, request, **kwargs)

        RequestsTransport.send = send
        _installed = True
    return TALLY


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Requests between two snapshots, by key (zeros left out)."""
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def by_service(counts: dict[str, int]) -> dict[str, int]:
    """Totals per service and ``all``."""
    out = {s: sum(v for k, v in counts.items() if k.startswith(f"{s}.")) for s in SERVICES}
    return {**out, "all": sum(counts.values())}


def add(*counts: dict[str, int]) -> dict[str, int]:
    """Sum of several request counts."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


# ---------------------------------------------------------------------------------------------- host side
def _write_counts(path: Path, seq: list[int]) -> None:
    seq[0] += 1
    clients = sys.modules.get("repository_clients")
    engine = clients.REQUEST_COUNTER.snapshot() if clients is not None else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seq": seq[0], "requests": TALLY.snapshot(), "engine": engine}))
    tmp.replace(path)


def host_main(argv: list[str]) -> int:
    """A local host with every request counted; SIGUSR1 writes the counts."""
    install()
    TALLY.add_endpoints(os.environ.get("AzureWebJobsStorage", ""))
    path, seq = Path(os.environ[REQUESTS_FILE]), [0]
    signal.signal(signal.SIGUSR1, lambda *_: _write_counts(path, seq))
    import local_host

    return local_host.main(argv)


if __name__ == "__main__":
    sys.exit(host_main(sys.argv[1:]))
