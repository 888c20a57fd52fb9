"""Raster job types: validate, process (validate -> COG -> catalog) for one, a batch, or one huge
raster cut into tiles. One raster = one task per stage; N rasters = N tasks; a huge raster = N tiles.

Validate, COG and catalog read the input over the network with its sidecars (``controller_sources``):
only the COG is written to scratch. Each reports the peak memory and scratch disk it used
(``resources``); a batch never takes a sidecar (``.msk``, ``.aux.xml``, ...) as an input of its own."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from base_controller import JobController, Stage, TaskContext, TaskHandler, TaskOutcome, outcomes_in_order, succeeded
from controller_geo_common import (
    LOAD_ITEMS, RASTER_SUFFIXES, BlobRef, CatalogOptions, CatalogRun, CrsParameter, JobContainer, build_blob_item,
    catalog_blob, fetch, item_reports, links, named_as_blob, raster_limits, upsert_catalog_item,
)
from controller_sources import open_blob
from errors import TaskError
from models import BlobName
from pystac import MediaType
from services_cog import CogOptions, CogProfile, cog_output_name, create_cog
from services_raster import validate_raster
from services_sidecars import is_sidecar_name
from services_stac import file_sha256
from services_mosaic import MEDIA_TYPE_VRT
from services_tiles import TileGrid, TileWindow, assemble_tiles, mosaic_vrt, plan_grid, plan_tiles, process_tile

MAX_BATCH = 10_000
TIFF_HEAD_BYTES = 16  # what services_gdal checks before a remote read (the TIFF signature)


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


class LargeRasterParameters(ProcessRasterParameters):
    """process_large_raster: one raster processed as tiles."""

    tile_size: int = Field(default=4096, ge=512, le=32768, multiple_of=512, description="Tile edge, px.")
    output: Literal["cog", "tiles"] = Field(
        default="cog", description="'cog': one COG, assembled by copying the tiles' compressed blocks; 'tiles': "
        "the tiles stay COGs of their own (one STAC item each) joined by a GDAL VRT mosaic (an asset of each item).")


class CogTask(BlobRef):  # planned with every field set: the defaults never apply
    """Parameters of one create_cog task."""

    output_container: JobContainer
    output_blob: BlobName
    cog_profile: CogProfile = CogProfile.DEFLATE
    target_crs: CrsParameter = None


class TileTask(BlobRef):
    """Parameters of one tile task."""

    tile: TileWindow
    tile_blob: BlobName  # in the payload container (output "cog"), or in output_container (output "tiles")
    output_container: JobContainer | None = None  # set: the tile is an output of its own
    cog_profile: CogProfile = CogProfile.DEFLATE
    target_crs: CrsParameter = None


class AssembleTask(BaseModel):
    """Parameters of the assemble task: the COG from the tiles, or (output "tiles") their mosaic VRT."""

    tile_blobs: list[BlobName]
    output_container: JobContainer
    output_blob: BlobName
    cog_profile: CogProfile = CogProfile.DEFLATE
    target_crs: CrsParameter = None
    output: Literal["cog", "tiles"] = "cog"
    tiles: list[TileWindow] = Field(default_factory=list)  # output "tiles": where each tile sits
    grid: TileGrid | None = None  # output "tiles": the mosaic's grid
    sha256: list[str | None] = Field(default_factory=list)  # output "tiles": each tile's, for its item


class PlanTilesTask(BlobRef):
    """Parameters of the plan_tiles task."""

    tile_size: int
    target_crs: CrsParameter = None


class CatalogOutputTask(CatalogRun):
    """A catalog task of process_large_raster: its COG, or one tile of a tiled output."""

    mosaic_blob: BlobName | None = None  # output "tiles": the VRT joining the tiles, an asset of each item


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


def plan_tiles_task(p: PlanTilesTask, ctx: TaskContext) -> dict[str, Any]:
    """Describe the raster (read in place: header and a few blocks) and cut its output grid into tiles."""
    with ctx.io.scratch("plan") as tmp:
        found = open_blob(ctx.io, p.container, p.blob, tmp)  # the .tif only: tiles read no sidecar either
        limits = raster_limits(ctx.io)
        info = validate_raster(found.source, limits)
        options = CogOptions(target_crs=p.target_crs)
        with named_as_blob(found.source.path, p.container, p.blob):
            grid = plan_grid(found.source, options, limits) if p.target_crs else None
            tiles = plan_tiles(info, p.tile_size, ctx.io.settings.max_tiles_per_job, options, limits, grid)
    grid = grid or TileGrid(width=info.width, height=info.height, crs=info.crs, transform=info.transform)
    return {"width": grid.width, "height": grid.height, "tile_size": p.tile_size, "grid": grid.model_dump(),
            "tiles": [t.model_dump() for t in tiles]}


def tile_task(p: TileTask, ctx: TaskContext) -> dict[str, Any]:
    """Read one window of the source (remotely with a SAS when possible: GDAL may then reach that one blob
    URL and nothing else), write it as a COG tile in the final profile, store it."""
    with ctx.io.scratch("tile") as tmp, ctx.io.measure(tmp) as meter:
        sas = ctx.io.rasters.read_sas_url(p.container, p.blob)
        remote = {}
        if sas:
            source: Any = f"/vsicurl/{sas}"
            remote = {"remote_url": ctx.io.rasters.url(p.container, p.blob),
                      "head": ctx.io.rasters.head_bytes(p.container, p.blob, TIFF_HEAD_BYTES)}
        else:
            source = fetch(ctx.io, p.container, p.blob, tmp)[0]
        options = CogOptions(cog_profile=p.cog_profile, target_crs=p.target_crs, tmp_dir=str(tmp))
        with named_as_blob(source, p.container, p.blob):  # no SAS in errors
            result = process_tile(source, p.tile, tmp / "tile.tif", options, raster_limits(ctx.io), **remote)
        if p.output_container:
            sha256 = file_sha256(tmp / "tile.tif")
            ctx.io.rasters.ensure_container(p.output_container)
            ctx.io.rasters.upload(p.output_container, p.tile_blob, tmp / "tile.tif", MediaType.COG)
        else:
            sha256 = None
            ctx.io.intermediates.upload(p.tile_blob, tmp / "tile.tif")
    return {"tile_blob": p.tile_blob, "index": p.tile.index, "bounds": list(result.bounds), "size": result.file_size,
            "overview_levels": result.overview_levels, "sha256": sha256, "resources": meter.report()}


def assemble_task(p: AssembleTask, ctx: TaskContext) -> dict[str, Any]:
    """Join the tiles into one COG by copying their compressed blocks (output "cog"), or write the VRT
    mosaic of the tile COGs (output "tiles"); upload it."""
    if p.output == "tiles":
        return _mosaic_task(p, ctx)
    with ctx.io.scratch("assemble") as tmp, ctx.io.measure(tmp) as meter:
        paths = [tmp / f"tile{i:05d}.tif" for i in range(len(p.tile_blobs))]
        for blob, path in zip(p.tile_blobs, paths, strict=True):
            ctx.io.intermediates.download(blob, path)
        options = CogOptions(cog_profile=p.cog_profile, target_crs=p.target_crs, tmp_dir=str(tmp))
        result = assemble_tiles(paths, tmp / "output.tif", options, raster_limits(ctx.io))
        sha256 = file_sha256(tmp / "output.tif")
        ctx.io.rasters.ensure_container(p.output_container)
        uploaded = ctx.io.rasters.upload(p.output_container, p.output_blob, tmp / "output.tif", MediaType.COG)
    return {"output_container": p.output_container, "output_blob": p.output_blob, "size": uploaded.size,
            "tiles": len(p.tile_blobs), "sha256": sha256, **links(ctx.io, p.output_container, p.output_blob),
            **result.model_dump(mode="json", exclude={"dst_path", "in_memory", "gdal_cachemax_mb", "elapsed_s"}),
            "resources": meter.report()}


def _mosaic_task(p: AssembleTask, ctx: TaskContext) -> dict[str, Any]:
    """The VRT of a tiled output, next to its tiles (hrefs relative to it); band facts from the first tile."""
    folder = PurePosixPath(p.output_blob).parent
    with ctx.io.scratch("mosaic") as tmp:
        first = tmp / "first.tif"
        ctx.io.rasters.download(p.output_container, p.tile_blobs[0], first)
        hrefs = [str(PurePosixPath(b).relative_to(folder)) for b in p.tile_blobs]
        (tmp / "mosaic.vrt").write_text(mosaic_vrt(first, hrefs, p.tiles, p.grid, raster_limits(ctx.io)))
        uploaded = ctx.io.rasters.upload(p.output_container, p.output_blob, tmp / "mosaic.vrt", MEDIA_TYPE_VRT)
    return {"output_container": p.output_container, "output_blob": p.output_blob, "size": uploaded.size,
            "media_type": MEDIA_TYPE_VRT, "tiles": [{"blob": b, "sha256": h} for b, h in
                                                    zip(p.tile_blobs, p.sha256 or [None] * len(p.tile_blobs),
                                                        strict=True)],
            **links(ctx.io, p.output_container, p.output_blob)}


def catalog_output_task(p: CatalogOutputTask, ctx: TaskContext) -> dict[str, Any]:
    """Catalogue the COG, or one tile of a tiled output with the mosaic VRT as an asset of its item."""
    with ctx.io.scratch("catalog") as tmp, ctx.io.measure(tmp) as meter:
        item, summary = build_blob_item(ctx.io, p, tmp, ctx.job_id)
        if p.mosaic_blob:
            item["assets"]["mosaic"] = {"href": ctx.io.rasters.url(p.container, p.mosaic_blob), "type": MEDIA_TYPE_VRT,
                                        "title": "Mosaic of every tile (GDAL VRT, tiles by relative href)",
                                        "roles": ["data", "mosaic"]}
        action = upsert_catalog_item(ctx.io, p.collection_id, item)
    return {**summary, "action": action, "resources": meter.report()}


HANDLERS = (
    TaskHandler("raster_validate", BlobRef, validate_task, "Validate a raster blob."),
    TaskHandler("raster_create_cog", CogTask, cog_task, "Convert a raster blob to a COG.", time_limit_s=1800),
    TaskHandler("stac_catalog", CatalogRun, catalog_task, "Catalogue a raster blob in pgstac."),
    TaskHandler("raster_plan_tiles", PlanTilesTask, plan_tiles_task, "Cut a raster into tile windows."),
    TaskHandler("raster_tile", TileTask, tile_task, "Copy one window of a raster to a tile.", time_limit_s=1800),
    TaskHandler("raster_assemble", AssembleTask, assemble_task, "Join tiles into one COG (copying their blocks) "
                "or a VRT mosaic.", time_limit_s=3600, version=2),
    TaskHandler("raster_catalog_output", CatalogOutputTask, catalog_output_task, "Catalogue a large raster's COG, "
                "or one tile of a tiled output."),
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


def _job_type(p: Any) -> str:
    """The job type whose parameters ``p`` are (each raster job type has its own parameters model)."""
    return next((c.job_type for c in JOB_TYPES if type(p) is c.parameters_model), "unknown")


def _batch_inputs(p: BatchParameters, previous: list[TaskOutcome], io: Any) -> list[dict[str, Any]]:
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


def _plan(p: LargeRasterParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    return [{"container": p.container, "blob": p.blob, "tile_size": p.tile_size, "target_crs": p.target_crs}]


def _tiles(p: LargeRasterParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    (plan,) = succeeded(previous)
    output = {"output_container": p.output_container} if p.output == "tiles" else {}
    return [{"container": p.container, "blob": p.blob, "tile": tile, "tile_blob": _tile_blob(p, tile["index"]),
             "cog_profile": p.cog_profile.value, "target_crs": p.target_crs, **output}
            for tile in plan.result["tiles"]]


def _assemble(p: LargeRasterParameters, previous: list[TaskOutcome], io: Any) -> list[dict[str, Any]]:
    """One task: the COG, or the mosaic VRT of a tiled output (the plan's grid read back from its task)."""
    tiles = outcomes_in_order(succeeded(previous))
    task = {"tile_blobs": [o.result["tile_blob"] for o in tiles], "output_container": p.output_container,
            "output_blob": cog_output_name(p.blob, p.cog_options()), "cog_profile": p.cog_profile.value,
            "target_crs": p.target_crs}
    if p.output == "tiles":
        plan = _plan_result(p, tiles, io)
        task.update(output="tiles", output_blob=f"{_tiles_folder(p)}/mosaic.vrt", grid=plan["grid"],
                    tiles=[plan["tiles"][o.result["index"]] for o in tiles], sha256=[o.result["sha256"] for o in tiles])
    return [task]


def _plan_result(p: LargeRasterParameters, tiles: list[TaskOutcome], io: Any) -> dict[str, Any]:
    """The plan task's result (its grid and windows), recomputed: the plan is deterministic."""
    with io.scratch("plan") as tmp:
        found = open_blob(io, p.container, p.blob, tmp)
        limits = raster_limits(io)
        info = validate_raster(found.source, limits)
        options = CogOptions(target_crs=p.target_crs)
        grid = (plan_grid(found.source, options, limits) if p.target_crs else
                TileGrid(width=info.width, height=info.height, crs=info.crs, transform=info.transform))
        windows = plan_tiles(info, p.tile_size, None, options, limits, grid)
    if len(windows) != len(tiles):
        raise TaskError(f"{p.container}/{p.blob} changed while it was tiled: {len(windows)} tiles now, "
                        f"{len(tiles)} made")
    return {"grid": grid.model_dump(), "tiles": [w.model_dump() for w in windows]}


def _tiles_folder(p: LargeRasterParameters) -> str:
    """Where a tiled output's COGs and mosaic go: next to the single COG's name, one folder per tile size."""
    return f"{PurePosixPath(cog_output_name(p.blob, p.cog_options())).with_suffix('')}_tiles{p.tile_size}"


def _tile_blob(p: LargeRasterParameters, index: int) -> str:
    if p.output == "tiles":
        return f"{_tiles_folder(p)}/tile-{index:05d}.tif"
    stem = PurePosixPath(cog_output_name(p.blob, p.cog_options())).with_suffix("")
    return f"tiles/{p.container}/{stem}/tile-{p.tile_size}-{index:05d}.tif"


def _catalog_large(p: LargeRasterParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """The COG's catalog task, or one per tile of a tiled output (each with the mosaic as an asset)."""
    if p.output == "cog":
        return _catalog_outputs(p, previous)
    (mosaic,) = (o.result for o in succeeded(previous))
    return [{"container": mosaic["output_container"], "blob": tile["blob"], "collection_id": p.collection_id,
             "datetime": p.datetime.isoformat() if p.datetime else None, "job_type": "process_large_raster",
             "sha256": tile["sha256"], "source_container": p.container, "source_blob": p.blob,
             "mosaic_blob": mosaic["output_blob"]} for tile in mosaic["tiles"]]


# ------------------------------------------------------------------ aggregation
def _by_stage(outcomes: dict[int, list[TaskOutcome]], stage: int) -> list[dict[str, Any]]:
    return [o.result for o in outcomes_in_order(outcomes.get(stage, []))]


def _validated(p: Any, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
    return {"raster": _by_stage(outcomes, 1)[0]}


def _processed(p: Any, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
    validated, cogs, built, loads = (_by_stage(outcomes, s) for s in (1, 2, 3, 4))
    items = item_reports(built, loads)  # process_raster catalogues in stage 3; a batch loads in stage 4
    rasters = [{"input": v, "cog": c, "item": i} for v, c, i in zip(validated, cogs, items, strict=True)]
    return {"count": len(cogs), "rasters": rasters,
            "outputs": [{"container": c["output_container"], "blob": c["output_blob"], "url": c["url"]}
                        for c in cogs]}


def _processed_large(p: Any, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
    plan, tiles, (made,), items = (_by_stage(outcomes, s) for s in (1, 2, 3, 4))
    summary = {"tiles": len(tiles), "tile_size": plan[0]["tile_size"], "output": p.output}
    if p.output == "tiles":
        container = made["output_container"]
        return {**summary, "mosaic": made, "items": items,
                "outputs": [{"container": container, "blob": made["output_blob"], "url": made["url"]},
                            *({"container": container, "blob": i["blob"], "url": i.get("url")} for i in items)]}
    (item,) = items
    return {**summary, "cog": made, "item": item,
            "outputs": [{"container": made["output_container"], "blob": made["output_blob"], "url": made["url"]}]}


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
    JobController("process_large_raster", "One huge raster: plan tiles, write each tile as a COG in parallel "
                  "(windowed reads), join them into one COG by copying their blocks (or keep them, with a VRT "
                  "mosaic), catalogue.", LargeRasterParameters,
                  (Stage("plan_tiles", "raster_plan_tiles", _plan, "Cut the output grid into tile windows.",
                         parallelism="one task"),
                   Stage("process_tiles", "raster_tile", _tiles, "Write each window as a COG tile (final "
                         "compression, its own overviews).", parallelism="one task per tile"),
                   Stage("assemble", "raster_assemble", _assemble, "Join the tiles into one COG by copying their "
                         "compressed blocks, or write their VRT mosaic.", plan_uses_io=True, parallelism="one task"),
                   Stage("catalog", "raster_catalog_output", _catalog_large, "Catalogue the COG, or each tile.",
                         parallelism="one task per input")), _processed_large),
)
