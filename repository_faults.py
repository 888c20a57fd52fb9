"""Transport fault injection for tests and benchmarks: lose replies, fail requests, delay them.

Off unless the environment variable ``GEOETL_TRANSPORT_FAULTS`` is set (never from HTTP) or a test calls
``install()`` before building its clients, e.g.
``GEOETL_TRANSPORT_FAULTS="lose=0.02,fail=0.02,delay=0.01:200ms,seed=42,services=table+queue"``.
Per storage request (every attempt the SDK makes, retries included), with the given probabilities:

- ``lose``: send it (the server applies it), then drop the reply: the caller sees a
  ``ServiceResponseError``, exactly what azure-core raises for a connection aborted during the response;
- ``busy``: answer 503 ServerBusy without sending; ``refuse``: raise a connection error without sending
  (``ServiceRequestError``); ``fail=p`` is shorthand for ``busy=p/2,refuse=p/2``;
- ``delay=p:200ms``: sleep, then send.

``seed`` plus the pid give this process's ``process_seed``, logged once (``transport_faults_enabled``);
``process_seed=N`` replays one process exactly. Each injected fault is counted (``counts()``) and logged as
one ``transport_fault`` JSON line. ``arm()`` scripts faults for tests: the next ``times`` requests
matching a method / URL path substring get a mode, before any random draw. ``REQUEST_COUNTER`` still counts
``busy`` and ``refuse`` attempts, which never reach the server.

Where it sits: a requests ``HTTPAdapter`` mounted by ``repository_clients`` on each transport session, so
it runs below every SDK's retry policy: each retry is a fresh request that can fault again, and azure-core
maps our exceptions with its own code. ``per_retry_policies`` is not usable: the Storage queue/blob clients
build a fixed policy list and ignore it, and ``TableServiceClient.get_table_client`` rebuilds its pipeline
from its own policy list, dropping it (azure-data-tables 12.7).

What the SDKs do after a lost reply (read in azure-core 1.41, azure-data-tables 12.7, azure-storage-queue
12.18 / blob 12.31, and checked by tests/test_transport_faults.py):

- Tables (``TablesRetryPolicy``, azure-core ``RetryPolicy``): after an exception, re-send only if
  ``_is_method_retryable``: HEAD, GET, PUT, DELETE, OPTIONS, TRACE. So a lost REPLACE ``update_entity``
  or ``upsert_entity`` (PUT) is re-sent: with If-Match it comes back 412 on our own write, without it it
  succeeds again; a lost ``delete_entity`` is re-sent and meets 404, which ``delete_entity`` swallows.
  MERGE goes out as PATCH in this SDK, ``create_entity`` and ``$batch`` as POST: none is re-sent, the
  ``ServiceResponseError`` surfaces (``TransientError``) while the write landed. After a 503 reply every
  method is re-sent, POST and PATCH included (3 status retries, after 0, 1.6 and 3.2 s).
- Queues and blobs (``StorageRetryPolicy``/``ExponentialRetry``): no method list, every ``AzureError``
  but signing errors is retried, POST included: a lost ``send_message`` reply is re-sent, the message is
  enqueued twice. The default backoff is 15 s +/- 3 s before the first retry (15 + 3**n s after).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.client import RemoteDisconnected
from urllib.parse import unquote, urlsplit

import requests
from pydantic import BaseModel, Field, model_validator
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError

from logs import log_event

logger = logging.getLogger(__name__)

ENV = "GEOETL_TRANSPORT_FAULTS"
MODES = ("lose", "busy", "refuse", "delay")
SERVICES = ("table", "queue", "blob")


class FaultSpec(BaseModel):
    """Probabilities per request, the seed and the services covered."""

    lose: float = Field(0.0, ge=0, le=1)
    busy: float = Field(0.0, ge=0, le=1)
    refuse: float = Field(0.0, ge=0, le=1)
    delay: float = Field(0.0, ge=0, le=1)
    delay_s: float = Field(0.2, ge=0)
    seed: str | None = None
    process_seed: int | None = None
    services: frozenset[str] = frozenset(SERVICES)

    @model_validator(mode="after")
    def _check(self) -> "FaultSpec":
        if self.lose + self.busy + self.refuse + self.delay > 1:
            raise ValueError("transport fault probabilities add up to more than 1")
        if not self.services <= set(SERVICES):
            raise ValueError(f"services must be among {SERVICES}")
        return self

    @classmethod
    def parse(cls, text: str) -> "FaultSpec":
        """Parse ``key=value`` items separated by commas (see the module docstring)."""
        fields: dict = {}
        for item in filter(None, (x.strip() for x in text.split(","))):
            key, _, value = item.partition("=")
            if key in ("lose", "busy", "refuse"):
                fields[key] = fields.get(key, 0.0) + float(value)
            elif key == "fail":
                for half in ("busy", "refuse"):
                    fields[half] = fields.get(half, 0.0) + float(value) / 2
            elif key == "delay":
                prob, _, duration = value.partition(":")
                fields["delay"] = float(prob)
                if duration:
                    fields["delay_s"] = (float(duration[:-2]) / 1000 if duration.endswith("ms")
                                         else float(duration.removesuffix("s")))
            elif key in ("seed", "process_seed"):
                fields[key] = value
            elif key == "services":
                fields["services"] = frozenset(value.split("+"))
            else:
                raise ValueError(f"bad transport fault {item!r}: keys lose, fail, busy, refuse, "
                                 "delay, seed, process_seed, services")
        return cls(**fields)


@dataclass
class Armed:
    """A scripted fault: the next ``times`` matching requests get ``mode``."""

    mode: str
    method: str | None = None
    match: str | None = None
    service: str | None = None
    times: int = 1

    def matches(self, service: str, method: str, url: str) -> bool:
        """Whether a request is one this script targets."""
        return ((self.service is None or self.service == service)
                and (self.method is None or self.method.upper() == method.upper())
                and (self.match is None or self.match in url))


@dataclass(frozen=True)
class Injected:
    """One injected fault: the ``seq``-th covered request of this process."""

    seq: int
    service: str
    mode: str
    method: str
    path: str


class TransportFaults:
    """Decides, per request, whether and how it faults; seeded, thread-safe, counting what it injects."""

    def __init__(self, spec: FaultSpec | None = None, pid: int | None = None) -> None:
        self.spec = spec or FaultSpec()
        self.pid = os.getpid() if pid is None else pid
        self.process_seed = self.spec.process_seed
        if self.process_seed is None:
            seed = self.spec.seed if self.spec.seed is not None else os.urandom(8).hex()
            digest = hashlib.sha256(f"{seed}:{self.pid}".encode()).digest()
            self.process_seed = int.from_bytes(digest[:6], "big")
        self._rng = random.Random(self.process_seed)
        self._lock = threading.Lock()
        self._armed: list[Armed] = []
        self._seq = 0
        self._counts: Counter[str] = Counter()
        self.history: deque[Injected] = deque(maxlen=10_000)

    def covers(self, service: str) -> bool:
        """Whether requests to ``service`` go through this injector."""
        return service in self.spec.services

    def arm(self, mode: str, method: str | None = None, match: str | None = None, service: str | None = None,
            times: int = 1) -> None:
        """Give ``mode`` to the next ``times`` requests matching method / URL substring / service."""
        if mode not in MODES:
            raise ValueError(f"bad transport fault mode {mode!r}: {MODES}")
        with self._lock:
            self._armed.append(Armed(mode, method, match, service, times))

    def disarm(self) -> None:
        """Drop every scripted fault not yet used."""
        with self._lock:
            self._armed.clear()

    def armed(self) -> int:
        """How many scripted faults are still waiting."""
        with self._lock:
            return sum(a.times for a in self._armed)

    def counts(self) -> dict[str, int]:
        """Injected faults so far by mode, plus ``requests`` (covered requests seen)."""
        with self._lock:
            return {**{m: self._counts[m] for m in MODES}, "requests": self._seq}

    def decide(self, service: str, method: str, url: str) -> Injected | None:
        """The fault for this request, or None: scripted faults first, then one random draw."""
        path = unquote(urlsplit(url).path)
        with self._lock:
            self._seq += 1
            mode = None
            for armed in self._armed:
                if armed.matches(service, method, path):
                    mode, armed.times = armed.mode, armed.times - 1
                    if armed.times <= 0:
                        self._armed.remove(armed)
                    break
            if mode is None:
                draw, spec = self._rng.random(), self.spec
                for candidate, prob in (("lose", spec.lose), ("busy", spec.busy), ("refuse", spec.refuse),
                                        ("delay", spec.delay)):
                    if draw < prob:
                        mode = candidate
                        break
                    draw -= prob
            if mode is None:
                return None
            self._counts[mode] += 1
            fault = Injected(self._seq, service, mode, method, path)
            self.history.append(fault)
            return fault


class FaultyAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter that applies ``TransportFaults`` to each request it sends."""

    def __init__(self, faults: TransportFaults, service: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.faults, self.service = faults, service

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:  # noqa: D102
        fault = self.faults.decide(self.service, request.method or "", request.url or "")
        if fault is None:
            return super().send(request, **kwargs)
        status = None
        try:
            if fault.mode == "delay":
                time.sleep(self.faults.spec.delay_s)
                return super().send(request, **kwargs)
            if fault.mode == "busy":
                status = 503
                return self.build_response(request, _server_busy(self.service))
            if fault.mode == "refuse":
                raise requests.exceptions.ConnectionError(
                    "injected: connection refused before sending", request=request)
            response = super().send(request, **kwargs)  # lose: the server applies it...
            status = response.status_code
            response.close()  # ...and the connection drops before the caller reads the reply
            raise requests.exceptions.ConnectionError(
                ProtocolError("Connection aborted.", RemoteDisconnected("injected: reply lost")), request=request)
        finally:
            log_event(logger, "transport_fault", level=logging.WARNING, mode=fault.mode, service=fault.service,
                      method=fault.method, path=fault.path, seq=fault.seq, status=status)


def _server_busy(service: str) -> HTTPResponse:
    """A 503 ServerBusy as the service would send it (JSON for tables, XML for queues and blobs)."""
    message = "injected: The server is busy."
    if service == "table":
        body = ('{"odata.error":{"code":"ServerBusy","message":{"lang":"en-US","value":"%s"}}}' % message).encode()
        ctype = "application/json;odata=minimalmetadata;streaming=true;charset=utf-8"
    else:
        body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
                f'<Message>{message}</Message></Error>').encode()
        ctype = "application/xml"
    headers = {"Content-Type": ctype, "Content-Length": str(len(body)), "x-ms-error-code": "ServerBusy"}
    return HTTPResponse(body=io.BytesIO(body), headers=headers, status=503, reason="Server Busy",
                        preload_content=False, decode_content=False)


_state_lock = threading.Lock()
_active: TransportFaults | None = None
_loaded = False


def active() -> TransportFaults | None:
    """This process's injector: the installed one, else one built once from the environment, else None."""
    global _active, _loaded
    with _state_lock:
        if not _loaded:
            _loaded = True
            if os.environ.get(ENV):
                _active = TransportFaults(FaultSpec.parse(os.environ[ENV]))
                _announce(_active)
        return _active


def install(faults: TransportFaults | None) -> TransportFaults | None:
    """Use ``faults`` for clients built from now on (None: none); returns the previous one. Tests only."""
    global _active, _loaded
    with _state_lock:
        previous, _active, _loaded = _active, faults, True
    if faults is not None:
        _announce(faults)
    return previous


def arm(mode: str, method: str | None = None, match: str | None = None, service: str | None = None,
        times: int = 1) -> None:
    """Script a fault on the active injector (see ``TransportFaults.arm``)."""
    faults = active()
    if faults is None:
        raise RuntimeError(f"no transport fault injector: set {ENV} or install() one before building clients")
    faults.arm(mode, method, match, service, times)


def _announce(faults: TransportFaults) -> None:
    spec = faults.spec
    log_event(logger, "transport_faults_enabled", level=logging.WARNING, pid=faults.pid, seed=spec.seed,
              process_seed=faults.process_seed, lose=spec.lose, busy=spec.busy, refuse=spec.refuse,
              delay=spec.delay, delay_s=spec.delay_s, services="+".join(sorted(spec.services)))
