"""Raster blobs: list, inspect, download to / upload from local files (streamed), URLs and read links.

Read links (``read_link``): with an account key (connection string, Azurite) a service SAS is signed with
the key; under managed identity with a user-delegation key, fetched once and shared by every copy of the
store (``restricted_to``) until near its expiry, so minting any number of links costs no storage request
beyond that one key. ``blob_at`` reads a plain blob URL of this account back into (container, blob).
"""
from __future__ import annotations

import copy
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote, unquote

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobSasPermissions, BlobServiceClient, ContentSettings, UserDelegationKey, generate_blob_sas,
)

from pydantic import BaseModel, Field

from config import Settings
from errors import NotFoundError, TaskError
from models import BlobInfo, validate_blob_name, validate_container_name
from repository_clients import translate_errors

TIFF_CONTENT_TYPE = "image/tiff; application=geotiff"
TRANSFER_CONCURRENCY = 2
DELEGATION_KEY_DAYS = 1  # a user-delegation key is fetched for this long (Azure allows at most 7 days)
MAX_DELEGATION = timedelta(days=7)
CLOCK_SKEW = timedelta(minutes=5)  # a delegation SAS starts this far back: a storage clock a little behind still
#                                     accepts it


class ReadLink(BaseModel):
    """A read-only link minted now: what to fetch, and until when it works (None: no SAS, the plain URL)."""

    href: str
    expires_at: datetime | None = Field(None, description="when the link stops working (UTC)")


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


class _DelegationKeys:
    """The user-delegation key a store and its restricted copies share, with how long it is valid."""

    def __init__(self) -> None:
        self.key: UserDelegationKey | None = None
        self.until: datetime | None = None
        self.lock = threading.Lock()


class RasterStore:
    """Blob I/O for raster jobs, over the containers it is restricted to (``allowed_containers``; None: any)
    and never a Functions host container (azure-webjobs-*, $logs, ...)."""

    def __init__(self, service: BlobServiceClient, sas_enabled: bool = True, sas_ttl_minutes: int = 60,
                 allowed_containers: Iterable[str] | None = None) -> None:
        self.service = service
        self.sas_enabled = sas_enabled
        self.sas_ttl = timedelta(minutes=sas_ttl_minutes)
        self.allowed_containers = None if allowed_containers is None else tuple(allowed_containers)
        self._delegation = _DelegationKeys()  # shared with restricted copies (copy.copy keeps the reference)

    def restricted_to(self, containers: Iterable[str]) -> "RasterStore":
        """The same store (same client and SAS settings) reaching only ``containers``."""
        store = copy.copy(self)
        store.allowed_containers = tuple(containers)
        return store

    def reaches(self, container: str) -> bool:
        """Whether this store may read or write ``container``."""
        try:
            self._container(container)
        except (TaskError, ValueError):
            return False
        return True

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

    def delete(self, container: str, blob: str) -> bool:
        """Delete a blob; False if it was not there (so a repeat is harmless)."""
        with translate_errors(f"delete {container}/{blob}"):
            try:
                self._blob(container, blob).delete_blob()
            except ResourceNotFoundError:
                return False
        return True

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

    def download(self, container: str, blob: str, path: Path, max_bytes: int | None = None) -> BlobInfo:
        """Stream a blob to ``path`` (never whole in memory). ``max_bytes``: write at most that many and more
        only if the blob is larger (then ``path`` holds its start; the info's ``size`` is the whole blob's)."""
        client = self._blob(container, blob)
        ranged = {} if max_bytes is None else {"offset": 0, "length": max_bytes + 1}
        with translate_errors(f"download {container}/{blob}"):
            try:
                stream = client.download_blob(max_concurrency=TRANSFER_CONCURRENCY, **ranged)
            except ResourceNotFoundError:
                raise NotFoundError(f"blob not found: {container}/{blob}") from None
            except HttpResponseError as exc:
                if not ranged or exc.status_code != 416:
                    raise
                path.write_bytes(b"")  # an empty blob has no byte 0 to start a range at
                return self.properties(container, blob)
            with open(path, "wb") as handle:
                stream.readinto(handle)
        props = stream.properties
        size = props.size
        if ranged and props.content_range:  # "bytes 0-N/TOTAL"
            size = int(str(props.content_range).rsplit("/", 1)[-1])
        return BlobInfo(container=container, name=blob, size=size, last_modified=props.last_modified,
                        content_type=props.content_settings.content_type, etag=props.etag)

    def upload(self, container: str, blob: str, path: Path, content_type: str = TIFF_CONTENT_TYPE) -> BlobInfo:
        """Upload a local file (streamed), overwriting: outputs have deterministic names."""
        client = self._blob(container, blob)
        with translate_errors(f"upload {container}/{blob}"), open(path, "rb") as handle:
            client.upload_blob(handle, overwrite=True, max_concurrency=TRANSFER_CONCURRENCY,
                               content_settings=ContentSettings(content_type=content_type))
        return self.properties(container, blob)

    def endpoint(self) -> str:
        """``scheme://host[/account]/``: what every blob URL of this account starts with."""
        return f"{self.service.scheme}://{self.service.primary_hostname}/"

    def url(self, container: str, blob: str) -> str:
        """The blob's URL (no credentials), quoted as the SDK quotes it (built here: a blob client per URL
        costs about 0.2 ms, which a response with thousands of links would feel)."""
        container, blob = self._container(container), validate_blob_name(blob)
        return f"{self.endpoint()}{quote(container)}/{quote(blob, safe='~/')}"

    def blob_at(self, url: str) -> tuple[str, str] | None:
        """(container, blob) that a URL of this account's blob endpoint names (a query or fragment, e.g. an old
        SAS, is ignored); None for anything else: another host, account or scheme, no blob, an invalid name.
        Whether this store may reach the container is ``reaches``."""
        base = self.endpoint()
        if not isinstance(url, str) or url[:len(base)].lower() != base.lower():
            return None
        path = url[len(base):].split("#", 1)[0].split("?", 1)[0]
        container, _, quoted = path.partition("/")
        try:
            return validate_container_name(container), validate_blob_name(unquote(quoted, errors="strict"))
        except (ValueError, UnicodeDecodeError):
            return None

    def read_link(self, container: str, blob: str, now: datetime | None = None) -> ReadLink:
        """A read-only link valid for the configured time from ``now`` (https only on an https account);
        with SAS disabled, the plain URL and no expiry. Signing is local: no storage request, except the
        shared user-delegation key when it is missing or about to lapse."""
        url = self.url(container, blob)  # a link only for a container this store may reach
        if not self.sas_enabled:
            return ReadLink(href=url)
        now = now or datetime.now(timezone.utc)
        expiry = now + self.sas_ttl
        key = getattr(self.service.credential, "account_key", None)
        https_only = url.lower().startswith("https://")  # an https account: the SAS never works over http
        with translate_errors(f"sign a SAS for {container}/{blob}"):
            if key:
                token = build_read_sas(self.service.account_name, container, blob, expiry, account_key=key,
                                       https_only=https_only)
            else:
                token = build_read_sas(self.service.account_name, container, blob, expiry, https_only=https_only,
                                       delegation_key=self._delegation_key(now, expiry), start=now - CLOCK_SKEW)
        return ReadLink(href=f"{url}?{token}", expires_at=expiry)

    def read_sas_url(self, container: str, blob: str, now: datetime | None = None) -> str | None:
        """A read-only URL valid for the configured time, or None when SAS is disabled."""
        link = self.read_link(container, blob, now)
        return link.href if link.expires_at is not None else None

    def _delegation_key(self, now: datetime, expiry: datetime) -> UserDelegationKey:
        """A user-delegation key covering ``expiry``: fetched for a day (longer if the TTL needs it, at most
        Azure's 7 days) and reused, by this store and its copies, until a link would outlive it."""
        cache = self._delegation
        with cache.lock:
            if cache.key is None or cache.until is None or cache.until < expiry:
                until = now + min(MAX_DELEGATION, max(timedelta(days=DELEGATION_KEY_DAYS),
                                                      self.sas_ttl + timedelta(hours=1)))
                cache.key = self.service.get_user_delegation_key(now - CLOCK_SKEW, until)
                cache.until = until
            return cache.key
