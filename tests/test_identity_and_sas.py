"""Managed-identity paths that Azurite cannot exercise end to end: how clients and SAS are built."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

import pytest
from azure.storage.blob import BlobServiceClient

from config import Settings
from repository_clients import StorageClients
from repository_rasters import RasterStore, build_read_sas
from support import delegation_key


def test_identity_based_settings_build_https_clients_with_default_credential():
    settings = Settings(**{"AzureWebJobsStorage__accountName": "geoacct", "AzureWebJobsStorage__clientId": "abc"})
    clients = StorageClients(settings)
    assert settings.uses_identity
    assert clients.tables.url.startswith("https://geoacct.table.core.windows.net")
    assert clients.queues.url.startswith("https://geoacct.queue.core.windows.net")
    assert clients.blobs.url.startswith("https://geoacct.blob.core.windows.net")
    assert type(clients.blobs.credential).__name__ == "DefaultAzureCredential"
    explicit = Settings(**{"AzureWebJobsStorage__queueServiceUri": "https://q.example.net/",
                           "AzureWebJobsStorage__tableServiceUri": "https://t.example.net",
                           "AzureWebJobsStorage__blobServiceUri": "https://b.example.net"})
    assert StorageClients(explicit).queues.url.startswith("https://q.example.net")


def test_missing_storage_settings_say_what_to_set():
    with pytest.raises(ValueError, match="AzureWebJobsStorage__accountName"):
        StorageClients(Settings()).tables  # noqa: B018 - the property builds the client


def test_user_delegation_sas_is_read_only_time_limited_and_names_the_identity():
    expiry = datetime(2026, 11, 22, 13, 0, tzinfo=timezone.utc)
    token = build_read_sas("geoacct", "cogs", "a/b.tif", expiry, delegation_key=delegation_key(),
                           start=expiry - timedelta(hours=1))
    q = {k: v[0] for k, v in parse_qs(token).items()}
    assert q["sp"] == "r" and q["sr"] == "b" and q["se"] == "2026-11-22T13:00:00Z"
    assert q["skoid"] == "11111111-2222-3333-4444-555555555555" and q["sktid"].startswith("66666666")
    assert q["sks"] == "b" and q["skv"] == "2025-01-05" and q["sig"]
    again = build_read_sas("geoacct", "cogs", "a/b.tif", expiry, delegation_key=delegation_key(),
                           start=expiry - timedelta(hours=1))
    assert again == token  # deterministic: same key, same inputs, same signature
    other = build_read_sas("geoacct", "cogs", "a/c.tif", expiry, delegation_key=delegation_key(),
                           start=expiry - timedelta(hours=1))
    assert parse_qs(other)["sig"] != parse_qs(token)["sig"]
    with pytest.raises(ValueError, match="exactly one"):
        build_read_sas("geoacct", "cogs", "a/b.tif", expiry)


def test_store_signs_with_a_delegation_key_under_identity_and_caches_it():
    class FakeService:
        account_name = "geoacct"
        credential = object()  # no account key: an identity
        scheme, primary_hostname = "https", "geoacct.blob.core.windows.net"
        calls = 0

        def get_user_delegation_key(self, start, expiry):
            FakeService.calls += 1
            return delegation_key()

        def get_blob_client(self, container, blob):
            return BlobServiceClient("https://geoacct.blob.core.windows.net").get_blob_client(container, blob)

    store = RasterStore(FakeService(), sas_ttl_minutes=30)
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    first = store.read_sas_url("cogs", "a/b.tif", now)
    second = store.read_sas_url("cogs", "a/c.tif", now + timedelta(minutes=5))
    assert first.startswith("https://geoacct.blob.core.windows.net/cogs/a/b.tif?") and "skoid=" in first
    assert "skoid=" in second and FakeService.calls == 1
    assert RasterStore(FakeService(), sas_enabled=False).read_sas_url("cogs", "a/b.tif") is None
