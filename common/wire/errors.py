"""The one error every decoder raises, and a bounded reader for binary headers."""

from __future__ import annotations

import struct

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
        if length < 0 or self.offset + length > len(self.data):
            raise WireError(
                f"{self.what} is truncated: a section of {length} bytes starts at byte {self.offset} "
                f"of {len(self.data)}"
            )
        chunk = bytes(self.data[self.offset : self.offset + length])
        self.offset += length
        return chunk

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise WireError(f"{self.what} has {len(self.data) - self.offset} bytes past its last section")


def zstd_compress(data: bytes, level: int) -> bytes:
    """One zstd frame that states its content size (the decoder insists on it)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def zstd_decompress(data: bytes, expected: int, what: str) -> bytes:
    """Decompress one zstd frame of exactly ``expected`` bytes.

    The frame must declare its content size and that size must be ``expected``
    (which the caller derives from the layout), so a hostile frame can never make
    the receiver allocate more than the layout allows; libzstd refuses frames
    whose content exceeds the size they declare. Trailing bytes are an error.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise WireError(f"{what}: not a zstd frame ({exc})") from exc
    if declared != expected:
        raise WireError(f"{what}: zstd frame declares {declared} bytes; expected {expected}")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = decompressor.decompress(data)
    except zstandard.ZstdError as exc:
        raise WireError(f"{what}: corrupt zstd frame ({exc})") from exc
    if not decompressor.eof or decompressor.unused_data or len(out) != expected:
        raise WireError(f"{what}: zstd frame is truncated or followed by extra bytes")
    return out
