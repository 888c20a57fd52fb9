"""Queue triggers for ``local_host``: host.json ``extensions.queues`` and one poller per queue function.

Mirrors the Functions host's queue listener: a batch of up to ``batchSize`` messages is fetched whenever
no more than ``newBatchThreshold`` are in flight; each message is held with a renewed lease while its
function runs; success deletes it; failure makes it visible again after ``visibilityTimeout``, or moves
its original content to ``<queue>-poison`` once ``dequeue_count`` reaches ``maxDequeueCount``.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionQueueMessage

import logs
from local_host_timers import parse_timespan

if TYPE_CHECKING:
    from collections.abc import Iterable

    from azure.storage.queue import QueueClient, QueueMessage

logger = logging.getLogger(__name__)

MIN_POLL_SECONDS = 0.1


def _get(section: dict[str, Any], key: str, default: Any) -> Any:
    """host.json keys are case-insensitive."""
    for name, value in section.items():
        if name.lower() == key.lower():
            return value
    return default


@dataclass(frozen=True)
class QueueOptions:
    """host.json ``extensions.queues``, with the host's defaults; times in seconds."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"

    @classmethod
    def from_host_config(cls, host_config: dict[str, Any]) -> QueueOptions:
        """Read and validate ``extensions.queues`` of a parsed host.json."""
        section = _get(_get(host_config, "extensions", {}) or {}, "queues", {}) or {}
        batch = int(_get(section, "batchSize", 16))
        options = cls(
            batch_size=batch,
            new_batch_threshold=int(_get(section, "newBatchThreshold", batch // 2)),
            max_dequeue_count=int(_get(section, "maxDequeueCount", 5)),
            visibility_timeout=parse_timespan(_get(section, "visibilityTimeout", "00:00:00")),
            max_polling_interval=parse_timespan(_get(section, "maxPollingInterval", "00:01:00")),
            message_encoding=str(_get(section, "messageEncoding", "base64")).lower())
        if not 1 <= options.batch_size <= 32:
            raise ValueError(f"extensions.queues.batchSize must be 1..32, got {options.batch_size}")
        if options.new_batch_threshold < 0 or options.max_dequeue_count < 1:
            raise ValueError("extensions.queues: newBatchThreshold must be >= 0 and maxDequeueCount >= 1")
        if options.max_polling_interval < MIN_POLL_SECONDS or options.visibility_timeout < 0:
            raise ValueError("extensions.queues: maxPollingInterval must be >= 00:00:00.1, visibilityTimeout >= 0")
        if options.message_encoding not in ("base64", "none"):
            raise ValueError(f"extensions.queues.messageEncoding must be base64 or none, "
                             f"got {options.message_encoding!r}")
        return options


def decode_body(content: str | None, encoding: str) -> bytes:
    """The bytes a function sees: base64-decoded (whitespace ignored, like .NET) or the UTF-8 text."""
    text = content or ""
    if encoding == "base64":
        return base64.b64decode("".join(text.split()), validate=True)
    return text.encode("utf-8")


class _Held:
    """A received message and its current pop receipt, while this host holds its lease."""

    def __init__(self, message: QueueMessage, renew_at: float) -> None:
        self.message = message
        self.pop_receipt: str = message.pop_receipt
        self.renew_at = renew_at
        self.done = False
        self.lock = threading.Lock()


class QueuePoller:
    """Feeds one queue trigger's messages to its function; several hosts may poll the same queue."""

    def __init__(self, binding: Any, queue: QueueClient, poison: QueueClient, options: QueueOptions,
                 lease_seconds: float = 30.0) -> None:
        self.binding = binding
        self.queue = queue
        self.poison = poison
        self.options = options
        self.lease = max(1, math.ceil(lease_seconds))
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by wake() and stop(): ends a back-off wait early
        self._cond = threading.Condition()
        self._in_flight = 0
        self._held: dict[str, _Held] = {}
        self._queue_ready = False
        self._threads = [threading.Thread(target=self._poll, name=f"poll-{binding.name}", daemon=True),
                         threading.Thread(target=self._renew, name=f"lease-{binding.name}", daemon=True)]

    def start(self) -> None:
        """Start polling and lease renewal."""
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Poll now, not after the back-off: this process just enqueued a message for this trigger."""
        self._wake.set()

    def stop(self) -> None:
        """Fetch no more messages (running functions go on, their leases still renewed)."""
        with self._cond:
            self._stop.set()
            self._wake.set()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no message is in flight; True if none is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, max(0.0, timeout))

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled."""
        return self._in_flight

    def _poll(self) -> None:
        delay, failing = MIN_POLL_SECONDS, False
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._stop.is_set()
                                    or self._in_flight <= self.options.new_batch_threshold)
            if self._stop.is_set():
                return
            self._wake.clear()  # a message sent from now on is received below or wakes the wait
            try:
                messages = self._receive()
            except Exception as exc:  # noqa: BLE001 - storage down or anything else: the poller keeps going
                if not failing:
                    logger.warning("queue %s: receive failed, retrying with back-off: %s",
                                   self.binding.queue_name, exc)
                failing, messages = True, []
                self._queue_ready = self._queue_ready and not isinstance(exc, ResourceNotFoundError)
            else:
                if failing:
                    logger.info("queue %s: receiving again", self.binding.queue_name)
                failing = False
            if messages and self._stop.is_set():
                self._release(messages)
            elif messages:
                delay = MIN_POLL_SECONDS
                for message in messages:
                    self._dispatch(message)
            elif self._wake.wait(delay) and not failing:
                delay = MIN_POLL_SECONDS
            else:
                delay = min(delay * 2, self.options.max_polling_interval)

    def _receive(self) -> list[QueueMessage]:
        if not self._queue_ready:
            try:
                self.queue.create_queue()
            except ResourceExistsError:
                pass
            self._queue_ready = True
        size = self.options.batch_size
        pages = self.queue.receive_messages(messages_per_page=size, max_messages=size,
                                            visibility_timeout=self.lease).by_page()
        return list(next(pages, []))

    def _release(self, messages: list[QueueMessage]) -> None:
        """Make messages received during stop() visible again at once, for other hosts."""
        for message in messages:
            try:
                self.queue.update_message(message.id, message.pop_receipt, visibility_timeout=0)
            except Exception as exc:  # noqa: BLE001 - then the lease runs out instead
                logger.warning("queue %s: could not release message %s: %s", self.binding.queue_name, message.id, exc)

    def _dispatch(self, message: QueueMessage) -> None:
        held = _Held(message, time.monotonic() + self.lease / 2)
        with self._cond:
            self._in_flight += 1
            self._held[message.id] = held
        # This thread only holds the message and waits: the function runs on the process's worker pool
        # (local_host_worker.sync_pool), whose long-lived threads keep GDAL's and PROJ's per-thread setup.
        threading.Thread(target=self._process, args=(held,), name=f"run-{self.binding.name}", daemon=True).start()

    def _process(self, held: _Held) -> None:
        ok = False
        try:
            ok = self._run(held)
        finally:
            try:
                self._settle(held, ok)
            except Exception as exc:  # noqa: BLE001 - the lease runs out and the message comes back
                logger.warning("queue %s: could not settle message %s (it will be delivered again): %s",
                               self.binding.queue_name, held.message.id, exc)
            finally:
                with self._cond:
                    self._held.pop(held.message.id, None)
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _run(self, held: _Held) -> bool:
        message = held.message
        ids = json.dumps({"function": self.binding.name, "queue": self.binding.queue_name,
                          "message_id": message.id, "dequeue_count": message.dequeue_count})
        if message.dequeue_count > self.options.max_dequeue_count:
            logger.error("Not executing %s: message already dequeued more than maxDequeueCount=%d times %s",
                         self.binding.name, self.options.max_dequeue_count, ids)
            return False
        try:
            body = decode_body(message.content, self.options.message_encoding)
        except ValueError as exc:
            logger.error("Executed %s (Failed: message is not valid base64: %s) %s", self.binding.name, exc, ids)
            return False
        started = time.monotonic()
        try:
            self.binding.invoke(FunctionQueueMessage(
                id=message.id, body=body, dequeue_count=message.dequeue_count,
                pop_receipt=held.pop_receipt, insertion_time=message.inserted_on,
                expiration_time=message.expires_on, time_next_visible=message.next_visible_on))
        except Exception:
            logger.exception("Executed %s (Failed) %s", self.binding.name, ids)
            return False
        logger.info("Executed %s (Succeeded, %.0f ms) %s", self.binding.name,
                    (time.monotonic() - started) * 1000, ids)
        return True

    def _settle(self, held: _Held, ok: bool) -> None:
        with held.lock:
            held.done = True
        message = held.message
        if ok:
            self.queue.delete_message(message.id, held.pop_receipt)
        elif message.dequeue_count >= self.options.max_dequeue_count:
            self._send_poison(message.content or "")
            self.queue.delete_message(message.id, held.pop_receipt)
            logger.warning("moved message %s to %s after %d attempts", message.id, self.poison.queue_name,
                           message.dequeue_count)
        else:
            self.queue.update_message(message.id, held.pop_receipt,
                                      visibility_timeout=math.ceil(self.options.visibility_timeout))

    def _send_poison(self, content: str) -> None:
        try:
            self.poison.send_message(content)
        except ResourceNotFoundError:
            try:
                self.poison.create_queue()
            except ResourceExistsError:
                pass
            self.poison.send_message(content)

    def _renew(self) -> None:
        tick = min(0.5, self.lease / 4)
        while not (self._stop.is_set() and self._in_flight == 0):
            time.sleep(tick)
            with self._cond:
                due = [h for h in self._held.values() if h.renew_at <= time.monotonic()]
            for held in due:
                with held.lock:
                    if held.done:
                        continue
                    try:
                        receipt = self.queue.update_message(held.message.id, held.pop_receipt,
                                                            visibility_timeout=self.lease)
                        held.pop_receipt = receipt.pop_receipt
                        held.renew_at = time.monotonic() + self.lease / 2
                    except Exception as exc:  # noqa: BLE001 - retried next tick unless the lease is lost
                        lost = isinstance(exc, ResourceNotFoundError) or \
                            getattr(exc, "error_code", None) == "PopReceiptMismatch"
                        held.done = lost
                        held.renew_at = time.monotonic() + tick
                        logger.warning("queue %s: lease renewal of message %s failed%s: %s", self.binding.queue_name,
                                       held.message.id, " (lease lost)" if lost else "", exc)


# ------------------------------------------------------------------ wake-ups on this process's own sends
_LIVE_POLLERS: "weakref.WeakSet[QueuePoller]" = weakref.WeakSet()
_pollers_lock = threading.Lock()


def wake_on_enqueue(pollers: Iterable[QueuePoller]) -> None:
    """Wake these pollers when this process enqueues to their queue, as the Functions host wakes a queue
    listener for messages its functions enqueue through output bindings (the app announces its sends)."""
    logs.watch_enqueued(_wake_pollers)
    with _pollers_lock:
        _LIVE_POLLERS.update(pollers)


def _wake_pollers(queue_name: str) -> None:
    with _pollers_lock:
        pollers = list(_LIVE_POLLERS)
    for poller in pollers:
        if poller.binding.queue_name == queue_name:
            poller.wake()
