"""Container job types: inventory a container, catalogue one file, sync a container into STAC.

Sidecars (``scene.tif.msk``, ``.ovr``, ``.aux.xml``, world files, ``.prj``) are companions of their raster:
the inventory lists them under it, and sync never catalogues one as an item of its own (a ``.msk`` or
``.ovr`` is a TIFF, so "by content" alone would)."""
from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from base_controller import (
    JobController, Stage, TaskContext, TaskHandler, TaskIO, TaskOutcome, outcomes_in_order, succeeded,
)
from controller_geo_common import (
    LOAD_ITEMS, RASTER_SUFFIXES, CatalogOptions, CatalogRun, CatalogTask, JobContainer, LoadItemsTask, SettingsDefaults,
    build_item_task, load_items_task,
)
from errors import InputNotFoundError, NotFoundError, TaskError
from models import BlobInfo
from services_sidecars import companions, is_sidecar_name, sidecar_names

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TIFF_CONTENT_TYPES = ("image/tiff", "image/geotiff")


class ListParameters(SettingsDefaults):
    """list_container: what to inventory."""

    model_config = ConfigDict(extra="forbid")
    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {"container": "input_container"}
    container: JobContainer
    prefix: str | None = Field(default=None, max_length=1024, description="Only blobs under this prefix.")
    suffixes: list[str] | None = Field(default=None, max_length=50,
                                       description="Only blobs ending with one of these (case-insensitive).")

    @field_validator("suffixes")
    @classmethod
    def _lower(cls, value: list[str] | None) -> list[str] | None:
        return sorted({s.lower() for s in value}) if value else None


class CatalogFileParameters(CatalogTask):
    """catalog_file: one blob into one collection."""


class SyncParameters(CatalogOptions):
    """sync_container: every geospatial blob of a container (under a prefix) into one collection."""

    model_config = ConfigDict(extra="forbid")
    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {**CatalogOptions.SETTINGS_DEFAULTS, "container": "input_container"}
    container: JobContainer
    prefix: str | None = Field(default=None, max_length=1024)


class Inventory(BaseModel):
    """What a container_inventory task leaves (the list_container job's result)."""

    container: str
    prefix: str | None
    count: int
    total_bytes: int
    by_extension: dict[str, int]
    sidecar_count: int
    blobs: list[dict[str, Any]]  # name, size, last_modified, content_type (and sidecars, when it has some)


class GeospatialListing(BaseModel):
    """What a container_list_geospatial task leaves: the GeoTIFFs, and the size of each with no sidecar
    beside it (``alone``: its build task then needs no listing of its own)."""

    container: str
    blobs: list[str]
    count: int
    alone: dict[str, int]


def _listing(io: TaskIO, container: str, prefix: str | None) -> list[BlobInfo]:
    try:
        return list(io.rasters.list(container, prefix))
    except NotFoundError as exc:
        raise InputNotFoundError(exc.message) from None


def inventory_task(p: ListParameters, ctx: TaskContext) -> Inventory:
    """Count, size and list the container's blobs (large results are spilled to a blob by the engine).

    Every blob is counted; a raster's sidecars are listed under it (``sidecars``), not as entries of their
    own (``sidecar_count`` says how many there were)."""
    listed = _listing(ctx.io, p.container, p.prefix)
    grouped = companions([b.name for b in listed])
    attached = {name for names in grouped.values() for name in names}
    blobs = [b for b in listed if not p.suffixes or b.name.lower().endswith(tuple(p.suffixes))]
    by_ext = Counter(PurePosixPath(b.name).suffix.lower() or "(none)" for b in blobs)
    entries = [{"name": b.name, "size": b.size, "last_modified": b.last_modified.isoformat(),
                "content_type": b.content_type, **({"sidecars": grouped[b.name]} if b.name in grouped else {})}
               for b in blobs if b.name not in attached]
    return Inventory(container=p.container, prefix=p.prefix, count=len(blobs), total_bytes=sum(b.size for b in blobs),
                     by_extension=dict(sorted(by_ext.items())),
                     sidecar_count=sum(1 for b in blobs if b.name in attached), blobs=entries)


def _is_geospatial(io: TaskIO, blob: BlobInfo) -> bool:
    """A GeoTIFF/COG by extension, by content type, or by its first bytes (TIFF signature); never a sidecar."""
    if is_sidecar_name(blob.name):
        return False
    if blob.name.lower().endswith(RASTER_SUFFIXES):
        return True
    if (blob.content_type or "").lower().startswith(TIFF_CONTENT_TYPES):
        return True
    return blob.size >= 8 and io.rasters.head_bytes(blob.container, blob.name, 4) in TIFF_MAGIC


def list_geospatial_task(p: SyncParameters, ctx: TaskContext) -> GeospatialListing:
    """The container's GeoTIFFs (by extension and by content), with the size of each that has no sidecar
    beside it (``alone``: its build task then needs no listing of its own)."""
    listed = _listing(ctx.io, p.container, p.prefix)
    present = {b.name for b in listed}
    blobs = [b for b in listed if _is_geospatial(ctx.io, b)]
    alone = {b.name: b.size for b in blobs if not any(n in present for n in sidecar_names(b.name))}
    return GeospatialListing(container=p.container, blobs=[b.name for b in blobs], count=len(blobs), alone=alone)


HANDLERS = (
    TaskHandler("container_inventory", ListParameters, inventory_task, "List a container's blobs."),
    TaskHandler("container_list_geospatial", SyncParameters, list_geospatial_task, "Find a container's GeoTIFFs."),
    TaskHandler("stac_build_item", CatalogRun, build_item_task, "Build a raster blob's STAC item (no write).",
                tasks_per_message=8),
    TaskHandler("stac_load_items", LoadItemsTask, load_items_task, "Upsert a chunk of STAC items in bulk (pypgstac)."),
)


def _catalog_listed(p: SyncParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    (listing,) = succeeded(previous)
    if not listing.result["blobs"]:
        raise TaskError(f"no GeoTIFFs in {p.container}/{p.prefix or ''}")
    alone = listing.result.get("alone", {})
    return [{"container": p.container, "blob": name, "collection_id": p.collection_id, "job_type": "sync_container",
             "datetime": p.datetime.isoformat() if p.datetime else None,
             **({"listed_size": alone[name]} if name in alone else {})} for name in listing.result["blobs"]]


def _synced(p: SyncParameters, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
    """From the listing and the loads only: the per-file items stay in their build tasks (reading them all
    again would be the whole catalogue in one invocation); the failed builds are listed by the engine."""
    (listing,) = outcomes.get(1, [])
    loads = [o.result for o in outcomes_in_order(outcomes.get(3, []))]
    created = sum(load["created"] for load in loads)
    loaded = sum(load["loaded"] for load in loads)
    return {"container": p.container, "collection_id": p.collection_id, "listed": listing.result["count"],
            "created": created, "updated": loaded - created,
            "failed": listing.result["count"] - sum(load["built"] for load in loads), "loaded": loaded,
            "items": list(dict.fromkeys(i for load in loads for i in load["item_ids"]))}


JOB_TYPES = (
    JobController("list_container", "Inventory a container: count, bytes, extensions, blobs.", ListParameters,
                  (Stage("inventory", "container_inventory",
                         lambda p, prev: [p.model_dump(mode="json")], "List the blobs.",
                         parallelism="one task"),),
                  lambda p, o: o[1][0].result),
    JobController("catalog_file", "Catalogue one raster blob as a STAC item.", CatalogFileParameters,
                  (Stage("catalog", "stac_catalog", lambda p, prev: [{**p.model_dump(mode="json"),
                                                                      "job_type": "catalog_file"}],
                         "Catalogue the blob.", parallelism="one task"),),
                  lambda p, o: {"item": o[1][0].result}),
    JobController("sync_container", "Catalogue every GeoTIFF of a container: one task per file builds its item, "
                  "then the items are upserted in bulk.", SyncParameters,
                  (Stage("list", "container_list_geospatial", lambda p, prev: [p.model_dump(mode="json")],
                         "Find the GeoTIFFs.", parallelism="one task"),
                   Stage("build_items", "stac_build_item", _catalog_listed, "Build each GeoTIFF's STAC item.",
                         parallelism="one task per input"),
                   LOAD_ITEMS),
                  _synced, tolerated_failure_fraction=0.999, outcome_stages=(1, 3)),
)
