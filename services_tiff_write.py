"""Writing TIFF structure without GDAL: a Cloud Optimized GeoTIFF whose blocks are copied, still compressed,
from other TIFFs (``services_tiff`` reads their directories).

``write_cog`` lays out directories taken from the tiles (their tags: compression, GeoTIFF keys, GDAL
metadata) and copies every block's bytes, in GDAL's COG layout (the one ``COPY_SRC_OVERVIEWS=YES`` and the COG
driver write, which ``services_raster``'s COG check and rio-cogeo's ``cog_validate`` accept): the ghost header
(``GDAL_STRUCTURAL_METADATA``), every IFD before any data (full resolution, its mask, the overviews from the
largest, their masks), then the blocks from the smallest overview to the full resolution, row by row, each
mask block right after its image block, each block with its size before it (4 bytes) and its last 4 bytes
repeated after it. Pure: paths in, a path out.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from services_tiff import (
    GEO_DOUBLE_PARAMS, GEO_KEY_DIRECTORY, IMAGE_LENGTH, IMAGE_WIDTH, LONG, LONG8, NEW_SUBFILE_TYPE, SHORT,
    TILE_BYTE_COUNTS, TILE_LENGTH, TILE_OFFSETS, TILE_WIDTH, Ifd, Tag, TiffError, TiffFile, read_tiff,
)

BIG_ONLY_TYPES = frozenset({16, 17, 18})  # LONG8, SLONG8, IFD8: BigTIFF only
# Tags that only the full-resolution image carries (georeferencing, dataset metadata).
MAIN_ONLY_TAGS = frozenset({33550, 33922, 34264, 34735, 34736, 34737, 42112})
LAYOUT_TAGS = frozenset({NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS})
GHOST_BODY = ("LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
              "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")
GHOST_MASK = "MASK_INTERLEAVED_WITH_IMAGERY=YES\n"
CLASSIC_LIMIT = 2**32 - 1
OPEN_FILES = 64


@dataclass
class BlockRef:
    """Where a block's bytes are: a source file (index into ``write_cog``'s ``sources``), offset, size."""

    source: int
    offset: int
    length: int


@dataclass
class Image:
    """One IFD to write: tags (without the layout tags, which ``write_cog`` sets), size, blocks row by row."""

    tags: dict[int, Tag]
    width: int
    height: int
    subfile: int
    blocks: list[BlockRef]


def image_tags(ifd: Ifd, overview: bool) -> dict[int, Tag]:
    """The tags of ``ifd`` to reuse for another image of the same kind: without the layout tags, and for
    an overview without what only the full-resolution image carries."""
    drop = LAYOUT_TAGS | (MAIN_ONLY_TAGS if overview else frozenset())
    if GEO_DOUBLE_PARAMS in ifd.tags and GEO_KEY_DIRECTORY in ifd.tags:
        keys = ifd.tags[GEO_KEY_DIRECTORY].values()
        if GEO_DOUBLE_PARAMS not in keys[5::4]:  # an unreferenced placeholder GDAL leaves in Create mode
            drop |= {GEO_DOUBLE_PARAMS}
    return {t: v for t, v in ifd.tags.items() if t not in drop}


def write_cog(dst_path: str | Path, images: list[Image], masks: list[Image | None],
              sources: Sequence[str | Path], bigtiff: bool | None = None) -> int:
    """Write a COG of ``images`` (full resolution first, then overviews from the largest) and their
    ``masks`` (None where a level has none), copying every block from ``sources``. Returns the file size.
    ``bigtiff`` None: BigTIFF only when a classic TIFF cannot hold it."""
    if len(images) != len(masks) or not images:
        raise TiffError("one mask entry (or None) per image, and at least one image")
    for image in (*images, *(m for m in masks if m)):
        across = -(-image.width // _tag_value(image, TILE_WIDTH))
        down = -(-image.height // _tag_value(image, TILE_LENGTH))
        if len(image.blocks) != across * down:
            raise TiffError(f"{len(image.blocks)} blocks for a {image.width} x {image.height} image of "
                            f"{across} x {down} blocks")
    for image, mask in zip(images, masks, strict=True):
        if mask is not None and (mask.width, mask.height, len(mask.blocks)) != (image.width, image.height,
                                                                                 len(image.blocks)):
            raise TiffError(f"a {mask.width} x {mask.height} mask for a {image.width} x {image.height} image")
    order = [images[0], masks[0], *images[1:], *masks[1:]]
    directories = [d for d in order if d is not None]
    has_mask = any(m is not None for m in masks)
    ghost = _ghost(has_mask)
    data_bytes = sum(b.length + 8 for d in directories for b in d.blocks if b.length)
    for big in (False, True) if bigtiff is None else (bigtiff,):
        header = 16 if big else 8
        ifd_start = _even(header + len(ghost))
        sizes = [_ifd_size(d, big) for d in directories]
        data_start = ifd_start + sum(sizes)
        if big or data_start + data_bytes <= CLASSIC_LIMIT:
            break
    if not big and data_start + data_bytes > CLASSIC_LIMIT:
        raise TiffError(f"{data_start + data_bytes:,} bytes do not fit a classic TIFF")
    bigtiff = big
    placed = _place_blocks(images, masks, data_start)
    ifd_offsets = []
    position = ifd_start
    for size in sizes:
        ifd_offsets.append(position)
        position += size
    with open(dst_path, "wb") as out:
        out.write(b"II" + (struct.pack("<HHHQ", 43, 8, 0, ifd_start) if bigtiff else struct.pack("<HI", 42, ifd_start)))
        out.write(ghost)
        out.write(b"\0" * (ifd_start - out.tell()))
        for n, directory in enumerate(directories):
            following = ifd_offsets[n + 1] if n + 1 < len(directories) else 0
            out.write(_ifd_bytes(directory, placed[id(directory)], ifd_offsets[n], following, bigtiff))
        if out.tell() != data_start:
            raise TiffError(f"directories end at {out.tell()}, expected {data_start}")
        _copy_blocks(out, images, masks, sources)
        return out.tell()


def _tag_value(image: Image, tag: int) -> int:
    if tag not in image.tags:
        raise TiffError(f"image {image.width} x {image.height} has no tag {tag}")
    return image.tags[tag].values()[0]


def _ghost(has_mask: bool) -> bytes:
    body = GHOST_BODY + (GHOST_MASK if has_mask else "")
    return f"GDAL_STRUCTURAL_METADATA_SIZE={len(body):06d} bytes\n{body}".encode()


def _even(n: int) -> int:
    return n + (n & 1)


def _entries(image: Image, block_offsets: list[int] | None, bigtiff: bool) -> dict[int, Tag]:
    """Every tag of ``image``'s IFD; block offsets as zeros when only the size matters."""
    n = len(image.blocks)
    wide = "<%dQ" if bigtiff else "<%dI"
    offsets = block_offsets if block_offsets is not None else [0] * n
    tags = dict(image.tags)
    for tag, value in tags.items():
        if value.type in BIG_ONLY_TYPES and not bigtiff:
            raise TiffError(f"tag {tag} of type {value.type} cannot be written to a classic TIFF")
    if image.subfile:
        tags[NEW_SUBFILE_TYPE] = Tag(LONG, 1, struct.pack("<I", image.subfile))
    else:
        tags.pop(NEW_SUBFILE_TYPE, None)
    for tag, size in ((IMAGE_WIDTH, image.width), (IMAGE_LENGTH, image.height)):  # as libtiff writes them
        tags[tag] = Tag(SHORT, 1, struct.pack("<H", size)) if size < 2**16 else Tag(LONG, 1, struct.pack("<I", size))
    kind = LONG8 if bigtiff else LONG
    tags[TILE_OFFSETS] = Tag(kind, n, struct.pack(wide % n, *offsets))
    tags[TILE_BYTE_COUNTS] = Tag(kind, n, struct.pack(wide % n, *(b.length for b in image.blocks)))
    return tags


def _ifd_size(image: Image, bigtiff: bool) -> int:
    tags = _entries(image, None, bigtiff)
    inline, entry, fixed = (8, 20, 16) if bigtiff else (4, 12, 6)
    return fixed + entry * len(tags) + sum(_even(len(t.data)) for t in tags.values() if len(t.data) > inline)


def _ifd_bytes(image: Image, block_offsets: list[int], at: int, following: int, bigtiff: bool) -> bytes:
    tags = _entries(image, block_offsets, bigtiff)
    inline, entry, fixed = (8, 20, 16) if bigtiff else (4, 12, 6)
    head = struct.pack("<Q" if bigtiff else "<H", len(tags))
    extra_at = at + fixed + entry * len(tags)
    entries, extra = [], bytearray()
    for tag in sorted(tags):
        value = tags[tag]
        if len(value.data) <= inline:
            field_bytes = value.data.ljust(inline, b"\0")
        else:
            field_bytes = struct.pack("<Q" if bigtiff else "<I", extra_at + len(extra))
            extra += value.data + (b"\0" if len(value.data) & 1 else b"")
        entries.append(struct.pack("<HHQ" if bigtiff else "<HHI", tag, value.type, value.count) + field_bytes)
    tail = struct.pack("<Q" if bigtiff else "<I", following)
    return head + b"".join(entries) + tail + bytes(extra)


def _data_order(images: list[Image], masks: list[Image | None]) -> Iterator[tuple[Image, int]]:
    """(directory, block index) in file order: smallest overview first, each mask block after its image
    block."""
    for level in range(len(images) - 1, -1, -1):
        image, mask = images[level], masks[level]
        for n in range(len(image.blocks)):
            yield image, n
            if mask is not None:
                yield mask, n


def _place_blocks(images: list[Image], masks: list[Image | None], start: int) -> dict[int, list[int]]:
    placed = {id(d): [0] * len(d.blocks) for d in (*images, *(m for m in masks if m))}
    position = start
    for directory, n in _data_order(images, masks):
        block = directory.blocks[n]
        if block.length:
            placed[id(directory)][n] = position + 4
            position += block.length + 8
    return placed


def _copy_blocks(out: BinaryIO, images: list[Image], masks: list[Image | None],
                 sources: Sequence[str | Path]) -> None:
    handles: OrderedDict[int, BinaryIO] = OrderedDict()
    try:
        for directory, n in _data_order(images, masks):
            block = directory.blocks[n]
            if not block.length:
                continue
            fh = handles.pop(block.source, None) or open(sources[block.source], "rb")
            handles[block.source] = fh
            if len(handles) > OPEN_FILES:
                handles.popitem(last=False)[1].close()
            fh.seek(block.offset)
            data = fh.read(block.length)
            if len(data) != block.length:
                raise TiffError(f"{Path(sources[block.source]).name}: block at {block.offset} is cut short")
            out.write(struct.pack("<I", block.length) + data + data[-4:].rjust(4, b"\0"))
    finally:
        for fh in handles.values():
            fh.close()


def pack_levels(paths: Sequence[str | Path], dst_path: str | Path) -> int:
    """Write the full-resolution images of ``paths`` (a raster, then its overviews from the largest, each
    in a file of its own, with its mask if it has one) as one COG, copying their blocks."""
    images, masks = [], []
    for n, path in enumerate(paths):
        tiff = read_tiff(path)
        image, mask = tiff.levels()[0]
        images.append(tiff_image(tiff, image, n, n > 0))
        masks.append(tiff_image(tiff, mask, n, n > 0) if mask is not None else None)
    return write_cog(dst_path, images, masks, paths)


def pack_tiff(src_path: str | Path, dst_path: str | Path) -> int:
    """Rewrite a tiled TIFF (e.g. one whose overviews GDAL added at its end) in the COG layout, copying
    its blocks."""
    tiff = read_tiff(src_path)
    images, masks = [], []
    for level, (image, mask) in enumerate(tiff.levels()):
        images.append(tiff_image(tiff, image, 0, level > 0))
        masks.append(tiff_image(tiff, mask, 0, level > 0) if mask is not None else None)
    return write_cog(dst_path, images, masks, [src_path])


def tiff_image(tiff: TiffFile, index: int, source: int, overview: bool) -> Image:
    """One of ``tiff``'s images, as an image of a file being written (its blocks in ``sources[source]``)."""
    ifd = tiff.ifds[index]
    offsets, counts = tiff.blocks[index]
    kind = (ifd.subfile & 4) | (1 if overview else 0)
    return Image(image_tags(ifd, overview), ifd.width, ifd.height, kind,
                 [BlockRef(source, int(o), int(c)) for o, c in zip(offsets, counts, strict=True)])
