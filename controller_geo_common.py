"""Pieces the raster and container job types share: blob references, fetching inputs, cataloguing.

Items carry their provenance (``services_stac.Provenance``): planners name the job type and, for an
output, the raster it was made from (``CatalogRun``); the handler adds the job id. The blob is read over
the network with its sidecars (``controller_sources.open_blob``), not downloaded.
"""
from __future__ import annotations

from datetime import datetime as DateTime
from pathlib import Path
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Iterator

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from base_controller import (
    CONTAINER_NOT_ALLOWED, CONTAINERS_CONTEXT, JobParameters, Stage, TaskContext, TaskIO, TaskOutcome, succeeded,
)
from config import Settings
from controller_sources import open_blob
from errors import InputNotFoundError, NotFoundError, TaskError
from models import BlobInfo, BlobName, ContainerName
from services_crs import user_crs
from services_gdal import RasterLimits
from services_raster import crs_string, validate_raster
import services_stac
from services_stac import Provenance, build_collection, build_item

RASTER_SUFFIXES = (".tif", ".tiff")
STAC_EXTENTS = services_stac  # the extent rules the engine hands the catalogue (item_extent, union_extent)


def _optional_in_schema(schema: dict[str, Any], cls: type) -> None:
    """In JSON Schema, fields defaulted from settings are optional, and say which setting fills them."""
    defaults = getattr(cls, "SETTINGS_DEFAULTS", {})
    schema["required"] = [f for f in schema.get("required", []) if f not in defaults]
    if not schema["required"]:
        del schema["required"]
    for field_name, setting in defaults.items():
        prop = schema.get("properties", {}).get(field_name)
        if prop is not None:
            prop["description"] = (prop.get("description", "") + f" Default: the {setting.upper()} setting.").strip()


def _job_container(name: str, info: ValidationInfo) -> str:
    """Never a Functions host container; at submit (``JobController.validate`` puts the allow-list in the
    validation context) only a container the settings allow. The engine re-validates stored parameters
    without context: there the blob store's own guard (engine_task_io) applies the same allow-list."""
    allowed = (info.context or {}).get(CONTAINERS_CONTEXT)
    if name.startswith(Settings.RESERVED_CONTAINER_PREFIXES) or (allowed is not None and name not in allowed):
        raise PydanticCustomError(CONTAINER_NOT_ALLOWED, "container '{container}' is not open to jobs; "
                                  "allowed containers: {allowed}",
                                  {"container": name, "allowed": ", ".join(allowed or ()) or "(see settings)"})
    return name


JobContainer = Annotated[ContainerName, AfterValidator(_job_container)]  # a container a job reads or writes


def _crs_parameter(value: str | None) -> str | None:
    """A CRS parameter in canonical form ('EPSG:3857', else WKT2): authority codes, WKT and PROJJSON only,
    so a path or URL is refused (400 naming the field) before GDAL or PROJ could read or fetch it."""
    if value is None or not value.strip():
        return None
    return crs_string(user_crs(value))


CrsParameter = Annotated[str | None, AfterValidator(_crs_parameter)]  # every CRS-typed parameter


def raster_limits(io: TaskIO) -> RasterLimits:
    """The size limits on user rasters, from the task's settings."""
    return RasterLimits.from_settings(io.settings)


class SettingsDefaults(JobParameters):
    """A parameters model some of whose fields default to a setting (``SETTINGS_DEFAULTS``: field ->
    setting). ``JobController.validate`` fills them from the engine's settings before validating, so the
    job id names the real value; in JSON Schema they are optional."""

    model_config = ConfigDict(json_schema_extra=_optional_in_schema)
    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {}


class BlobRef(SettingsDefaults):
    """One blob: where it is."""

    model_config = ConfigDict(extra="forbid")
    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {"container": "input_container"}
    container: JobContainer = Field(description="Container of the raster (default: INPUT_CONTAINER).")
    blob: BlobName = Field(description="Blob name (path) of the raster inside the container.")
    source_etag: str | None = Field(  # issue #13: a watch starts one job per blob version
        default=None, min_length=1, max_length=200, exclude_if=lambda value: value is None,
        description="Set by a watch: the blob version (ETag) this job is for; part of the job's identity, so "
                    "each version runs once and an overwritten blob runs again.")


class CatalogOptions(SettingsDefaults):
    """Where and how items are catalogued."""

    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {"collection_id": "default_collection"}
    collection_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                               description="STAC collection id (default: DEFAULT_COLLECTION).")
    datetime: DateTime | None = Field(default=None, description="Item datetime; default: the file's TIFF "
                                      "datetime, else the blob's last-modified time.")


class CatalogTask(BlobRef, CatalogOptions):
    """Parameters of one catalog task."""

    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {**BlobRef.SETTINGS_DEFAULTS, **CatalogOptions.SETTINGS_DEFAULTS}


class CatalogRun(CatalogTask):
    """What a planner gives a catalog/build-item task besides the blob: for the item's provenance."""

    job_type: str | None = Field(None, max_length=100, description="the job type that catalogues it")
    source_container: str | None = Field(None, description="for an output: the container of its source")
    source_blob: BlobName | None = Field(None, description="for an output: the raster it was derived from")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="the blob's SHA-256, when known")
    listed_size: int | None = Field(None, ge=0, description="set by a container listing that found no sidecar "
                                    "beside the blob: its size then; the task lists nothing itself")


@contextmanager
def named_as_blob(path: Path | str, container: str, blob: str) -> Iterator[None]:
    """Errors about a local copy name the blob instead (users know blobs, not our scratch folders)."""
    try:
        yield
    except TaskError as exc:
        message = exc.message.replace(str(path), f"{container}/{blob}")
        raise type(exc)(message, **exc.details) from exc  # keeps the class (and code), e.g. too_large


def fetch(io: TaskIO, container: str, blob: str, folder: Path, name: str = "input") -> tuple[Path, BlobInfo]:
    """Download a blob into ``folder``; a missing blob is a permanent, readable failure."""
    suffix = Path(blob).suffix or ".bin"
    path = folder / f"{name}{suffix}"
    try:
        info = io.rasters.download(container, blob, path)
    except NotFoundError as exc:
        raise InputNotFoundError(exc.message) from None
    return path, info


def links(io: TaskIO, container: str, blob: str) -> dict[str, str]:
    """The blob's plain URL: what a result stores. Never a SAS: the API signs a short-lived ``href`` beside
    it each time it answers (engine_links)."""
    return {"url": io.rasters.url(container, blob)}


def build_blob_item(io: TaskIO, p: CatalogTask, folder: Path,
                    job_id: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the blob's STAC item, writing nothing: (the item as a dict, what a task reports about it).

    The blob is read over the network with its sidecars (nothing is downloaded unless SAS is off); the
    item lists the sidecars GDAL used as assets, and, with ``job_id``, its provenance."""
    run = p if isinstance(p, CatalogRun) else None  # what a planner added: listing, provenance, checksum
    found = open_blob(io, p.container, p.blob, folder, listed_size=run.listed_size if run else None)
    info = validate_raster(found.source, raster_limits(io), sidecars=found.sidecars)
    used = {kind: url for kind, url in found.sidecar_urls.items()
            if getattr(found.sidecars, kind) is not None and getattr(found.sidecars, kind).name in info.sidecars}
    provenance = None
    if job_id:
        source = (run.source_container, run.source_blob) if run and run.source_container and run.source_blob else None
        provenance = Provenance(job_id=job_id, job_type=(run.job_type if run else None) or "unknown",
                                source_href=io.rasters.url(*source) if source else None,
                                source_name="/".join(source) if source else None,
                                step="converted to a COG" if source else "catalogued")
    item = build_item(info, container=p.container, blob=p.blob, href=io.rasters.url(p.container, p.blob),
                      file_size=found.info.size, sha256=run.sha256 if run else None, datetime=p.datetime,
                      last_modified=found.info.last_modified, collection_id=p.collection_id,
                      provenance=provenance, sidecars=used)
    return item.to_dict(include_self_link=False, transform_hrefs=False), {
        "item_id": item.id, "collection_id": p.collection_id, "bbox": item.bbox,
        "datetime": item.datetime.isoformat() if item.datetime else None, "container": p.container,
        "blob": p.blob, "media_type": item.assets["data"].media_type, "sidecars": sorted(used.values())}


def catalog_blob(io: TaskIO, p: CatalogTask, folder: Path, job_id: str | None = None) -> dict[str, Any]:
    """Build the blob's STAC item, create its collection if missing, upsert the item (idempotent)."""
    item, summary = build_blob_item(io, p, folder, job_id)
    return {**summary, "action": upsert_catalog_item(io, p.collection_id, item)}


# ------------------------------------------------------------------ catalogue writes
def _collection_of(collection_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return build_collection(collection_id, items).to_dict(include_self_link=False, transform_hrefs=False)


def upsert_catalog_item(io: TaskIO, collection_id: str, item: dict[str, Any]) -> str:
    """One item into pgstac: its collection ensured once per process (``upsert_item`` then widens the
    extent), then upserted; 'created' or 'updated'."""
    catalogue = io.pgstac()

    def ensure() -> None:
        catalogue.ensure_collection(_collection_of(collection_id, [item]))
        io.known_collections.add(collection_id)

    if collection_id not in io.known_collections:
        ensure()
    try:
        return catalogue.upsert_item(item)
    except NotFoundError:  # the collection was removed since this process ensured it
        io.known_collections.discard(collection_id)
        ensure()
        return catalogue.upsert_item(item)


LOAD_CHUNK_ITEMS = 500  # items per load task: one pypgstac Loader run


class LoadItemsTask(BaseModel):
    """One load task: the items built by tasks ``first``..``last`` of stage ``stage`` (the task reads them
    itself, so planning never holds a stage's items), or, from older plans, the items themselves."""

    collection_id: str = Field(min_length=1, max_length=200)
    stage: int | None = Field(None, ge=1, description="the build stage whose results hold the items")
    first: int | None = Field(None, ge=0)
    last: int | None = Field(None, ge=0)
    items: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=LOAD_CHUNK_ITEMS)
    built: int | None = Field(None, ge=0, description="build tasks that succeeded in the range (items may be "
                                                     "fewer when several built one id); default: one per item")

    def build_range(self) -> tuple[int, int, int] | None:
        """(stage, first, last) of the build tasks whose results hold the items; None for a task of items."""
        if self.stage is None or self.first is None or self.last is None:
            return None
        return self.stage, self.first, self.last

    @model_validator(mode="after")
    def _one_source(self) -> "LoadItemsTask":
        ranged = self.build_range()
        if (ranged is not None) == (self.items is not None) or (ranged is not None and ranged[1] > ranged[2]):
            raise ValueError("a load task names either a range of build tasks (stage, first <= last) or items")
        return self


def build_item_task(p: CatalogRun, ctx: TaskContext) -> dict[str, Any]:
    """Build one blob's STAC item; the result carries it (``item``) to the load stage."""
    with ctx.io.scratch("catalog") as tmp, ctx.io.measure(tmp) as meter:
        item, summary = build_blob_item(ctx.io, p, tmp, ctx.job_id)
    return {**summary, "item": item, "resources": meter.report()}


def plan_item_loads(collection_id: str, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """One load task per ``LOAD_CHUNK_ITEMS`` build tasks, in task order, each naming its range (from the
    outcomes' status alone: the items stay in the build tasks' results until their load task reads them)."""
    done = sorted(o.index for o in succeeded(previous))
    if not done:
        return []
    stage = previous[0].stage
    chunks = [done[i:i + LOAD_CHUNK_ITEMS] for i in range(0, len(done), LOAD_CHUNK_ITEMS)]
    return [{"collection_id": collection_id, "stage": stage, "first": chunk[0], "last": chunk[-1],
             "built": len(chunk)} for chunk in chunks]


def _chunk_items(p: LoadItemsTask, ctx: TaskContext) -> list[dict[str, Any]]:
    """The task's items: read from its range of build results; of several with one id (``a.tif`` and
    ``a.tiff``), the last built wins, once."""
    ranged = p.build_range()
    if ranged is None:  # a task of items (the model holds either a range or items)
        return p.items or []
    items: dict[str, dict[str, Any]] = {}
    for result in ctx.io.stage_results(ctx.job_id, *ranged):
        item = result["item"]
        items.pop(item["id"], None)
        items[item["id"]] = item
    if not items:
        raise TaskError(f"no built items in tasks {p.first}..{p.last} of stage {p.stage}")
    return list(items.values())


class LoadedItems(BaseModel):
    """What a load task leaves: how many items it loaded, created and updated, and their ids."""

    collection_id: str
    loaded: int
    created: int
    updated: int
    created_ids: list[str]
    item_ids: list[str]
    built: int  # build tasks of the range that succeeded


def load_items_task(p: LoadItemsTask, ctx: TaskContext) -> LoadedItems:
    """Upsert a chunk of items with pypgstac's Loader: the collection ensured from the chunk's extent,
    then one bulk load. Safe to repeat (upsert: a repeated chunk rewrites nothing); a failure fails or
    retries the whole chunk, whose items stay in the build tasks' results."""
    items = _chunk_items(p, ctx)
    strays = sorted({i.get("collection") for i in items} - {p.collection_id}, key=str)
    if strays:
        raise TaskError(f"load task for collection {p.collection_id!r} holds items of {strays}")
    catalogue = ctx.io.pgstac()
    ids = [i["id"] for i in items]
    stored = catalogue.stored_ids(p.collection_id, ids)  # before: what this load creates
    catalogue.ensure_collection(_collection_of(p.collection_id, items))
    ctx.io.known_collections.add(p.collection_id)
    loaded = catalogue.bulk_load(items, "upsert")
    created = [i for i in dict.fromkeys(ids) if i not in stored]
    return LoadedItems(collection_id=p.collection_id, loaded=loaded, created=len(created),
                       updated=loaded - len(created), created_ids=created, item_ids=list(dict.fromkeys(ids)),
                       built=p.built if p.built is not None else len(items))


LOAD_ITEMS = Stage("load_items", "stac_load_items", lambda p, prev: plan_item_loads(p.collection_id, prev),
                   f"Upsert the items into pgstac in bulk, {LOAD_CHUNK_ITEMS} per task (pypgstac Loader); each "
                   "task reads its range of built items.",
                   parallelism="one task per chunk of items", tolerates_failures=False, plan_reads_results=False)


def item_reports(built: list[dict[str, Any]], loads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each build task reported, without the item itself, with the action its load took."""
    created = {i for load in loads for i in load["created_ids"]}
    return [{**{k: v for k, v in b.items() if k != "item"},
             "action": b.get("action") or ("created" if b["item_id"] in created else "updated")} for b in built]
