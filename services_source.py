"""A user raster and the sidecars the caller allows, opened through the gate and applied: ``open_raster``.

Pure: sources in (local paths or ``/vsicurl/`` URLs with their first bytes), a ``UserRaster`` out. Every
file, the raster and each ``.msk``/``.ovr``, is opened by ``services_gdal.open_user_raster`` on its own
(TIFF signature, GTiff only, exactly its own URL); text sidecars are parsed by ``services_sidecars``. GDAL
itself never looks beside the raster: see ``services_gdal``'s docstring for why.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pydantic import BaseModel, ConfigDict, Field
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from services_crs import crs_applies, user_crs
from services_gdal import RasterLimits, open_user_raster
from services_sidecars import SidecarError, parse_aux_xml, parse_prj, parse_world_file


class RasterSource(BaseModel):
    """Where GDAL reads one user file: a local path, or ``/vsicurl/<url>?<sas>`` of a blob's own URL."""

    model_config = ConfigDict(frozen=True)
    path: str
    label: str | None = Field(None, description="how messages name it (container/blob): never a SAS")
    remote_url: str | None = Field(None, description="for a URL: the one URL GDAL may reach (no query)")
    head: bytes | None = Field(None, description="for a URL: the file's first bytes (its signature)")
    size: int | None = Field(None, description="bytes (for a URL: from the blob's properties)")

    @property
    def name(self) -> str:
        """The name messages use."""
        return self.label or self.path.split("?", 1)[0]

    @property
    def remote(self) -> bool:
        """Read over the network."""
        return self.remote_url is not None

    def file_size(self) -> int:
        """Bytes of the file."""
        return self.size if self.size is not None else os.path.getsize(self.path)


def as_source(value: str | Path | RasterSource) -> RasterSource:
    """A local path as a ``RasterSource`` (a source is returned as it is)."""
    return value if isinstance(value, RasterSource) else RasterSource(path=str(value))


class TextSidecar(BaseModel):
    """A small text sidecar, already read (``services_sidecars.MAX_TEXT_SIDECAR_BYTES`` at most)."""

    name: str
    content: bytes


class Sidecars(BaseModel):
    """The allow-list of one raster's companions: nothing else beside it is ever read."""

    mask: RasterSource | None = Field(None, description="<raster>.msk")
    overviews: RasterSource | None = Field(None, description="<raster>.ovr")
    aux_xml: TextSidecar | None = Field(None, description="<raster>.aux.xml")
    world_file: TextSidecar | None = Field(None, description=".tfw, .tifw or .wld")
    prj: TextSidecar | None = Field(None, description=".prj")

    def names(self) -> list[str]:
        """Every sidecar offered, by name."""
        return [s.name for s in (self.mask, self.overviews, self.aux_xml, self.world_file, self.prj) if s]


@dataclass
class UserRaster:
    """A raster opened through the gate, with what its sidecars say applied the way GDAL would on a local
    disk: PAM (``.aux.xml``) georeferencing before the file's own, world file and ``.prj`` only where the
    file has none; the file's own nodata, mask and overviews before a sidecar's."""

    src: DatasetReader
    source: RasterSource
    crs: CRS | None
    transform: Affine
    nodata: float | None
    mask: DatasetReader | None = None  # an external mask (.msk), same size as src
    overviews: DatasetReader | None = None  # external overviews (.ovr)
    overviews_source: RasterSource | None = None
    overview_factors: list[int] = field(default_factory=list)
    extra_tags: dict[str, str] = field(default_factory=dict)  # .aux.xml metadata the file lacks
    used: list[str] = field(default_factory=list)  # sidecars that changed something
    notes: list[str] = field(default_factory=list)

    @property
    def georef_overridden(self) -> bool:
        """A sidecar changed the CRS, the transform or the nodata value."""
        return (self.crs != self.src.crs or self.transform != self.src.transform
                or not _same_nodata(self.nodata, self.src.nodata))

    def warp_source_kwargs(self) -> dict[str, Any]:
        """``WarpedVRT`` arguments that give GDAL this georeferencing and nodata instead of the file's."""
        if not self.georef_overridden:
            return {}
        out: dict[str, Any] = {"src_crs": self.crs, "src_transform": self.transform}
        if self.nodata is not None:
            out["src_nodata"] = self.nodata
        return out

    @property
    def has_mask(self) -> bool:
        """A per-dataset mask: the file's own, or a ``.msk``."""
        flags = self.src.mask_flag_enums[0]
        return self.mask is not None or (MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags)

    def read_mask(self, window: Window | None = None) -> np.ndarray:
        """The dataset mask (0 invalid, 255 valid) of a window."""
        if self.mask is not None:
            return np.where(self.mask.read(1, window=window) > 0, 255, 0).astype("uint8")
        mask: np.ndarray = self.src.dataset_mask(window=window)
        return mask

    def tags(self) -> dict[str, str]:
        """The file's metadata, completed by its ``.aux.xml``."""
        return {**self.extra_tags, **self.src.tags()}


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (np.isnan(a) and np.isnan(b))


@contextmanager
def open_raster(source: str | Path | RasterSource, *, limits: RasterLimits | None = None,
                sidecars: Sidecars | None = None, app_vrt: bool = False, **kwargs: Any) -> Iterator[UserRaster]:
    """Open a raster and the sidecars the caller allows (each through ``open_user_raster``), and apply them.

    A ``.msk`` or ``.ovr`` that is not a TIFF is refused (NotARasterError naming it); one GDAL cannot open
    is CorruptRasterError; a text sidecar that cannot be used, or an element of it that is not honoured,
    is left out with a note (``UserRaster.notes``), as GDAL would warn and go on.
    """
    source = as_source(source)
    limits = limits or RasterLimits()
    with ExitStack() as stack:
        src = stack.enter_context(open_user_raster(source.path, limits=limits, app_vrt=app_vrt,
                                                   remote_url=source.remote_url, head=source.head,
                                                   label=source.name, **kwargs))
        raster = UserRaster(src=src, source=source, crs=src.crs, transform=src.transform, nodata=src.nodata)
        if sidecars is not None:
            _apply_text_sidecars(raster, sidecars)
            _apply_tiff_sidecars(raster, sidecars, limits, stack)
        yield raster


def _apply_text_sidecars(raster: UserRaster, sidecars: Sidecars) -> None:
    src, notes = raster.src, raster.notes
    if sidecars.aux_xml is not None:
        name = sidecars.aux_xml.name
        try:
            aux = parse_aux_xml(sidecars.aux_xml.content, name)
        except SidecarError as exc:
            notes.append(f"ignored {exc}")
        else:
            before = (raster.crs, raster.transform, raster.nodata)
            if aux.srs:
                try:
                    raster.crs = sidecar_crs(aux.srs)
                except ValueError as exc:
                    notes.append(f"ignored the <SRS> of {name}: {exc}")
            if aux.transform:
                raster.transform = Affine(*aux.transform)
            if aux.nodata is not None and src.nodata is None:  # the file's own nodata comes first (GTiff)
                raster.nodata = aux.nodata
            own = src.tags()
            raster.extra_tags = {k: v for k, v in aux.metadata.items() if k not in own}
            if aux.ignored:
                notes.append(f"{name}: not honoured: {', '.join(dict.fromkeys(aux.ignored))}")
            if before != (raster.crs, raster.transform, raster.nodata) or raster.extra_tags:
                raster.used.append(name)
    gcps = src.gcps[0]
    if sidecars.world_file is not None and raster.transform.is_identity and not gcps:
        try:
            raster.transform = Affine(*parse_world_file(sidecars.world_file.content, sidecars.world_file.name))
            raster.used.append(sidecars.world_file.name)
        except SidecarError as exc:
            notes.append(f"ignored {exc}")
    if sidecars.prj is not None and raster.crs is None:
        try:
            raster.crs = sidecar_crs(parse_prj(sidecars.prj.content, sidecars.prj.name))
            raster.used.append(sidecars.prj.name)
        except (SidecarError, ValueError) as exc:
            notes.append(f"ignored {sidecars.prj.name}: {exc}")


def sidecar_crs(text: str) -> CRS:
    """The CRS a sidecar gives, through the same gate as a parameter (``services_crs.user_crs``: nothing that
    names a grid, file or URL reaches PROJ), and usable: one with no transformation to longitude/latitude
    would fail the task later, so it is refused here (ValueError) and the sidecar is ignored with a note."""
    crs = user_crs(text)
    if why := crs_applies(crs):
        raise ValueError(f"not applied: {why}")
    return crs


def _apply_tiff_sidecars(raster: UserRaster, sidecars: Sidecars, limits: RasterLimits, stack: ExitStack) -> None:
    src, notes = raster.src, raster.notes

    def open_sidecar(sidecar: RasterSource) -> DatasetReader:
        return stack.enter_context(open_user_raster(sidecar.path, limits=limits, remote_url=sidecar.remote_url,
                                                    head=sidecar.head, label=sidecar.name))

    flags = src.mask_flag_enums[0]
    if sidecars.mask is not None and MaskFlags.per_dataset not in flags:  # an internal mask comes first
        mask = open_sidecar(sidecars.mask)
        if (mask.width, mask.height) != (src.width, src.height) or mask.dtypes[0] != "uint8":
            notes.append(f"ignored {sidecars.mask.name}: a {mask.width} x {mask.height} {mask.dtypes[0]} mask "
                         f"for a {src.width} x {src.height} raster")
        else:
            raster.mask = mask
            raster.used.append(sidecars.mask.name)
    if sidecars.overviews is not None and not src.overviews(1):  # internal overviews come first
        ovr = open_sidecar(sidecars.overviews)
        if ovr.count != src.count or ovr.width >= src.width:
            notes.append(f"ignored {sidecars.overviews.name}: {ovr.count} bands of {ovr.width} x {ovr.height} "
                         f"are not overviews of this {src.count}-band {src.width} x {src.height} raster")
        else:
            base = max(1, round(src.width / ovr.width))
            raster.overviews, raster.overviews_source = ovr, sidecars.overviews
            raster.overview_factors = [base] + [base * f for f in ovr.overviews(1)]
            raster.used.append(sidecars.overviews.name)


def mask_reader(raster: UserRaster, view: DatasetReader | WarpedVRT, stack: ExitStack, alpha_added: bool,
                 reprojected: bool) -> Callable[[Window], np.ndarray]:
    """How ``services_cog`` reads the mask of a window of ``view`` (a dataset on ``raster``'s grid, or its
    reprojection): the source's own (file or ``.msk``) on
    the same grid; reprojected, the warper's alpha (outside the source, and the file's own mask) and the
    ``.msk`` warped onto the same grid (nearest)."""
    if not reprojected:
        return raster.read_mask
    alpha_index = view.count if alpha_added else None
    warped_mask = None
    if raster.mask is not None:
        warped_mask = stack.enter_context(WarpedVRT(
            raster.mask, src_crs=raster.crs, src_transform=raster.transform, crs=view.crs, transform=view.transform,
            width=view.width, height=view.height, nodata=0, resampling=Resampling.nearest))

    def read(window: Window) -> np.ndarray:
        valid = np.ones((int(window.height), int(window.width)), dtype=bool)
        if alpha_index is not None:
            valid &= view.read(alpha_index, window=window) > 0
        if warped_mask is not None:
            valid &= warped_mask.read(1, window=window) > 0
        return np.where(valid, 255, 0).astype("uint8")

    return read
