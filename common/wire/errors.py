"""The one error every decoder raises, and a bounded reader for binary headers."""

from __future__ import annotations

import struct
import threading

import numpy as np
import zstandard


class WireError(ValueError):
    """A payload that cannot be decoded against the expected layout and mask."""


class Reader:
    """Reads fixed-size fields from a byte buffer; reading past its end is a :class:`WireError`."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = memoryview(data)
        self.what = what
        self.offset = 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise WireError(f"{self.what} is truncated: {len(self.data)} bytes, a header needs more")
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values

    def take(self, length: int) -> bytes:
        return bytes(self.view(length))

    def view(self, length: int) -> memoryview:
        """The next ``length`` bytes without a copy (a view of the buffer read)."""
        if length < 0 or self.offset + length > len(self.data):
            raise WireError(
                f"{self.what} is truncated: a section of {length} bytes starts at byte {self.offset} "
                f"of {len(self.data)}"
            )
        chunk = self.data[self.offset : self.offset + length]
        self.offset += length
        return chunk

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise WireError(f"{self.what} has {len(self.data) - self.offset} bytes past its last section")


_contexts = threading.local()  # zstd contexts are not thread-safe: one set per thread


def _compressor(level: int) -> zstandard.ZstdCompressor:
    compressors = _contexts.__dict__.setdefault("compressors", {})
    if level not in compressors:
        compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressors[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_contexts, "decompressor"):
        _contexts.decompressor = zstandard.ZstdDecompressor()
    return _contexts.decompressor


def zstd_compress(data: bytes | memoryview | np.ndarray, level: int) -> bytes:
    """One zstd frame that states its content size (the decoder insists on it).

    The compression context is kept per thread and level: the frame is the same
    as with a fresh context, without building one per call.
    """
    return _compressor(level).compress(data)


def zstd_decompress(data: bytes | memoryview, expected: int, what: str) -> bytes:
    """Decompress one zstd frame of exactly ``expected`` bytes.

    The frame must declare its content size and that size must be ``expected``
    (which the caller derives from the layout), so a hostile frame can never make
    the receiver allocate more than the layout allows; libzstd refuses frames
    whose content exceeds the size they declare. Trailing bytes are an error.
    The frame is decoded in one call into a buffer of the declared size (no
    streaming, no joining of chunks), with a decompression context kept per thread.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise WireError(f"{what}: not a zstd frame ({exc})") from exc
    if declared != expected:
        raise WireError(f"{what}: zstd frame declares {declared} bytes; expected {expected}")
    try:
        out = _decompressor().decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise WireError(f"{what}: corrupt or truncated zstd frame, or bytes after it ({exc})") from exc
    if len(out) != expected:
        raise WireError(f"{what}: zstd frame is truncated or followed by extra bytes")
    return out
