"""process_large_raster: one huge raster cut into tiles, each tile a task (in parallel, on any host).

plan_tiles (1) -> process_tiles (one per tile) -> assemble (1) -> catalog (1, or one per tile; the
catalog task of an assembled COG then deletes its intermediate tiles). Each tile
task reads only its window of the source (GDAL ``/vsicurl/`` with a read SAS: that one blob URL and
nothing else), reprojects it when asked, and writes it as a COG in the final profile with its own
overviews (``services_tiles``). With ``output: "cog"`` the assemble task joins them into one COG by
copying their compressed blocks and computing only the overview levels coarser than a tile
(``services_assemble``): the same COG a single ``create_cog`` writes. With ``output: "tiles"`` the tiles
are outputs of their own, next to a GDAL VRT that joins them by relative href, and each tile gets a STAC
item carrying the VRT as its ``mosaic`` asset.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field
from pystac import MediaType

from base_controller import JobController, Stage, TaskContext, TaskHandler, TaskOutcome, outcomes_in_order, succeeded
from controller_geo_common import (
    BlobRef, CatalogRun, CrsParameter, JobContainer, build_blob_item, fetch, links, named_as_blob, raster_limits,
    upsert_catalog_item,
)
from controller_raster import ProcessRasterParameters
from controller_sources import open_blob
from errors import TaskError
from models import BlobName
from services_cog_options import CogOptions, CogProfile, cog_output_name
from services_mosaic import MEDIA_TYPE_VRT
from services_raster import validate_raster
from services_stac import file_sha256
from services_tiles import TileGrid, TileWindow, assemble_tiles, mosaic_vrt, plan_grid, plan_tiles, process_tile

JOB_TYPE = "process_large_raster"
TIFF_HEAD_BYTES = 16  # what services_gdal checks before a remote read (the TIFF signature)
# Tiles run side by side (a host takes up to host.json's batchSize messages at once): one compression thread
# each keeps every core busy without threads competing (more threads cost a quarter more CPU per tile).
TILE_THREADS = "1"


# ------------------------------------------------------------------ parameters
class LargeRasterParameters(ProcessRasterParameters):
    """process_large_raster: one raster processed as tiles."""

    tile_size: int = Field(default=4096, ge=512, le=32768, multiple_of=512, description="Tile edge, px.")
    output: Literal["cog", "tiles"] = Field(
        default="cog", description="'cog': one COG, assembled by copying the tiles' compressed blocks; 'tiles': "
        "the tiles stay COGs of their own (one STAC item each) joined by a GDAL VRT mosaic (an asset of each item).")


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
    intermediate_blobs: list[BlobName] = Field(default_factory=list, max_length=100_000,
                                               description="the tiles the COG was assembled from: deleted "
                                                           "once it is catalogued")


class TilePlan(BaseModel):
    """What the plan_tiles task leaves: the output grid and its tiles."""

    width: int
    height: int
    tile_size: int
    grid: TileGrid
    tiles: list[TileWindow]


# ------------------------------------------------------------------ handlers
def plan_tiles_task(p: PlanTilesTask, ctx: TaskContext) -> TilePlan:
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
    return TilePlan(width=grid.width, height=grid.height, tile_size=p.tile_size, grid=grid, tiles=tiles)


def tile_task(p: TileTask, ctx: TaskContext) -> dict[str, Any]:
    """Read one window of the source (remotely with a SAS when possible: GDAL may then reach that one blob
    URL and nothing else), write it as a COG tile in the final profile, store it."""
    with ctx.io.scratch("tile") as tmp, ctx.io.measure(tmp) as meter:
        sas = ctx.io.rasters.read_sas_url(p.container, p.blob)
        source: str | Path
        remote_url, head = None, None
        if sas:
            source = f"/vsicurl/{sas}"
            remote_url = ctx.io.rasters.url(p.container, p.blob)
            head = ctx.io.rasters.head_bytes(p.container, p.blob, TIFF_HEAD_BYTES)
        else:
            source = fetch(ctx.io, p.container, p.blob, tmp)[0]
        options = CogOptions(cog_profile=p.cog_profile, target_crs=p.target_crs, tmp_dir=str(tmp),
                             threads=TILE_THREADS)
        with named_as_blob(source, p.container, p.blob):  # no SAS in errors
            result = process_tile(source, p.tile, tmp / "tile.tif", options, raster_limits(ctx.io),
                                  remote_url=remote_url, head=head)
        if p.output_container:
            sha256 = file_sha256(tmp / "tile.tif")
            ctx.io.rasters.ensure_container(p.output_container)
            ctx.io.rasters.upload(p.output_container, p.tile_blob, tmp / "tile.tif", MediaType.COG)
        else:
            sha256 = None
            ctx.io.intermediates.upload(p.tile_blob, tmp / "tile.tif")
    return {"tile_blob": p.tile_blob, "index": p.tile.index, "tile": p.tile.model_dump(),
            "grid": result.grid.model_dump(), "bounds": list(result.bounds), "size": result.file_size,
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
            "tiles": len(p.tile_blobs), "tile_blobs": p.tile_blobs, "sha256": sha256,
            **links(ctx.io, p.output_container, p.output_blob),
            **result.model_dump(mode="json", exclude={"dst_path", "in_memory", "gdal_cachemax_mb", "elapsed_s"}),
            "resources": meter.report()}


def _mosaic_task(p: AssembleTask, ctx: TaskContext) -> dict[str, Any]:
    """The VRT of a tiled output, next to its tiles (hrefs relative to it); band facts from the first tile."""
    folder = PurePosixPath(p.output_blob).parent
    if p.grid is None:  # the planner of a tiled output always names it
        raise TaskError("a mosaic task needs the tiles' grid")
    with ctx.io.scratch("mosaic") as tmp, ctx.io.measure(tmp) as meter:
        first = tmp / "first.tif"
        ctx.io.rasters.download(p.output_container, p.tile_blobs[0], first)
        hrefs = [str(PurePosixPath(b).relative_to(folder)) for b in p.tile_blobs]
        (tmp / "mosaic.vrt").write_text(mosaic_vrt(first, hrefs, p.tiles, p.grid, raster_limits(ctx.io)))
        uploaded = ctx.io.rasters.upload(p.output_container, p.output_blob, tmp / "mosaic.vrt", MEDIA_TYPE_VRT)
    return {"output_container": p.output_container, "output_blob": p.output_blob, "size": uploaded.size,
            "media_type": MEDIA_TYPE_VRT, "tiles": [{"blob": b, "sha256": h} for b, h in
                                                    zip(p.tile_blobs, p.sha256 or [None] * len(p.tile_blobs),
                                                        strict=True)],
            **links(ctx.io, p.output_container, p.output_blob), "resources": meter.report()}


def catalog_output_task(p: CatalogOutputTask, ctx: TaskContext) -> dict[str, Any]:
    """Catalogue the COG, or one tile of a tiled output with the mosaic VRT as an asset of its item."""
    with ctx.io.scratch("catalog") as tmp, ctx.io.measure(tmp) as meter:
        item, summary = build_blob_item(ctx.io, p, tmp, ctx.job_id)
        if p.mosaic_blob:
            item["assets"]["mosaic"] = {"href": ctx.io.rasters.url(p.container, p.mosaic_blob), "type": MEDIA_TYPE_VRT,
                                        "title": "Mosaic of every tile (GDAL VRT, tiles by relative href)",
                                        "roles": ["data", "mosaic"]}
        action = upsert_catalog_item(ctx.io, p.collection_id, item)
    # the COG is written and catalogued: its tiles are of no more use (a repeat finds them gone)
    removed = sum(ctx.io.intermediates.delete(blob) for blob in p.intermediate_blobs)
    return {**summary, "action": action, "url": ctx.io.rasters.url(p.container, p.blob),
            **({"intermediates_deleted": removed} if p.intermediate_blobs else {}), "resources": meter.report()}


HANDLERS = (
    TaskHandler("raster_plan_tiles", PlanTilesTask, plan_tiles_task, "Cut a raster's output grid into tile windows.",
                version=2),
    TaskHandler("raster_tile", TileTask, tile_task, "Write one window of a raster as a COG tile.", time_limit_s=1800,
                version=2),
    TaskHandler("raster_assemble", AssembleTask, assemble_task, "Join tiles into one COG (copying their blocks) "
                "or a VRT mosaic.", time_limit_s=3600, version=2),
    TaskHandler("raster_catalog_output", CatalogOutputTask, catalog_output_task, "Catalogue a large raster's COG, "
                "or one tile of a tiled output."),
)


# ------------------------------------------------------------------ planners
def _plan(p: LargeRasterParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    return [{"container": p.container, "blob": p.blob, "tile_size": p.tile_size, "target_crs": p.target_crs}]


def _tiles(p: LargeRasterParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    (plan,) = succeeded(previous)
    output = {"output_container": p.output_container} if p.output == "tiles" else {}
    return [{"container": p.container, "blob": p.blob, "tile": tile, "tile_blob": _tile_blob(p, tile["index"]),
             "cog_profile": p.cog_profile.value, "target_crs": p.target_crs, **output}
            for tile in plan.result["tiles"]]


def _assemble(p: LargeRasterParameters, previous: list[TaskOutcome]) -> list[dict[str, Any]]:
    """One task: the COG, or the mosaic VRT of a tiled output."""
    tiles = outcomes_in_order(succeeded(previous))
    task = {"tile_blobs": [o.result["tile_blob"] for o in tiles], "output_container": p.output_container,
            "output_blob": cog_output_name(p.blob, p.cog_options()), "cog_profile": p.cog_profile.value,
            "target_crs": p.target_crs}
    if p.output == "tiles":
        task.update(output="tiles", output_blob=f"{_tiles_folder(p)}/mosaic.vrt", grid=tiles[0].result["grid"],
                    tiles=[o.result["tile"] for o in tiles], sha256=[o.result["sha256"] for o in tiles])
    return [task]


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
    (made,) = (o.result for o in succeeded(previous))
    common = {"container": made["output_container"], "collection_id": p.collection_id,
              "datetime": p.datetime.isoformat() if p.datetime else None, "job_type": JOB_TYPE,
              "source_container": p.container, "source_blob": p.blob}
    if p.output == "cog":
        return [{**common, "blob": made["output_blob"], "sha256": made.get("sha256"),
                 "intermediate_blobs": made.get("tile_blobs", [])}]
    return [{**common, "blob": tile["blob"], "sha256": tile["sha256"], "mosaic_blob": made["output_blob"]}
            for tile in made["tiles"]]


# ------------------------------------------------------------------ aggregation
def _by_stage(outcomes: dict[int, list[TaskOutcome]], stage: int) -> list[dict[str, Any]]:
    return [o.result for o in outcomes_in_order(outcomes.get(stage, []))]


def _processed_large(p: LargeRasterParameters, outcomes: dict[int, list[TaskOutcome]]) -> dict[str, Any]:
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


JOB_TYPES = (
    JobController(JOB_TYPE, "One huge raster: plan tiles, write each tile as a COG in parallel "
                  "(windowed reads), join them into one COG by copying their blocks (or keep them, with a VRT "
                  "mosaic), catalogue.", LargeRasterParameters,
                  (Stage("plan_tiles", "raster_plan_tiles", _plan, "Cut the output grid into tile windows.",
                         parallelism="one task"),
                   Stage("process_tiles", "raster_tile", _tiles, "Write each window as a COG tile (final "
                         "compression, its own overviews).", parallelism="one task per tile"),
                   Stage("assemble", "raster_assemble", _assemble, "Join the tiles into one COG by copying their "
                         "compressed blocks, or write their VRT mosaic.", parallelism="one task"),
                   Stage("catalog", "raster_catalog_output", _catalog_large, "Catalogue the COG, or each tile.",
                         parallelism="one task per input")), _processed_large),
)
