"""Queue producers. Bodies are encoded the way host.json's ``messageEncoding`` tells the host to decode."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import (
    QueueClient, QueueServiceClient, TextBase64DecodePolicy, TextBase64EncodePolicy,
)

from config import queue_message_encoding
from logs import announce_enqueued
from models import Message
from repository_clients import translate_errors

logger = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 * 1024


def encode_policies(encoding: str):
    """(encode policy, decode policy) for a host.json messageEncoding value (None = the SDK's plain text)."""
    if encoding == "base64":
        return TextBase64EncodePolicy(), TextBase64DecodePolicy()
    if encoding == "none":
        return None, None
    raise ValueError(f"unsupported messageEncoding {encoding!r}; host.json allows 'base64' or 'none'")


class QueueProducer:
    """Sends messages to one queue, encoded as the consuming host expects."""

    def __init__(self, service: QueueServiceClient, name: str, encoding: str | None = None,
                 threads: int = 16) -> None:
        self.name = name
        self.encoding = encoding or queue_message_encoding()
        enc, dec = encode_policies(self.encoding)
        self.client: QueueClient = service.get_queue_client(
            name, message_encode_policy=enc, message_decode_policy=dec)
        self._threads = threads

    def ensure(self) -> None:
        """Create the queue if it does not exist."""
        with translate_errors(f"create queue {self.name}"):
            try:
                self.client.create_queue()
            except ResourceExistsError:
                pass

    def depth(self) -> int:
        """Approximate number of messages in the queue (one request)."""
        with translate_errors(f"read the depth of queue {self.name}"):
            return self.client.get_queue_properties().approximate_message_count

    def send(self, message: Message, delay_s: int = 0) -> None:
        """Send one message, visible after ``delay_s`` seconds."""
        body = message.encode()
        if len(body.encode("utf-8")) * 4 // 3 + 4 > MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {len(body)} bytes exceeds the 64 KiB queue limit")
        with translate_errors(f"send to queue {self.name}"):
            self.client.send_message(body, visibility_timeout=delay_s or None)
        if not delay_s:
            announce_enqueued(self.name)

    def send_many(self, messages: Sequence[Message]) -> None:
        """Send messages in parallel (a queue has no batch send); raises the first error after all ran."""
        if len(messages) <= 2:
            for message in messages:
                self.send(message)
            return
        with ThreadPoolExecutor(max_workers=min(self._threads, len(messages))) as pool:
            for future in [pool.submit(self.send, m) for m in messages]:
                future.result()

