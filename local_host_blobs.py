"""Blob events for ``local_host``: Event Grid triggers fed the way a storage account's system topic
feeds them in Azure, by watching the containers here (as the Functions host's polling blob trigger does).

Which containers: ``LOCAL_HOST_BLOB_EVENTS`` (comma-separated, or ``*`` for every container but the
host's own ``azure-webjobs-*`` and ``$*``), the local stand-in for an Event Grid subscription's filter;
unset, the function gets no events. Every ``LOCAL_HOST_BLOB_POLL_SECONDS`` (2) each container is listed;
a blob created or overwritten since the subscription began is delivered once per ETag as a
``Microsoft.Storage.BlobCreated`` event (blobs older than the subscription are not: Event Grid only
announces what happens after a subscription exists).

State lives in the table ``localhostblobreceipts`` of AzureWebJobsStorage, so several local hosts share
the work like scaled-out instances: the subscription row (its server timestamp is the start), and one
receipt per blob (ETag, state, attempts, lease) that a host claims with a conditional write before it
delivers. A failed delivery is retried at the next poll, up to host.json's
``extensions.blobs.poisonBlobThreshold`` attempts (5), then the receipt is marked poison and logged;
at most ``extensions.blobs.maxDegreeOfParallelism`` deliveries run at once.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import azure.functions as func
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.storage.blob import BlobProperties, BlobServiceClient

logger = logging.getLogger(__name__)

CONTAINERS_SETTING = "LOCAL_HOST_BLOB_EVENTS"
POLL_SETTING = "LOCAL_HOST_BLOB_POLL_SECONDS"
RECEIPTS_TABLE = "localhostblobreceipts"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
RESERVED_PREFIXES = ("azure-webjobs-", "$")
_DONE = ("done", "poison")


def _get(section: dict[str, Any], key: str, default: Any) -> Any:
    return next((v for k, v in (section or {}).items() if k.lower() == key.lower()), default)


@dataclass(frozen=True)
class BlobEventOptions:
    """What the local host reads for blob events: host.json ``extensions.blobs`` and two settings."""

    containers: tuple[str, ...] = ()  # ("*",): every container but the host's own
    poll_seconds: float = 2.0
    poison_threshold: int = 5
    parallelism: int = 16
    lease_seconds: float = 120.0

    @classmethod
    def from_host(cls, host_config: dict[str, Any], environ: dict[str, str] | None = None) -> BlobEventOptions:
        """host.json's ``extensions.blobs`` plus ``LOCAL_HOST_BLOB_EVENTS`` / ``LOCAL_HOST_BLOB_POLL_SECONDS``."""
        env = os.environ if environ is None else environ
        blobs = _get(_get(host_config, "extensions", {}) or {}, "blobs", {}) or {}
        containers = tuple(c.strip() for c in env.get(CONTAINERS_SETTING, "").split(",") if c.strip())
        options = cls(containers=containers, poll_seconds=float(env.get(POLL_SETTING, "2")),
                      poison_threshold=int(_get(blobs, "poisonBlobThreshold", 5)),
                      parallelism=int(_get(blobs, "maxDegreeOfParallelism", 8 * (os.cpu_count() or 1))))
        if options.poll_seconds <= 0 or options.poison_threshold < 1 or options.parallelism < 1:
            raise ValueError(f"{POLL_SETTING} must be > 0, extensions.blobs.poisonBlobThreshold and "
                             "maxDegreeOfParallelism >= 1")
        return options


def receipt_key(name: str) -> str:
    """A RowKey for a blob name: percent-encoded (names may hold '/', '#', '?'), hashed when very long."""
    key = quote(name, safe="")
    if len(key) > 900:
        import hashlib
        key = "sha256-" + hashlib.sha256(name.encode()).hexdigest()
    return key


def blob_event(account: str, container: str, blob: BlobProperties, url: str) -> func.EventGridEvent:
    """The BlobCreated event Event Grid would send for this blob version (its id is the version's)."""
    etag = (blob.etag or "").strip('"')
    settings = blob.content_settings
    return func.EventGridEvent(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{url}#{etag}")),
        topic=f"/subscriptions/local/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/{account}",
        subject=f"/blobServices/default/containers/{container}/blobs/{blob.name}", event_type=BLOB_CREATED,
        event_time=blob.last_modified, data_version="",
        data={"api": "PutBlob", "eTag": etag, "contentType": getattr(settings, "content_type", None),
              "contentLength": blob.size, "blobType": "BlockBlob", "url": url,
              "sequencer": f"{int(blob.last_modified.timestamp() * 1000):020d}"})


class BlobEventSource:
    """Delivers one Event Grid function's blob events; several hosts may watch the same containers."""

    def __init__(self, binding: Any, blobs: BlobServiceClient, receipts: TableClient,
                 options: BlobEventOptions) -> None:
        self.binding = binding
        self.blobs = blobs
        self.receipts = receipts
        self.options = options
        self.owner = uuid.uuid4().hex
        self.since: datetime | None = None
        self.delivered = 0
        self._known: dict[str, dict[str, tuple[str, str]]] = {}  # container -> blob -> (etag, state)
        self._running: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=options.parallelism, thread_name_prefix=f"blob-{binding.name}")
        self._thread = threading.Thread(target=self._run, name=f"blobs-{binding.name}", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Deliver nothing new (running deliveries finish)."""
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no delivery is running; True if none is."""
        with self._idle:
            idle = self._idle.wait_for(lambda: not self._running, max(0.0, timeout))
        self._pool.shutdown(wait=False)
        return idle

    # ------------------------------------------------------------ polling
    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.poll_once()
                if failing:
                    logger.info("blob events for %s: polling again", self.binding.name)
                failing = False
            except Exception as exc:  # noqa: BLE001 - storage down or anything else: keep polling
                if not failing:
                    logger.warning("blob events for %s: poll failed, retrying: %s", self.binding.name, exc)
                failing = True
            self._stop.wait(self.options.poll_seconds)

    def poll_once(self, wait: bool = False) -> int:
        """List the containers once and start a delivery for each new blob version; how many started.
        With ``wait``, return only when those deliveries have ended."""
        if self.since is None:
            self.since = self._subscribe()
        candidates = []
        for container in self._containers():
            known = self._known.get(container)
            if known is None:
                known = self._known[container] = self._load(container)
            try:
                listing = list(self.blobs.get_container_client(container).list_blobs())
            except ResourceNotFoundError:
                continue
            for blob in listing:
                etag = (blob.etag or "").strip('"')
                seen = known.get(blob.name)
                if blob.last_modified < self.since or (seen and seen[0] == etag and seen[1] in _DONE):
                    continue
                candidates.append((container, blob, seen))
        random.shuffle(candidates)  # hosts listing the same blobs then rarely race for the same one
        started = []
        for container, blob, seen in candidates:
            with self._lock:
                if (container, blob.name) in self._running:
                    continue
                self._running.add((container, blob.name))
            started.append(self._pool.submit(self._deliver, container, blob, seen is None))
        if wait:
            for future in started:
                future.result()
        return len(started)

    def _containers(self) -> list[str]:
        if self.options.containers == ("*",):
            return [c.name for c in self.blobs.list_containers() if not c.name.startswith(RESERVED_PREFIXES)]
        return list(self.options.containers)

    def _subscribe(self) -> datetime:
        """The subscription's start: the server time of the first host's subscription row (made on demand)."""
        try:
            self.receipts.create_table()
        except ResourceExistsError:
            pass
        entity = {"PartitionKey": self.binding.name, "RowKey": "subscription",
                  "containers": ",".join(self.options.containers)}
        try:
            self.receipts.create_entity(entity)
        except ResourceExistsError:
            pass
        row = self.receipts.get_entity(self.binding.name, "subscription")
        since = row.metadata["timestamp"].replace(microsecond=0)  # blob times have whole seconds
        logger.info("blob events for %s: subscription since %s on %s", self.binding.name, since.isoformat(),
                    ", ".join(self.options.containers))
        return since

    def _partition(self, container: str) -> str:
        return f"{self.binding.name}.{container}"

    def _load(self, container: str) -> dict[str, tuple[str, str]]:
        rows = self.receipts.query_entities("PartitionKey eq @pk", parameters={"pk": self._partition(container)},
                                            select=["name", "etag", "state"], results_per_page=1000)
        return {r["name"]: (r["etag"], r["state"]) for r in rows}

    # ------------------------------------------------------------ one delivery
    def _deliver(self, container: str, blob: BlobProperties, unseen: bool) -> None:
        key = (container, blob.name)
        try:
            claim = self._claim(container, blob, unseen)
            if claim is not None:
                self._finish(container, blob, claim, self._invoke(container, blob, claim))
        except Exception as exc:  # noqa: BLE001 - the receipt stays as it was; the next poll retries
            logger.warning("blob events for %s: %s/%s not delivered this time: %s", self.binding.name, container,
                           blob.name, exc)
        finally:
            with self._idle:
                self._running.discard(key)
                self._idle.notify_all()

    def _claim(self, container: str, blob: BlobProperties, unseen: bool) -> dict[str, Any] | None:
        """Our receipt for this version (state running), or None when another host has it or it is done.

        A blob this host has no receipt for is claimed by an insert (one request: the usual case); an
        insert that finds a receipt, or a blob seen before, is read and claimed If-Match.
        """
        pk, rk, etag = self._partition(container), receipt_key(blob.name), (blob.etag or "").strip('"')
        now = datetime.now(UTC)
        mine = {"PartitionKey": pk, "RowKey": rk, "name": blob.name, "etag": etag, "state": "running",
                "owner": self.owner, "attempts": 1, "lease_until": now + timedelta(seconds=self.options.lease_seconds)}
        if unseen:
            try:
                meta = self.receipts.create_entity(mine)
                return {**mine, "_etag": meta["etag"]}
            except ResourceExistsError:
                pass
        try:
            current = self.receipts.get_entity(pk, rk)
        except ResourceNotFoundError:  # deleted meanwhile: next poll
            return None
        if current["etag"] == etag:
            live = current["state"] == "running" and current["lease_until"] > now
            if current["state"] in _DONE or live:
                self._known[container][blob.name] = (etag, current["state"])
                return None
            mine["attempts"] = int(current.get("attempts", 0)) + 1
        try:
            meta = self.receipts.update_entity(mine, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                                               match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return {**mine, "_etag": meta["etag"]}

    def _invoke(self, container: str, blob: BlobProperties, claim: dict[str, Any]) -> str | None:
        """Call the function; None on success, else the error."""
        url = f"{self.blobs.url.rstrip('/')}/{container}/{quote(blob.name)}"
        event = blob_event(self.blobs.account_name or "devstoreaccount1", container, blob, url)
        ids = json.dumps({"function": self.binding.name, "event_id": event.id, "subject": event.subject,
                          "attempt": claim["attempts"]})
        started = time.monotonic()
        try:
            self.binding.invoke(event)
        except Exception as exc:  # noqa: BLE001 - recorded on the receipt, retried next poll
            logger.exception("Executed %s (Failed) %s", self.binding.name, ids)
            return f"{type(exc).__name__}: {exc}"
        logger.info("Executed %s (Succeeded, %.0f ms) %s", self.binding.name, (time.monotonic() - started) * 1000,
                    ids)
        return None

    def _finish(self, container: str, blob: BlobProperties, claim: dict[str, Any], error: str | None) -> None:
        state = "done" if error is None else "poison" if claim["attempts"] >= self.options.poison_threshold \
            else "failed"
        if state == "poison":
            logger.error("blob events for %s: %s/%s (ETag %s) gave up after %d attempts: %s", self.binding.name,
                         container, blob.name, claim["etag"], claim["attempts"], error)
        row = {k: v for k, v in claim.items() if k != "_etag"}
        row.update(state=state, error=(error or "")[:4000], ended_at=datetime.now(UTC))
        try:
            self.receipts.update_entity(row, mode=UpdateMode.REPLACE, etag=claim["_etag"],
                                        match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return  # our lease ran out and another host took the version over: its receipt counts
        self._known[container][blob.name] = (claim["etag"], state)
        if state == "done":
            self.delivered += 1
