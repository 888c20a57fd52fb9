"""Azure SDK clients built from settings, SDK error translation, and a request counter.

Clients come from a connection string (Azurite, or an account key) or, without one, from the account
endpoints and ``DefaultAzureCredential`` (managed identity on Azure).
"""
from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from functools import cached_property
from typing import Iterator

import requests
from azure.core.exceptions import (
    AzureError, HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError,
    ServiceRequestError, ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.blob import ExponentialRetry as BlobRetry
from azure.storage.queue import ExponentialRetry as QueueRetry
from azure.storage.queue import QueueServiceClient

import repository_faults
from config import Settings
from errors import ConflictError, NotFoundError, OrchestratorError, TransientError


class RequestCounter:
    """Counts HTTP requests sent by the SDK clients, by service: what the benchmarks report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, service: str) -> None:
        """Count one request to ``service``."""
        with self._lock:
            self.counts[service] += 1

    def snapshot(self) -> dict[str, int]:
        """Counts so far, by service, plus 'total'."""
        with self._lock:
            return {**self.counts, "total": sum(self.counts.values())}


REQUEST_COUNTER = RequestCounter()


class _CountingTransport(RequestsTransport):
    """requests transport with a connection pool sized for parallel fan-out, counting each send.

    With ``faults`` (tests and benchmarks, see repository_faults) each request it sends may fault.
    """

    def __init__(self, service: str, pool_size: int,
                 faults: repository_faults.TransportFaults | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._service = service
        self._pool_size = pool_size
        self._faults = faults

    def _init_session(self, session: requests.Session) -> None:
        super()._init_session(session)
        pool = {"pool_connections": 4, "pool_maxsize": self._pool_size,
                "max_retries": requests.adapters.Retry(total=False, redirect=False, raise_on_status=False)}
        adapter = (requests.adapters.HTTPAdapter(**pool) if self._faults is None
                   else repository_faults.FaultyAdapter(self._faults, self._service, **pool))
        for prefix in ("http://", "https://"):
            session.mount(prefix, adapter)

    def send(self, request, **kwargs):  # noqa: D102 - same contract as RequestsTransport.send
        REQUEST_COUNTER.add(self._service)
        return super().send(request, **kwargs)


RETRIES = {"queue": QueueRetry, "blob": BlobRetry}  # backoff 2 s, 2.75 s, 3.9 s, 5.6 s (+-0.5)


class StorageClients:
    """The three storage service clients of one account, built lazily from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _kwargs(self, service: str) -> dict:
        pool = max(16, self.settings.fanout_threads * 2)
        # use_env_settings=False: requests would otherwise re-read proxy variables on every call (~6% CPU)
        faults = repository_faults.active()
        if faults is not None and not faults.covers(service):
            faults = None
        transport = _CountingTransport(service, pool, faults, use_env_settings=False)
        kwargs = {"transport": transport, "connection_timeout": 10, "read_timeout": 30}
        if service in RETRIES:  # the SDK's default first backoff is 15 s: a function would stall on one 503
            kwargs["retry_policy"] = RETRIES[service](initial_backoff=0.5, increment_base=1.5, retry_total=4,
                                                      random_jitter_range=0.5)
        return kwargs

    @cached_property
    def _credential(self):
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self.settings.managed_identity_client_id)

    def _client(self, cls, service: str):
        """A service client from the connection string, or from the endpoint and the identity."""
        if self.settings.storage_connection_string:
            return cls.from_connection_string(self.settings.storage_connection_string, **self._kwargs(service))
        return cls(self.settings.service_uri(service), credential=self._credential, **self._kwargs(service))

    @cached_property
    def tables(self) -> TableServiceClient:
        """Table service client."""
        return self._client(TableServiceClient, "table")

    @cached_property
    def queues(self) -> QueueServiceClient:
        """Queue service client."""
        return self._client(QueueServiceClient, "queue")

    @cached_property
    def blobs(self) -> BlobServiceClient:
        """Blob service client."""
        return self._client(BlobServiceClient, "blob")


def is_transient_status(status: int | None) -> bool:
    """Throttling, timeouts and server errors are worth retrying."""
    return status is not None and (status in (408, 429) or status >= 500)


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn SDK exceptions into the project's errors; ``what`` names the operation for the message."""
    try:
        yield
    except OrchestratorError:
        raise
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"{what}: not found") from exc
    except (ResourceModifiedError, ResourceExistsError) as exc:
        raise ConflictError(f"{what}: {exc.reason or 'conflict'}") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"{what}: storage unreachable ({type(exc).__name__})") from exc
    except HttpResponseError as exc:
        if exc.status_code in (409, 412):
            raise ConflictError(f"{what}: {exc.reason or 'conflict'}") from exc
        if is_transient_status(exc.status_code):
            raise TransientError(f"{what}: storage answered {exc.status_code} {exc.reason}") from exc
        raise OrchestratorError(f"{what}: storage answered {exc.status_code} {exc.reason}") from exc
    except AzureError as exc:
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
