"""Float vectors on the wire: the kept values and the importance statistic.

A value section holds ``count`` numbers in one of three formats:

==============  ======  ============================================================
format          bytes   what is lost
==============  ======  ============================================================
``float32``     4       nothing (the default)
``float16``     2       IEEE half: 11 significant bits (relative error <= 2^-11
                        for |x| >= 2^-14), |x| <= 65504 (larger values are
                        refused, not clipped)
``bfloat16``    2       the top half of a float32, rounded to nearest even: 8
                        significant bits (relative error <= 2^-8), float32's range
==============  ======  ============================================================

The bytes of the numbers are *shuffled* (all first bytes, then all second bytes...)
and compressed with zstd when that is smaller than the plain bytes: sign and
exponent bytes of trained weights repeat a lot, the low mantissa bytes do not.
A flag marks a vector that is relative to a reference both ends hold (a client's
update ``w_c - w_start`` in a lossy format, so that rounding applies to the update
and not to the weight; see :mod:`common.wire.codec`).

Section layout (little-endian): ``u8 version, u8 format, u8 transform (0 plain,
1 shuffle + zstd), u8 flags (1 = relative), u64 count``, then the body.
"""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np

from .errors import Reader, WireError, zstd_compress, zstd_decompress

ValueFormat = Literal["float32", "float16", "bfloat16"]
VALUE_FORMATS: tuple[ValueFormat, ...] = ("float32", "float16", "bfloat16")
FORMAT_CODES = {name: code for code, name in enumerate(VALUE_FORMATS)}
BYTES_PER_VALUE = {"float32": 4, "float16": 2, "bfloat16": 2}

FORMAT_VERSION = 1
HEADER = "<BBBBQ"
PLAIN, SHUFFLE_ZSTD = 0, 1
RELATIVE = 1
FLOAT16_MAX = 65504.0


def value_bits(fmt: ValueFormat) -> int:
    return 8 * BYTES_PER_VALUE[fmt]


def to_format(values: np.ndarray, fmt: ValueFormat) -> np.ndarray:
    """``values`` (float32) in ``fmt``'s storage type: float32, float16 or uint16 (bfloat16 bits)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if fmt == "float32":
        return values
    if fmt == "float16":
        finite = np.isfinite(values)
        if np.any(np.abs(values[finite]) > FLOAT16_MAX):
            raise WireError("float16 cannot hold values beyond +-65504; use bfloat16 or float32 values")
        return values.astype(np.float16)
    bits = values.view(np.uint32)
    # round to nearest, ties to even, on the 16 bits that are dropped
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def from_format(stored: np.ndarray, fmt: ValueFormat) -> np.ndarray:
    """Float32 values from their storage type (inverse of :func:`to_format`)."""
    if fmt == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


def quantize(values: np.ndarray, fmt: ValueFormat) -> np.ndarray:
    """What the receiver gets for ``values`` sent in ``fmt`` (float32 in, float32 out)."""
    if fmt == "float32":
        return np.asarray(values, dtype=np.float32)
    return from_format(to_format(values, fmt), fmt)


def encode_values(values: np.ndarray, fmt: ValueFormat, level: int, relative: bool = False) -> bytes:
    """A value section for ``values`` (shuffled and zstd-compressed when smaller)."""
    stored = to_format(values, fmt)
    width = BYTES_PER_VALUE[fmt]
    body, transform = None, PLAIN
    if level > 0 and len(stored):
        squeezed = zstd_compress(shuffle(stored.view(np.uint8).reshape(len(stored), width)), level)
        if len(squeezed) < stored.nbytes:
            body, transform = squeezed, SHUFFLE_ZSTD
    if body is None:
        body = stored.tobytes()
    header = struct.pack(
        HEADER, FORMAT_VERSION, FORMAT_CODES[fmt], transform, RELATIVE if relative else 0, len(stored)
    )
    return header + body


def read_header(section: bytes, what: str) -> tuple[ValueFormat, int, bool, int, Reader]:
    """Format, count, relative flag and transform of a value section, and a reader at its body."""
    reader = Reader(section, what)
    version, code, transform, flags, count = reader.unpack(HEADER)
    if version != FORMAT_VERSION:
        raise WireError(f"{what} has format version {version}; this node reads {FORMAT_VERSION}")
    if code >= len(VALUE_FORMATS):
        raise WireError(f"{what} has value format {code}; allowed: {list(FORMAT_CODES.items())}")
    if transform not in (PLAIN, SHUFFLE_ZSTD) or flags & ~RELATIVE:
        raise WireError(f"{what} has transform {transform} and flags {flags}; unknown")
    return VALUE_FORMATS[code], count, bool(flags & RELATIVE), transform, reader


def shuffle(raw: np.ndarray) -> np.ndarray:
    """The byte planes (width x count, C order) of ``raw`` (count x width bytes).

    Plane by plane, like :func:`unshuffle`: each plane is one strided read and one
    sequential write.
    """
    count, width = raw.shape
    planes = np.empty((width, count), dtype=np.uint8)
    for byte in range(width):
        planes[byte] = raw[:, byte]
    return planes


def unshuffle(planes: np.ndarray) -> np.ndarray:
    """Interleave byte planes (width x count) back into count x width bytes.

    Copying plane by plane into the columns is about 5x faster than
    ``np.ascontiguousarray(planes.T)``, whose byte-wise strided gather dominated decoding.
    """
    width, count = planes.shape
    raw = np.empty((count, width), dtype=np.uint8)
    for byte in range(width):
        raw[:, byte] = planes[byte]
    return raw


def decode_values(section: bytes, count: int, what: str) -> tuple[np.ndarray, bool]:
    """The float32 values of a section that must hold exactly ``count`` numbers, and its relative flag."""
    fmt, declared, relative, transform, reader = read_header(section, what)
    if declared != count:
        raise WireError(f"{what} has {declared} entries; expected {count}")
    width = BYTES_PER_VALUE[fmt]
    body = reader.view(len(section) - reader.offset)  # no copy: decompressed or copied once below
    if transform == SHUFFLE_ZSTD:
        planes = np.frombuffer(zstd_decompress(body, count * width, what), dtype=np.uint8)
        raw = unshuffle(planes.reshape(width, count))
    elif len(body) != count * width:
        raise WireError(f"{what} has {len(body)} bytes of values; expected {count * width}")
    else:
        raw = np.frombuffer(body, dtype=np.uint8)
    storage = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}[fmt]
    stored = raw.reshape(-1).view(storage)
    if transform == SHUFFLE_ZSTD and fmt == "float32" and stored.dtype == np.dtype(np.float32):
        return stored, relative  # already a fresh float32 array of its own: no copy
    return from_format(stored, fmt), relative  # a copy, never a view of the section
