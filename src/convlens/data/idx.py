"""The IDX file format of MNIST and Fashion-MNIST, gzipped or not, read strictly.

An IDX file is a 4-byte magic number `0x00 0x00 TYPE NDIM` (TYPE 0x08 = unsigned byte), NDIM big-endian
uint32 dimension sizes, then the elements. Every check that can fail names the file: a truncated or
corrupt gzip stream, a wrong magic number, a dimension that is not the one expected, or a body whose
length is not the product of the dimensions. A shorter data set is never returned silently.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from convlens.errors import ConvlensError

UBYTE = 0x08


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The (decompressed, for `.gz`) bytes of `path`; only the first `limit` bytes when given."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ConvlensError(
            f"{path} is truncated or corrupt ({e}); download it again or remove it"
        ) from None
    except OSError as e:
        raise ConvlensError(f"cannot read {path} ({e})") from None


def _parse_header(path: Path, head: bytes, ndim: int) -> tuple[int, ...]:
    if len(head) < 4 + 4 * ndim:
        raise ConvlensError(f"{path} is too short to be an IDX file ({len(head)} bytes)")
    zero, dtype, nd = struct.unpack(">HBB", head[:4])
    if zero != 0 or dtype != UBYTE or nd != ndim:
        magic = int.from_bytes(head[:4], "big")
        raise ConvlensError(
            f"{path} has the wrong IDX magic number 0x{magic:08x}; expected 0x{0x800 + ndim:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}): "
            "is it the right file, or a different format?"
        )
    return tuple(struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim]))


def read_header(path: str | Path, ndim: int) -> tuple[int, ...]:
    """The dimension sizes of an IDX file, reading only its first bytes (cheap, used for listing)."""
    path = Path(path)
    return _parse_header(path, _read_bytes(path, limit=4 + 4 * ndim), ndim)


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read a whole unsigned-byte IDX file of `ndim` dimensions as a uint8 array of that shape.

    Args:
        path: the file; `.gz` files are decompressed.
        ndim: 1 for label files, 3 for image files `(N, H, W)`.

    Raises:
        ConvlensError: naming the file, when it is truncated, corrupt, or not such an IDX file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    dims = _parse_header(path, raw, ndim)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - offset
    if got != expected:
        shape = " x ".join(map(str, dims))
        raise ConvlensError(
            f"{path} is truncated or corrupt: its header promises {shape} = {expected:,} bytes "
            f"of data but it holds {got:,}"
        )
    # a writable copy: torch warns about (and must not write through) read-only buffers
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()
