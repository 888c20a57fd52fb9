"""Raster blobs: list, inspect, download to / upload from local files (streamed), URLs and read SAS.

SAS: with an account key (connection string, Azurite) a service SAS is signed with the key; under
managed identity a user-delegation key is fetched (cached until near expiry) and the SAS signed with it.
"""
from __future__ import annotations

import copy
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobSasPermissions, BlobServiceClient, ContentSettings, UserDelegationKey, generate_blob_sas,
)

from config import Settings
from errors import NotFoundError, TaskError
from models import BlobInfo, validate_blob_name, validate_container_name
from repository_clients import translate_errors

TIFF_CONTENT_TYPE = "image/tiff; application=geotiff"
COG_CONTENT_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
TRANSFER_CONCURRENCY = 2


def build_read_sas(account_name: str, container: str, blob: str, expiry: datetime, *,
                   account_key: str | None = None, delegation_key: UserDelegationKey | None = None,
                   start: datetime | None = None, https_only: bool = True) -> str:
    """Query string of a read-only blob SAS signed with an account key or a user-delegation key;
    usable over https only (``spr=https``) unless ``https_only`` is False (Azurite serves plain http)."""
    if (account_key is None) == (delegation_key is None):
        raise ValueError("sign a SAS with exactly one of account_key or delegation_key")
    return generate_blob_sas(account_name, container, blob, account_key=account_key,
                             user_delegation_key=delegation_key, permission=BlobSasPermissions(read=True),
                             expiry=expiry, start=start, protocol="https" if https_only else None)


def _info(container: str, props) -> BlobInfo:
    return BlobInfo(container=container, name=props.name, size=props.size, last_modified=props.last_modified,
                    content_type=props.content_settings.content_type if props.content_settings else None,
                    etag=props.etag)


class RasterStore:
    """Blob I/O for raster jobs, over the containers it is restricted to (``allowed_containers``; None: any)
    and never a Functions host container (azure-webjobs-*, $logs, ...)."""

    def __init__(self, service: BlobServiceClient, sas_enabled: bool = True, sas_ttl_minutes: int = 60,
                 allowed_containers: Iterable[str] | None = None) -> None:
        self.service = service
        self.sas_enabled = sas_enabled
        self.sas_ttl = timedelta(minutes=sas_ttl_minutes)
        self.allowed_containers = None if allowed_containers is None else tuple(allowed_containers)
        self._delegation: tuple[UserDelegationKey, datetime] | None = None
        self._lock = threading.Lock()

    def restricted_to(self, containers: Iterable[str]) -> "RasterStore":
        """The same store (same client and SAS settings) reaching only ``containers``."""
        store = copy.copy(self)
        store.allowed_containers = tuple(containers)
        return store

    def _container(self, container: str) -> str:
        """``container`` if this store may reach it; a permanent TaskError naming the allowed ones if not."""
        allowed = self.allowed_containers
        if str(container).startswith(Settings.RESERVED_CONTAINER_PREFIXES) or (
                allowed is not None and container not in allowed):
            names = "any but the Functions host's" if allowed is None else ", ".join(allowed) or "(none)"
            raise TaskError(f"container {container!r} is not open to jobs; allowed containers: {names}",
                            container=container, allowed=None if allowed is None else list(allowed))
        return validate_container_name(container)

    def _blob(self, container: str, blob: str):
        return self.service.get_blob_client(self._container(container), validate_blob_name(blob))

    def ensure_container(self, container: str) -> None:
        """Create ``container`` if it does not exist."""
        with translate_errors(f"create container {container}"):
            try:
                self.service.create_container(self._container(container))
            except ResourceExistsError:
                pass

    def properties(self, container: str, blob: str) -> BlobInfo:
        """Size, last-modified and content type; NotFoundError naming the blob if it is missing."""
        with translate_errors(f"read properties of {container}/{blob}"):
            try:
                props = self._blob(container, blob).get_blob_properties()
            except ResourceNotFoundError:
                raise NotFoundError(f"blob not found: {container}/{blob}") from None
        return _info(container, props)

    def list(self, container: str, prefix: str | None = None) -> Iterator[BlobInfo]:
        """Blobs of ``container`` whose names start with ``prefix``, in name order."""
        client = self.service.get_container_client(self._container(container))
        with translate_errors(f"list {container}/{prefix or ''}"):
            try:
                for props in client.list_blobs(name_starts_with=prefix or None):
                    yield _info(container, props)
            except ResourceNotFoundError:
                raise NotFoundError(f"container not found: {container}") from None

    def siblings(self, container: str, prefix: str, names: Iterable[str]) -> dict[str, BlobInfo]:
        """Which of ``names`` exist, found with one listing under ``prefix`` (the part of the names they all
        share: a raster's name up to its extension finds the raster and every sidecar GDAL would look for).
        NotFoundError if the container does not exist."""
        wanted = set(names)
        return {b.name: b for b in self.list(container, prefix) if b.name in wanted}

    def head_bytes(self, container: str, blob: str, length: int) -> bytes:
        """The first ``length`` bytes of a blob (one ranged read)."""
        with translate_errors(f"read the start of {container}/{blob}"):
            try:
                return self._blob(container, blob).download_blob(offset=0, length=length).readall()
            except ResourceNotFoundError:
                raise NotFoundError(f"blob not found: {container}/{blob}") from None

    def download(self, container: str, blob: str, path: Path) -> BlobInfo:
        """Stream a blob to ``path`` (never whole in memory)."""
        client = self._blob(container, blob)
        with translate_errors(f"download {container}/{blob}"):
            try:
                stream = client.download_blob(max_concurrency=TRANSFER_CONCURRENCY)
            except ResourceNotFoundError:
                raise NotFoundError(f"blob not found: {container}/{blob}") from None
            with open(path, "wb") as handle:
                stream.readinto(handle)
        props = stream.properties
        return BlobInfo(container=container, name=blob, size=props.size, last_modified=props.last_modified,
                        content_type=props.content_settings.content_type, etag=props.etag)

    def upload(self, container: str, blob: str, path: Path, content_type: str = TIFF_CONTENT_TYPE) -> BlobInfo:
        """Upload a local file (streamed), overwriting: outputs have deterministic names."""
        client = self._blob(container, blob)
        with translate_errors(f"upload {container}/{blob}"), open(path, "rb") as handle:
            client.upload_blob(handle, overwrite=True, max_concurrency=TRANSFER_CONCURRENCY,
                               content_settings=ContentSettings(content_type=content_type))
        return self.properties(container, blob)

    def url(self, container: str, blob: str) -> str:
        """The blob's URL (no credentials)."""
        return self._blob(container, blob).url

    def read_sas_url(self, container: str, blob: str, now: datetime | None = None) -> str | None:
        """A read-only URL valid for the configured time, or None when SAS is disabled."""
        self._container(container)  # a SAS only for a container this store may reach
        if not self.sas_enabled:
            return None
        now = now or datetime.now(timezone.utc)
        expiry = now + self.sas_ttl
        credential = self.service.credential
        key = getattr(credential, "account_key", None)
        url = self.url(container, blob)
        https_only = url.lower().startswith("https://")  # an https account: the SAS never works over http
        with translate_errors(f"sign a SAS for {container}/{blob}"):
            if key:
                token = build_read_sas(self.service.account_name, container, blob, expiry, account_key=key,
                                       https_only=https_only)
            else:
                token = build_read_sas(self.service.account_name, container, blob, expiry, https_only=https_only,
                                       delegation_key=self._delegation_key(now, expiry), start=now)
        return f"{url}?{token}"

    def _delegation_key(self, now: datetime, expiry: datetime) -> UserDelegationKey:
        """A user-delegation key covering ``expiry`` (fetched once a day, reused meanwhile)."""
        with self._lock:
            if self._delegation is None or self._delegation[1] < expiry:
                until = now + max(timedelta(days=1), self.sas_ttl + timedelta(hours=1))
                key = self.service.get_user_delegation_key(now - timedelta(minutes=5), until)
                self._delegation = (key, until)
            return self._delegation[0]
