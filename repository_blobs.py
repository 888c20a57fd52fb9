"""Blob payloads: JSON values too large for a table property, and the whole texts of cut ones, live here,
addressed by content."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContentSettings

from models import PayloadRef, canonical_json
from repository_clients import translate_errors


class PayloadBlobs:
    """Stores and loads JSON payloads in one container."""

    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self.container = container
        self._container = service.get_container_client(container)

    def ensure(self) -> None:
        """Create the container if it does not exist."""
        with translate_errors(f"create container {self.container}"):
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass

    def put_json(self, prefix: str, value: Any) -> PayloadRef:
        """Store ``value`` under ``prefix``; the name holds a content hash, so a rewrite is harmless."""
        data = canonical_json(value).encode("utf-8")
        name = f"{prefix}-{hashlib.sha256(data).hexdigest()[:16]}.json"
        with translate_errors(f"upload payload {name}"):
            self._container.upload_blob(
                name, data, overwrite=True,
                content_settings=ContentSettings(content_type="application/json"))
        return PayloadRef(container=self.container, blob=name, bytes=len(data))

    def put_text(self, prefix: str, text: str) -> str:
        """Store ``text`` (UTF-8) under ``prefix``; its name holds a content hash, so a repeat overwrites
        the same blob harmlessly. Returns the blob's name."""
        data = text.encode("utf-8", "surrogatepass")
        name = f"{prefix}-{hashlib.sha256(data).hexdigest()[:16]}.txt"
        with translate_errors(f"upload text {name}"):
            self._container.upload_blob(name, data, overwrite=True,
                                        content_settings=ContentSettings(content_type="text/plain; charset=utf-8"))
        return name

    def get_text(self, name: str) -> str:
        """Load a text stored by ``put_text``."""
        with translate_errors(f"download text {name}"):
            return self._container.download_blob(name).readall().decode("utf-8", "surrogatepass")

    def put_json_once(self, name: str, value: Any) -> Any:
        """Store ``value`` at ``name`` unless something is there already; return what is stored.

        The first writer wins, so a computation that may differ between runs (a listing) is fixed the
        first time and every redelivery sees the same result.
        """
        data = canonical_json(value).encode("utf-8")
        with translate_errors(f"store {name} once"):
            try:
                self._container.upload_blob(name, data, overwrite=False,
                                            content_settings=ContentSettings(content_type="application/json"))
                return value
            except ResourceExistsError:
                return json.loads(self._container.download_blob(name).readall())

    def get_named_json(self, name: str) -> Any:
        """Load what ``put_json_once`` stored at ``name``."""
        with translate_errors(f"download {name}"):
            return json.loads(self._container.download_blob(name).readall())

    def get_json(self, ref: PayloadRef) -> Any:
        """Load a payload stored by ``put_json``."""
        with translate_errors(f"download payload {ref.blob}"):
            data = self._container.download_blob(ref.blob).readall()
        return json.loads(data)
