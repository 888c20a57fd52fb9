"""pgstac (PostgreSQL + PostGIS) behind a small repository: collections, items, search, bulk load.

The only module that imports psycopg or pypgstac. Every database error leaves as a domain error:
a lost or refused connection (``OperationalError``, pool timeout) is a ``TransientError`` (retry);
a missing collection is ``NotFoundError``; data pgstac rejects is ``TaskError``; a unique clash is
``ConflictError``; anything else is an ``OrchestratorError``. The password is never logged.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol, Self

import psycopg
import psycopg.errors
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from pypgstac.db import PgstacDB  # sets psycopg's JSON dumps/loads to orjson, process-wide, on import
from pypgstac.load import Loader, Methods
from pydantic import BaseModel, Field, SecretStr

from errors import (
    CatalogueError,
    ConflictError,
    NotFoundError,
    OrchestratorError,
    TaskError,
    TransientError,
)
from logs import log_event

logger = logging.getLogger(__name__)

SEARCH_PATH_OPTION = "-c search_path=pgstac,public"


class PgstacSettings(BaseModel):
    """Where pgstac lives. ``dsn`` quotes every value (passwords may hold spaces, quotes, ``=``)."""

    host: str = "localhost"
    port: int = 5432
    dbname: str = "postgis"
    user: str = "postgres"
    password: SecretStr = SecretStr("")
    sslmode: str | None = Field(None, description="e.g. 'require' for Azure Database for PostgreSQL")
    pool_max: int = Field(4, ge=1)
    connect_timeout_s: int = Field(10, ge=1)
    application_name: str = "geo-orchestrator"

    def _conninfo(self, password: str) -> str:
        params: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": self.dbname,
                                  "user": self.user, "options": SEARCH_PATH_OPTION,
                                  "connect_timeout": self.connect_timeout_s,
                                  "application_name": self.application_name}
        if password:
            params["password"] = password
        if self.sslmode:
            params["sslmode"] = self.sslmode
        return make_conninfo("", **params)

    @property
    def dsn(self) -> str:
        """libpq key=value string with the password, quoted. Do not log it: use ``safe_dsn``."""
        return self._conninfo(self.password.get_secret_value())

    @property
    def safe_dsn(self) -> str:
        """``dsn`` with the password masked, for logs and messages."""
        return self._conninfo("***" if self.password.get_secret_value() else "")


def _reason(exc: BaseException) -> str:
    """The server's primary message, else the first line of the exception text (never the DSN)."""
    diag = getattr(exc, "diag", None)
    if diag is not None and diag.message_primary:
        return diag.message_primary[:500]
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn psycopg / pool errors into the project's errors (see the module docstring)."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise TransientError(f"pgstac unavailable while {action}: {_reason(exc)}") from exc
    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
            psycopg.errors.LockNotAvailable) as exc:
        raise TransientError(f"pgstac lock conflict while {action}: {_reason(exc)}") from exc
    except psycopg.errors.UndefinedTable as exc:  # a partition another transaction is creating
        raise TransientError(f"pgstac table not ready while {action}: {_reason(exc)}") from exc
    except psycopg.errors.UniqueViolation as exc:
        raise ConflictError(f"pgstac conflict while {action}: {_reason(exc)}") from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise NotFoundError(f"pgstac: {action}: {_reason(exc)}") from exc
    except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.RaiseException) as exc:
        raise CatalogueError(f"pgstac rejected the data while {action}: {_reason(exc)}") from exc
    except psycopg.Error as exc:
        raise OrchestratorError(f"pgstac error while {action}: {type(exc).__name__}: {_reason(exc)}") from exc


class ExtentRules(Protocol):
    """How STAC extents combine (the catalogue service's rules, handed in: repositories import no
    service). ``services_stac`` itself has this shape."""

    def item_extent(self, item: dict) -> dict:
        """The extent of one item."""

    def union_extent(self, current: dict | None, other: dict) -> dict:
        """An extent covering both."""


class PgstacRepository:
    """Collections and items in pgstac, through a small psycopg connection pool (opened lazily).

    Connections run in autocommit mode; every write happens inside an explicit transaction. The
    collection extent stays true on every write, by the ``extents`` rules it is given.
    """

    def __init__(self, settings: PgstacSettings, extents: ExtentRules) -> None:
        """Prepare the pool; nothing connects until the first call."""
        self.settings = settings
        self.extents = extents
        self._pool = ConnectionPool(settings.dsn, min_size=0, max_size=settings.pool_max,
                                    timeout=settings.connect_timeout_s, open=False, name="pgstac",
                                    kwargs={"autocommit": True}, check=ConnectionPool.check_connection)
        self._opened = False

    # ------------------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Close the pool (idempotent)."""
        if self._opened:
            self._pool.close()
            self._opened = False

    def __enter__(self) -> Self:
        """Use as a context manager to close the pool at the end."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the pool."""
        self.close()

    def _ensure_open(self) -> None:
        if not self._opened:
            self._pool.open(wait=False)
            self._opened = True

    @contextmanager
    def _cursor(self, action: str, write: bool = False) -> Iterator[psycopg.Cursor]:
        """A cursor on a pooled connection, inside a transaction when ``write``; errors translated."""
        with translate_errors(action):
            self._ensure_open()
            with self._pool.connection() as conn:
                if write:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    with conn.cursor() as cur:
                        yield cur

    # ---------------------------------------------------------------------------- collections
    def ensure_collection(self, collection: dict) -> Literal["created", "updated", "unchanged"]:
        """Create the collection if missing; otherwise replace it, keeping the stored extent true:
        the new extent is the union of the stored one and the given one (``union_extent``)."""
        collection_id = collection.get("id")
        if not collection_id:
            raise TaskError("a collection needs an id")
        with self._cursor(f"ensuring collection {collection_id!r}", write=True) as cur:
            self._serialise(cur, collection_id)
            cur.execute("INSERT INTO collections (content) VALUES (%s) ON CONFLICT (id) DO NOTHING "
                        "RETURNING id", [Jsonb(collection)])
            if cur.fetchone() is not None:
                outcome = "created"
            else:
                stored = self._lock_collection(cur, collection_id)
                merged = {**collection, "extent": self.extents.union_extent(
                    stored.get("extent"), collection["extent"])}
                if merged == stored:
                    outcome = "unchanged"
                else:
                    cur.execute("SELECT update_collection(%s)", [Jsonb(merged)])
                    outcome = "updated"
        log_event(logger, "pgstac_collection", collection=collection_id, outcome=outcome)
        return outcome

    def get_collection(self, collection_id: str) -> dict | None:
        """The stored collection, or None."""
        with self._cursor(f"reading collection {collection_id!r}") as cur:
            cur.execute("SELECT content FROM collections WHERE id = %s", [collection_id])
            row = cur.fetchone()
        return row[0] if row else None

    @staticmethod
    def _serialise(cur: psycopg.Cursor, collection_id: str) -> None:
        """Take the collection's advisory lock first in every write transaction.

        One lock order for all writers of a collection: without it, the first item's partition
        creation (a table-level lock on ``collections``) and another writer's ``INSERT ... ON CONFLICT``
        (waiting on the row) deadlock, and pgstac may then lose the item.
        """
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"pgstac-collection:{collection_id}"])

    @staticmethod
    def _lock_collection(cur: psycopg.Cursor, collection_id: str) -> dict:
        cur.execute("SELECT content FROM collections WHERE id = %s FOR UPDATE", [collection_id])
        row = cur.fetchone()
        if row is None:
            raise NotFoundError(f"collection {collection_id!r} does not exist in pgstac: "
                                f"ensure_collection first")
        return row[0]

    def _widen_extent(self, cur: psycopg.Cursor, collection_id: str, stored: dict, extent: dict) -> None:
        widened = self.extents.union_extent(stored.get("extent"), extent)
        if widened != stored.get("extent"):
            cur.execute("UPDATE collections SET content = jsonb_set(content, '{extent}', %s) WHERE id = %s",
                        [Jsonb(widened), collection_id])

    # ---------------------------------------------------------------------------------- items
    def upsert_item(self, item: dict) -> Literal["created", "updated"]:
        """Insert or replace one item (``pgstac.upsert_item``): the same item twice is one row.

        The collection row is locked for the transaction, so concurrent upserts into one collection
        serialise, the created/updated answer is exact, and the collection extent grows to cover
        the item in the same transaction.
        """
        collection_id, item_id = self._keys(item)
        with self._cursor(f"upserting item {item_id!r} into {collection_id!r}", write=True) as cur:
            self._serialise(cur, collection_id)
            stored = self._lock_collection(cur, collection_id)
            cur.execute("SELECT 1 FROM items WHERE collection = %s AND id = %s", [collection_id, item_id])
            existed = cur.fetchone() is not None
            cur.execute("SELECT upsert_item(%s)", [Jsonb(item)])
            self._widen_extent(cur, collection_id, stored, self.extents.item_extent(item))
        outcome: Literal["created", "updated"] = "updated" if existed else "created"
        log_event(logger, "pgstac_item", collection=collection_id, item=item_id, outcome=outcome)
        return outcome

    def get_item(self, collection_id: str, item_id: str) -> dict | None:
        """The item as pgstac serves it (hydrated), or None."""
        with self._cursor(f"reading item {item_id!r}") as cur:
            cur.execute("SELECT get_item(%s, %s)", [item_id, collection_id])
            row = cur.fetchone()
        return row[0] if row and row[0] is not None else None

    def search(self, *, bbox: list[float] | None = None, collections: list[str] | None = None,
               ids: list[str] | None = None, datetime: str | None = None, limit: int = 100) -> list[dict]:
        """Items matching a STAC API search (``pgstac.search``), first page of up to ``limit``."""
        body: dict[str, Any] = {"limit": limit}
        for key, value in (("bbox", bbox), ("collections", collections), ("ids", ids),
                           ("datetime", datetime)):
            if value is not None:
                body[key] = value
        with self._cursor("searching") as cur:
            cur.execute("SELECT search(%s)", [Jsonb(body)])
            row = cur.fetchone()
        return (row[0] or {}).get("features", []) if row else []

    def count_items(self, collection_id: str) -> int:
        """Number of items in a collection (0 if it does not exist)."""
        with self._cursor(f"counting items of {collection_id!r}") as cur:
            cur.execute("SELECT count(*) FROM items WHERE collection = %s", [collection_id])
            return int(cur.fetchone()[0])

    def stored_ids(self, collection_id: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` the collection holds now (an empty set if it does not exist)."""
        ids = list(ids)
        if not ids:
            return set()
        with self._cursor(f"reading item ids of {collection_id!r}") as cur:
            cur.execute("SELECT id FROM items WHERE collection = %s AND id = ANY(%s)", [collection_id, ids])
            return {row[0] for row in cur.fetchall()}

    def bulk_load(self, items: Iterable[dict], mode: Literal["upsert", "insert", "ignore"] = "upsert") -> int:
        """Load many items with pypgstac's ``Loader`` (COPY into partitions); returns how many distinct
        items were loaded (of several items with one id, the last wins: one COPY cannot hold both).

        Each collection's advisory lock (the one every writer takes first, ``_serialise``) is held for
        the whole load, so bulk loads and single upserts of a collection never interleave. Each
        collection's extent is widened (and committed) before its items land, so the stored extent
        covers every item a reader can see. In upsert mode, loading the same items again rewrites no
        row (pypgstac skips rows identical to the stored ones). A missing collection is NotFoundError.
        """
        unique: dict[tuple[str, str], dict] = {}
        for item in items:
            key = self._keys(item)
            unique.pop(key, None)  # the last one wins, at its own position
            unique[key] = item
        if not unique:
            return 0
        by_collection: dict[str, list[dict]] = {}
        for (collection_id, _), item in unique.items():
            by_collection.setdefault(collection_id, []).append(item)
        loaded = list(unique.values())
        with translate_errors(f"bulk loading {len(loaded)} items"):
            self._ensure_open()
            with self._pool.connection() as conn:  # autocommit: the Loader commits partition by partition
                try:
                    for collection_id in sorted(by_collection):  # one order: two loads cannot deadlock
                        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                                     [f"pgstac-collection:{collection_id}"])
                    with conn.transaction(), conn.cursor() as cur:
                        for collection_id, group in by_collection.items():
                            self._widen_extent(cur, collection_id, self._lock_collection(cur, collection_id),
                                               self._extent_of(group))
                    try:
                        Loader(PgstacDB(connection=conn)).load_items(iter(loaded), insert_mode=Methods(mode))
                    except psycopg.Error:
                        raise
                    except Exception as exc:  # pypgstac raises bare Exception for invalid items
                        raise CatalogueError(f"pgstac bulk load rejected the items: {exc}") from exc
                finally:
                    conn.execute("SELECT pg_advisory_unlock_all()")
        log_event(logger, "pgstac_bulk_load", items=len(loaded), collections=sorted(by_collection))
        return len(loaded)

    def _extent_of(self, items: list[dict]) -> dict:
        extent = self.extents.item_extent(items[0])
        for item in items[1:]:
            extent = self.extents.union_extent(extent, self.extents.item_extent(item))
        return extent

    @staticmethod
    def _keys(item: dict) -> tuple[str, str]:
        if not item.get("id") or not item.get("collection"):
            raise TaskError(f"a pgstac item needs 'id' and 'collection'; got "
                            f"{json.dumps({k: item.get(k) for k in ('id', 'collection')})}")
        return item["collection"], item["id"]
