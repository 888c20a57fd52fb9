"""Pieces the raster and container job types share: blob references, fetching inputs, cataloguing."""
from __future__ import annotations

from datetime import datetime as DateTime
from pathlib import Path
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Iterator

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from base_controller import CONTAINER_NOT_ALLOWED, CONTAINERS_CONTEXT, JobParameters
from config import Settings
from errors import NotFoundError, TaskError
from models import BlobName, ContainerName
from services_gdal import RasterLimits, user_crs
from services_raster import crs_string, validate_raster
import services_stac
from services_stac import build_collection, build_item

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


def raster_limits(io: Any) -> RasterLimits:
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


@contextmanager
def named_as_blob(path: Path | str, container: str, blob: str) -> Iterator[None]:
    """Errors about a local copy name the blob instead (users know blobs, not our scratch folders)."""
    try:
        yield
    except TaskError as exc:
        message = exc.message.replace(str(path), f"{container}/{blob}")
        raise type(exc)(message, **exc.details) from exc  # keeps the class (and code), e.g. too_large


def fetch(io: Any, container: str, blob: str, folder: Path, name: str = "input") -> tuple[Path, Any]:
    """Download a blob into ``folder``; a missing blob is a permanent, readable failure."""
    suffix = Path(blob).suffix or ".bin"
    path = folder / f"{name}{suffix}"
    try:
        info = io.rasters.download(container, blob, path)
    except NotFoundError as exc:
        raise TaskError(exc.message) from None
    return path, info


def links(io: Any, container: str, blob: str) -> dict[str, str | None]:
    """URL of a blob, and a read-only time-limited SAS URL when settings allow it."""
    return {"url": io.rasters.url(container, blob), "sas_url": io.rasters.read_sas_url(container, blob)}


def catalog_blob(io: Any, p: CatalogTask, folder: Path) -> dict[str, Any]:
    """Build the blob's STAC item, create its collection if missing, upsert the item (idempotent)."""
    path, blob = fetch(io, p.container, p.blob, folder)
    with named_as_blob(path, p.container, p.blob):
        info = validate_raster(path, raster_limits(io))
    item = build_item(info, container=p.container, blob=p.blob, href=io.rasters.url(p.container, p.blob),
                      file_size=blob.size, datetime=p.datetime, last_modified=blob.last_modified,
                      collection_id=p.collection_id)
    catalogue = io.pgstac()
    item_dict = item.to_dict(include_self_link=False, transform_hrefs=False)

    def ensure() -> None:
        catalogue.ensure_collection(build_collection(p.collection_id, [item]).to_dict(
            include_self_link=False, transform_hrefs=False))
        io.known_collections.add(p.collection_id)

    if p.collection_id not in io.known_collections:  # once per process: upsert_item widens the extent
        ensure()
    try:
        action = catalogue.upsert_item(item_dict)
    except NotFoundError:  # the collection was removed since this process ensured it
        io.known_collections.discard(p.collection_id)
        ensure()
        action = catalogue.upsert_item(item_dict)
    return {"item_id": item.id, "collection_id": p.collection_id, "action": action, "bbox": item.bbox,
            "datetime": item.datetime.isoformat() if item.datetime else None, "container": p.container,
            "blob": p.blob, "media_type": item.assets["data"].media_type}
