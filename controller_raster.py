"""Raster job types: validate, process (validate -> COG -> catalog) for one or a batch (one huge raster
cut into tiles: ``controller_tiles``). One raster = one task per stage; N rasters = N tasks.

Validate, COG and catalog read the input over the network with its sidecars (``controller_sources``):
only the COG is written to scratch. Each reports the peak memory and scratch disk it used
(``resources``); a batch never takes a sidecar (``.msk``, ``.aux.xml``, ...) as an input of its own."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from base_controller import (
    JobController, Stage, TaskContext, TaskHandler, TaskIO, TaskOutcome, outcomes_in_order, succeeded,
)
from controller_geo_common import (
    LOAD_ITEMS, RASTER_SUFFIXES, BlobRef, CatalogOptions, CatalogRun, CrsParameter, JobContainer, catalog_blob,
    item_reports, links, raster_limits,
)
from controller_sources import open_blob
from errors import TaskError
from models import BlobName
from pystac import MediaType
from services_cog import create_cog
from services_cog_options import CogOptions, CogProfile, cog_output_name
from services_raster import validate_raster
from services_sidecars import is_sidecar_name
from services_stac import file_sha256

MAX_BATCH = 10_000


class CogJobOptions(CatalogOptions):
    """What every COG-producing job takes besides its inputs."""

    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {**CatalogOptions.SETTINGS_DEFAULTS,
                                                   "output_container": "output_container"}
    output_container: JobContainer = Field(description="Where COGs go (default: OUTPUT_CONTAINER).")
    cog_profile: CogProfile = Field(default=CogProfile.DEFLATE, description="Compression profile.")
    target_crs: CrsParameter = Field(default=None, description="Reproject to this CRS: an authority code "
                                     "(e.g. 'EPSG:3857'), WKT or PROJJSON; never a path or URL.")

    def cog_options(self) -> CogOptions:
        """The COG service's options (validates target_crs)."""
        return CogOptions(cog_profile=self.cog_profile, target_crs=self.target_crs)


class ProcessRasterParameters(BlobRef, CogJobOptions):
    """process_raster: one raster."""

    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {**BlobRef.SETTINGS_DEFAULTS, **CogJobOptions.SETTINGS_DEFAULTS}


class BatchParameters(CogJobOptions):
    """process_raster_batch: a list of blobs, or every raster under a prefix."""

    model_config = ConfigDict(extra="forbid")
    SETTINGS_DEFAULTS: ClassVar[dict[str, str]] = {**BlobRef.SETTINGS_DEFAULTS, **CogJobOptions.SETTINGS_DEFAULTS}
    container: JobContainer
    blobs: list[BlobName] | None = Field(default=None, max_length=MAX_BATCH)
    prefix: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _one_source(self) -> "BatchParameters":
        if (self.blobs is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'blobs' (a list) or 'prefix'")
        if self.blobs is not None and not self.blobs:
            raise ValueError("'blobs' is empty")
        return self


class CogTask(BlobRef):  # planned with every field set: the defaults never apply
    """Parameters of one create_cog task."""

    output_container: JobContainer
    output_blob: BlobName
    cog_profile: CogProfile = CogProfile.DEFLATE
    target_crs: CrsParameter = None


# ------------------------------------------------------------------ handlers
def validate_task(p: BlobRef, ctx: TaskContext) -> dict[str, Any]:
    """Validate and describe the blob, read in place (header and a few blocks) with its sidecars."""
    with ctx.io.scratch("validate") as tmp, ctx.io.measure(tmp) as meter:
        found = open_blob(ctx.io, p.container, p.blob, tmp)
        info = validate_raster(found.source, raster_limits(ctx.io), sidecars=found.sidecars)
    described = info.model_dump(mode="json", include={"crs", "epsg", "bounds", "bounds_wgs84", "width", "height",
                                                      "count", "dtypes", "nodata", "is_cog", "sidecars"})
    return {"container": p.container, "blob": p.blob, "size": found.info.size,
            "last_modified": found.info.last_modified.isoformat(), **links(ctx.io, p.container, p.blob),
            **described, "validity": info.validity, "warnings": found.notes + info.warnings,
            "input": found.describe(), "resources": meter.report()}


def cog_task(p: CogTask, ctx: TaskContext) -> dict[str, Any]:
    """Convert the blob (read block by block over the network, with its sidecars) to a validated COG in
    scratch, upload it under its deterministic name."""
    with ctx.io.scratch("cog") as tmp, ctx.io.measure(tmp) as meter:
        found = open_blob(ctx.io, p.container, p.blob, tmp)
        options = CogOptions(cog_profile=p.cog_profile, target_crs=p.target_crs, tmp_dir=str(tmp))
        result = create_cog(found.source, tmp / "output.tif", options, raster_limits(ctx.io), sidecars=found.sidecars)
        sha256 = file_sha256(tmp / "output.tif")
        ctx.io.rasters.ensure_container(p.output_container)
        uploaded = ctx.io.rasters.upload(p.output_container, p.output_blob, tmp / "output.tif", MediaType.COG)
    return {"source": f"{p.container}/{p.blob}", "source_container": p.container, "source_blob": p.blob,
            "output_container": p.output_container, "output_blob": p.output_blob, "size": uploaded.size,
            "sha256": sha256, **links(ctx.io, p.output_container, p.output_blob),
            **result.model_dump(mode="json", exclude={"dst_path", "in_memory", "gdal_cachemax_mb", "elapsed_s"}),
            "input": found.describe(), "resources": meter.report()}


def catalog_task(p: CatalogRun, ctx: TaskContext) -> dict[str, Any]:
    """Catalogue one blob in pgstac (read in place; its item names the job that made it)."""
    with ctx.io.scratch("catalog") as tmp, ctx.io.measure(tmp) as meter:
        summary = catalog_blob(ctx.io, p, tmp, ctx.job_id)
    return {**summary, "resources": meter.report()}


HANDLERS = (
    TaskHandler("raster_validate", BlobRef, validate_task, "Validate a raster blob."),
    TaskHandler("raster_create_cog", CogTask, cog_task, "Convert a raster blob to a COG.", time_limit_s=1800),
    TaskHandler("stac_catalog", CatalogRun, catalog_task, "Catalogue a raster blob in pgstac."),
)


# ------------------------------------------------------------------ planners
def _one(p: BlobRef, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    return [{"container": p.container, "blob": p.blob}]


def _cogs_for(p: CogJobOptions, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """One COG task per validated raster."""
    return [{"container": o.result["container"], "blob": o.result["blob"], "output_container": p.output_container,
             "output_blob": cog_output_name(o.result["blob"], p.cog_options()), "cog_profile": p.cog_profile.value,
             "target_crs": p.target_crs} for o in succeeded(previous)]


def _catalog_outputs(p: CatalogOptions, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """One catalog task per COG written, naming the job type and the COG's source (its provenance)."""
    return [{"container": o.result["output_container"], "blob": o.result["output_blob"],
             "collection_id": p.collection_id, "datetime": p.datetime.isoformat() if p.datetime else None,
             "job_type": _job_type(p), "sha256": o.result.get("sha256"),
             "source_container": o.result.get("source_container", getattr(p, "container", None)),
             "source_blob": o.result.get("source_blob", getattr(p, "blob", None))}
            for o in succeeded(previous)]


def _job_type(p: BaseModel) -> str:
    """The job type whose parameters ``p`` are (each raster job type has its own parameters model)."""
    return next((c.job_type for c in JOB_TYPES if type(p) is c.parameters_model), "unknown")


def _batch_inputs(p: BatchParameters, previous: list[TaskOutcome], io: TaskIO) -> list[dict[str, Any]]:
    """The batch's blobs: the list given, or every raster under the prefix (listed once, then fixed).
    Sidecars (``scene.tif.msk``, ``scene.tif.aux.xml``, ...) go with their raster, never as inputs."""
    if p.blobs is not None:
        names = [n for n in dict.fromkeys(p.blobs) if not is_sidecar_name(n)]
        if not names:
            raise TaskError("'blobs' names only sidecar files (.msk, .ovr, .aux.xml, world files, .prj): give "
                            "their rasters")
    else:
        names = [b.name for b in io.rasters.list(p.container, p.prefix) if b.name.lower().endswith(RASTER_SUFFIXES)]
        if not names:
            raise TaskError(f"no rasters ({', '.join(RASTER_SUFFIXES)}) under {p.container}/{p.prefix}")
        if len(names) > MAX_BATCH:
            raise TaskError(f"{len(names)} rasters under the prefix; a batch takes at most {MAX_BATCH}")
    return [{"container": p.container, "blob": name} for name in names]


# ------------------------------------------------------------------ aggregation
def _by_stage(outcomes: dict[int, list[TaskOutcome]], stage: int) -> list[dict[str, Any]]:
    return [o.result for o in outcomes_in_order(outcomes.get(stage, []))]


def _validated(p: BlobRef, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
    return {"raster": _by_stage(outcomes, 1)[0]}


def _processed(p: CogJobOptions, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
    validated, cogs, built, loads = (_by_stage(outcomes, s) for s in (1, 2, 3, 4))
    items = item_reports(built, loads)  # process_raster catalogues in stage 3; a batch loads in stage 4
    rasters = [{"input": v, "cog": c, "item": i} for v, c, i in zip(validated, cogs, items, strict=True)]
    return {"count": len(cogs), "rasters": rasters,
            "outputs": [{"container": c["output_container"], "blob": c["output_blob"], "url": c["url"]}
                        for c in cogs]}


PER_INPUT = "one task per input"
VALIDATE = Stage("validate", "raster_validate", _one, "Validate the raster.", parallelism="one task")
CREATE_COG = Stage("create_cog", "raster_create_cog", _cogs_for, "Write a Cloud-Optimized GeoTIFF per raster.",
                   parallelism=PER_INPUT)
CATALOG_OUTPUTS = Stage("catalog", "stac_catalog", _catalog_outputs, "Catalogue each COG in pgstac.",
                        parallelism=PER_INPUT)
BUILD_ITEMS = Stage("build_items", "stac_build_item", _catalog_outputs, "Build each COG's STAC item.",
                    parallelism=PER_INPUT)

JOB_TYPES = (
    JobController("validate_raster", "Validate one raster: CRS, bounds, size, bands, COG or not.", BlobRef,
                  (VALIDATE,), _validated),
    JobController("process_raster", "One raster: validate, convert to COG, catalogue in STAC.",
                  ProcessRasterParameters, (VALIDATE, CREATE_COG, CATALOG_OUTPUTS), _processed),
    JobController("process_raster_batch", "N rasters (a list or a prefix): N tasks per stage, items upserted in bulk.",
                  BatchParameters,
                  (Stage("validate", "raster_validate", _batch_inputs, "Validate every raster.", plan_uses_io=True,
                          parallelism=PER_INPUT),
                   CREATE_COG, BUILD_ITEMS, LOAD_ITEMS), _processed),
)
