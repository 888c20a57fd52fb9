"""TIFF structure without GDAL: read the directories (IFDs) GDAL wrote; ``services_tiff_write`` writes a
Cloud Optimized GeoTIFF whose blocks are copied, still compressed, from other TIFFs.

``services_tiles`` writes each tile in the final COG's compression, predictor and block size, on the
final COG's block grid, so assembling needs no decoding or encoding of those pixels, only these directories
and the blocks' places.

Pure: a path in. Accepts what GDAL writes for tiled images (little-endian classic TIFF or
BigTIFF); anything else is ``TiffError``. Every offset and count is checked against the file's size
before it is used, so a damaged or hostile file fails with a message and never reads past its end.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
SHORT, LONG, LONG8 = 3, 4, 16
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH = 254, 256, 257
GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS = 34735, 34736
PLANAR_CONFIG, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 284, 322, 323, 324, 325
REDUCED, MASK = 1, 4  # NewSubfileType bits
# Tags that say how a block's bytes decode: two IFDs whose blocks are swapped must agree on these.
CODEC_TAGS = (258, 259, 262, 277, 284, 317, 322, 323, 338, 339, 347, 530, 531, 532, 50674)
MAX_IFDS = 1024
MAX_TAG_BYTES = 64 * 2**20


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

    def codec(self) -> tuple[Any, ...]:
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
