"""TIFF structure without GDAL: read the directories (IFDs) GDAL wrote, and write a Cloud Optimized
GeoTIFF whose blocks are copied, still compressed, from other TIFFs.

``services_tiles`` writes each tile in the final COG's compression, predictor and block size, on the
final COG's block grid; assembling then needs no decoding or encoding of those pixels: ``write_cog``
lays out directories taken from the tiles (their tags: compression, GeoTIFF keys, GDAL metadata) and
copies every block's bytes. The layout is GDAL's COG layout (the one ``COPY_SRC_OVERVIEWS=YES`` and
the COG driver write, which ``services_raster``'s COG check and rio-cogeo's ``cog_validate`` accept):
the ghost header (``GDAL_STRUCTURAL_METADATA``), every IFD before any data (full resolution, its mask,
the overviews from the largest, their masks), then the blocks from the smallest overview to the full
resolution, row by row, each mask block right after its image block, each block with its size before
it (4 bytes) and its last 4 bytes repeated after it.

Pure: paths in, a path out. Accepts what GDAL writes for tiled images (little-endian classic TIFF or
BigTIFF); anything else is ``TiffError``. Every offset and count is checked against the file's size
before it is used, so a damaged or hostile file fails with a message and never reads past its end.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
BIG_ONLY_TYPES = frozenset({16, 17, 18})  # LONG8, SLONG8, IFD8: BigTIFF only
SHORT, LONG, LONG8 = 3, 4, 16
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH = 254, 256, 257
GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS = 34735, 34736
PLANAR_CONFIG, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 284, 322, 323, 324, 325
REDUCED, MASK = 1, 4  # NewSubfileType bits
# Tags that only the full-resolution image carries (georeferencing, dataset metadata).
MAIN_ONLY_TAGS = frozenset({33550, 33922, 34264, 34735, 34736, 34737, 42112})
# Tags that say how a block's bytes decode: two IFDs whose blocks are swapped must agree on these.
CODEC_TAGS = (258, 259, 262, 277, 284, 317, 322, 323, 338, 339, 347, 530, 531, 532, 50674)
LAYOUT_TAGS = frozenset({NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS})
MAX_IFDS = 1024
MAX_TAG_BYTES = 64 * 2**20
GHOST_BODY = ("LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
              "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")
GHOST_MASK = "MASK_INTERLEAVED_WITH_IMAGERY=YES\n"
CLASSIC_LIMIT = 2**32 - 1
OPEN_FILES = 64


class TiffError(ValueError):
    """A file that is not a TIFF this module can read, or blocks that cannot be copied as asked."""


@dataclass(frozen=True)
class Tag:
    """One IFD entry: TIFF type, count, and the value's bytes (little-endian)."""

    type: int
    count: int
    data: bytes

    def values(self) -> tuple[int, ...]:
        """Integer values (BYTE, SHORT, LONG, LONG8 and their signed forms)."""
        codes = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q", 18: "Q", 13: "I"}
        if self.type not in codes:
            raise TiffError(f"tag of type {self.type} is not an integer")
        return struct.unpack(f"<{self.count}{codes[self.type]}", self.data)


@dataclass
class Ifd:
    """One image directory: its tags, and for tiled images where its blocks are."""

    tags: dict[int, Tag]
    offset: int = 0

    def value(self, tag: int, default: int | None = None) -> int:
        """The first value of an integer tag."""
        if tag not in self.tags:
            if default is None:
                raise TiffError(f"IFD at {self.offset} has no tag {tag}")
            return default
        return self.tags[tag].values()[0]

    @property
    def subfile(self) -> int:
        """NewSubfileType bits: 1 reduced resolution (overview), 4 mask."""
        return self.value(NEW_SUBFILE_TYPE, 0)

    @property
    def width(self) -> int:
        """Image width, px."""
        return self.value(IMAGE_WIDTH)

    @property
    def height(self) -> int:
        """Image height, px."""
        return self.value(IMAGE_LENGTH)

    @property
    def block(self) -> tuple[int, int]:
        """(tile width, tile length); TiffError for a striped image."""
        if TILE_WIDTH not in self.tags:
            raise TiffError(f"IFD at {self.offset} is not tiled")
        return self.value(TILE_WIDTH), self.value(TILE_LENGTH)

    @property
    def blocks_across(self) -> tuple[int, int]:
        """(blocks per row, block rows)."""
        bw, bh = self.block
        return -(-self.width // bw), -(-self.height // bh)

    def codec(self) -> tuple:
        """The tags that say how blocks decode (compared before blocks are mixed)."""
        return tuple((t, self.tags[t]) for t in CODEC_TAGS if t in self.tags)


@dataclass
class TiffFile:
    """A parsed TIFF: its directories in file order, and where its blocks are."""

    path: Path
    size: int
    bigtiff: bool
    ifds: list[Ifd]
    blocks: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # IFD index -> offsets, counts

    def levels(self) -> list[tuple[int, int | None]]:
        """(image IFD index, mask IFD index or None) from full resolution to the smallest overview."""
        images = [i for i, d in enumerate(self.ifds) if not d.subfile & MASK]
        masks = {(d.width, d.height, bool(d.subfile & REDUCED)): i for i, d in enumerate(self.ifds)
                 if d.subfile & MASK}
        if not images or self.ifds[images[0]].subfile & REDUCED:
            raise TiffError(f"{self.path.name}: the first image is not a full-resolution image")
        images = [images[0]] + sorted(images[1:], key=lambda i: -self.ifds[i].width)
        return [(i, masks.get((self.ifds[i].width, self.ifds[i].height, n > 0))) for n, i in enumerate(images)]


# --------------------------------------------------------------------------------------------- read
def read_tiff(path: str | Path) -> TiffFile:
    """Parse every IFD of a little-endian (Big)TIFF; block offsets and sizes are checked to lie inside
    the file. TiffError for anything else."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        head = _read_at(fh, 0, 16, size)
        if head[:2] != b"II":
            raise TiffError(f"{path.name}: not a little-endian TIFF")
        magic = struct.unpack_from("<H", head, 2)[0]
        if magic == 42:
            bigtiff, offset = False, struct.unpack_from("<I", head, 4)[0]
        elif magic == 43 and struct.unpack_from("<HH", head, 4) == (8, 0):
            bigtiff, offset = True, struct.unpack_from("<Q", head, 8)[0]
        else:
            raise TiffError(f"{path.name}: not a TIFF (magic {magic})")
        ifds: list[Ifd] = []
        seen: set[int] = set()
        while offset:
            if offset in seen or len(ifds) >= MAX_IFDS:
                raise TiffError(f"{path.name}: IFD chain loops or is too long")
            seen.add(offset)
            ifd, offset = _read_ifd(fh, offset, bigtiff, size, path.name)
            ifds.append(ifd)
        tiff = TiffFile(path, size, bigtiff, ifds)
        for index, ifd in enumerate(ifds):
            if TILE_OFFSETS in ifd.tags:
                tiff.blocks[index] = _block_table(ifd, size, path.name)
    return tiff


def _read_at(fh: BinaryIO, offset: int, length: int, size: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > size:
        raise TiffError(f"offset {offset} + {length} bytes is outside the file ({size} bytes)")
    fh.seek(offset)
    return fh.read(length)


def _read_ifd(fh: BinaryIO, offset: int, bigtiff: bool, size: int, name: str) -> tuple[Ifd, int]:
    count_fmt, entry_fmt, entry_size, inline, next_fmt = (
        ("<Q", "<HHQ", 20, 8, "<Q") if bigtiff else ("<H", "<HHI", 12, 4, "<I"))
    count = struct.unpack(count_fmt, _read_at(fh, offset, struct.calcsize(count_fmt), size))[0]
    start = offset + struct.calcsize(count_fmt)
    raw = _read_at(fh, start, count * entry_size + struct.calcsize(next_fmt), size)
    tags: dict[int, Tag] = {}
    for i in range(count):
        tag, typ, n = struct.unpack_from(entry_fmt, raw, i * entry_size)
        if typ not in TYPE_SIZES:
            raise TiffError(f"{name}: tag {tag} has unknown type {typ}")
        nbytes = TYPE_SIZES[typ] * n
        if nbytes > MAX_TAG_BYTES:
            raise TiffError(f"{name}: tag {tag} holds {nbytes} bytes")
        value_at = i * entry_size + struct.calcsize(entry_fmt)
        if nbytes <= inline:
            data = raw[value_at:value_at + nbytes]
        else:
            where = struct.unpack_from("<Q" if bigtiff else "<I", raw, value_at)[0]
            data = _read_at(fh, where, nbytes, size)
        tags[tag] = Tag(typ, n, data)
    next_offset = struct.unpack_from(next_fmt, raw, count * entry_size)[0]
    return Ifd(tags, offset), next_offset


def _block_table(ifd: Ifd, size: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    across, down = ifd.blocks_across
    if ifd.value(PLANAR_CONFIG, 1) != 1:
        raise TiffError(f"{name}: band-interleaved (planar) images are not supported")
    offsets = np.asarray(ifd.tags[TILE_OFFSETS].values(), dtype=np.uint64)
    counts = np.asarray(ifd.tags[TILE_BYTE_COUNTS].values(), dtype=np.uint64)
    if len(offsets) != across * down or len(counts) != len(offsets):
        raise TiffError(f"{name}: IFD at {ifd.offset} lists {len(offsets)} blocks for {across} x {down}")
    if np.any((counts > 0) & (offsets + counts > size)):
        raise TiffError(f"{name}: a block of the IFD at {ifd.offset} lies past the end of the file")
    return offsets, counts


# -------------------------------------------------------------------------------------------- write
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
              sources: list[str | Path], bigtiff: bool | None = None) -> int:
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
    for tag, value in ((IMAGE_WIDTH, image.width), (IMAGE_LENGTH, image.height)):  # as libtiff writes them
        tags[tag] = Tag(SHORT, 1, struct.pack("<H", value)) if value < 2**16 else Tag(LONG, 1, struct.pack("<I", value))
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


def _data_order(images: list[Image], masks: list[Image | None]):
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


def _copy_blocks(out: BinaryIO, images: list[Image], masks: list[Image | None], sources: list[str | Path]) -> None:
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


def pack_levels(paths: list[str | Path], dst_path: str | Path) -> int:
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
