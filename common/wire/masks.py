"""Masks on the wire: each prunable tensor coded by whichever encoding is smallest.

A mask section codes the prunable part of a mask, tensor by tensor, either
*directly* or as the *XOR delta* against a base mask the receiver already holds
(named by its version; version 0 is the dense mask every node knows). For each
tensor the encoder codes the bits (new mask, or new XOR base) with each candidate
below and keeps the smallest:

==========  =====================================================================
encoding    body
==========  =====================================================================
constant    nothing: every bit equals ``symbol``
channels    one bit per index along ``axis`` (0 = output channels, 1 = input
            channels): the bits are constant along every other axis
            (structured pruning; detected, never declared)
golomb      Golomb code of the gaps between bits equal to ``symbol`` (the rarer
            value), see :mod:`common.wire.golomb`: within 1% of n H(d) for
            i.i.d. masks
zstd        zstd over the packed bits (clustered masks)
bitmap      the packed bits (np.packbits)
==========  =====================================================================

Direct and delta coding are compared per tensor too, so a delta is never larger
than sending the mask itself. The bound for a tensor of n weights is
``n min(H(d), H(f)) / 8`` bytes, f the fraction of bits that differ from the base.

Section layout (little-endian): ``u8 version, u64 base version, u32 tensors``, then
per tensor ``u8 mode (0 direct, 1 XOR), u8 encoding, u8 symbol-or-axis, u32 golomb
m, u32 count, u32 body bytes``, then the bodies in tensor order.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..layout import ModelLayout, TensorSpec
from .errors import Reader, WireError, zstd_compress, zstd_decompress
from .golomb import decode_positions, encode_gaps, golomb_parameter, positions_to_gaps

FORMAT_VERSION = 1
SECTION_HEADER = "<BQI"
TENSOR_HEADER = "<BBBIII"
MAX_COUNT = (1 << 32) - 1

DIRECT, XOR = 0, 1
CONSTANT, CHANNELS, GOLOMB, ZSTD, BITMAP = range(5)
ENCODING_NAMES = ("constant", "channels", "golomb", "zstd", "bitmap")

# Decoding a delta needs the base mask: a callable from version to the full mask
# (None when the receiver does not hold that version).
BaseLookup = Callable[[int], "np.ndarray | None"]


@dataclass(frozen=True)
class CodedBits:
    """One tensor's bits, coded."""

    encoding: int
    symbol: int = 0  # constant: the value; golomb: the coded value; channels: the axis
    m: int = 0  # golomb parameter
    count: int = 0  # golomb: how many bits equal ``symbol``
    body: bytes | memoryview = b""  # decoding reads it in place from the section


def _rows_constant(rows: np.ndarray) -> bool:
    """Whether every row of a 2-D bool array is all True or all False."""
    return bool(np.array_equal(rows.all(axis=1), rows.any(axis=1)))


def _channel_axis(bits: np.ndarray) -> int | None:
    """The axis (0 or 1) along which ``bits`` (a shaped tensor) varies alone, if any.

    Such a mask is constant along every other axis: whole output channels (axis
    0) or whole input channels (axis 1) kept or pruned. Each test first looks at
    one slice, so an unstructured mask is rejected at almost no cost.
    """
    if bits.ndim < 2:
        return None
    rows = bits.reshape(bits.shape[0], -1)
    if rows[0].all() == rows[0].any() and _rows_constant(rows):
        return 0
    # axis 1: every slice along axis 0 equals the first, whose rows along axis 1 are constant
    first = bits[0].reshape(bits.shape[1], -1)
    if _rows_constant(first) and np.array_equal(bits[-1], bits[0]) and (bits == bits[:1]).all():
        return 1
    return None


def _channel_bits(bits: np.ndarray, axis: int) -> np.ndarray:
    index = [0] * bits.ndim
    index[axis] = slice(None)
    return bits[tuple(index)]


def expected_golomb_bytes(n: int, count: int) -> float:
    """Expected size of the Golomb code of ``count`` geometric gaps in ``n`` bits."""
    p = count / n
    m = golomb_parameter(p)
    b = (m - 1).bit_length()
    cut = (1 << b) - m
    q = 1.0 - p
    # E[quotient] = sum_{j>=1} P(g >= j m) = q^m / (1 - q^m); P(long) = P(r >= cut)
    quotient = q**m / (1.0 - q**m) if q**m < 1 else math.inf
    long = (q**cut - q**m) / (1 - q**m) if b else 0.0
    return count * (1 + quotient + max(b - 1, 0) + long) / 8


def encode_bits(
    bits: np.ndarray, level: int, set_positions: np.ndarray | None = None, offset: int = 0
) -> CodedBits:
    """Code one tensor's bits (shaped bool array) with the smallest encoding.

    ``set_positions`` are the flat positions of the set bits, when the caller has
    them, plus ``offset`` (positions in a larger vector whose slice from ``offset``
    is this tensor).
    """
    flat = bits.reshape(-1)
    n = flat.size
    ones = len(set_positions) if set_positions is not None else int(np.count_nonzero(flat))
    if ones in (0, n):
        return CodedBits(CONSTANT, symbol=int(ones == n))
    axis = _channel_axis(bits)
    if axis is not None:
        return CodedBits(CHANNELS, symbol=axis, body=np.packbits(_channel_bits(bits, axis)).tobytes())
    packed = np.packbits(flat)
    best = CodedBits(BITMAP, body=packed.tobytes())
    if level > 0:
        squeezed = zstd_compress(best.body, level)
        if len(squeezed) < len(best.body):
            best = CodedBits(ZSTD, body=squeezed)
    symbol = int(ones <= n - ones)
    count = ones if symbol else n - ones
    if count <= MAX_COUNT and expected_golomb_bytes(n, count) < 0.99 * len(best.body):
        if symbol and set_positions is not None:
            gaps = positions_to_gaps(set_positions, offset - 1)
        else:
            gaps = positions_to_gaps(np.flatnonzero(flat if symbol else ~flat))
        m = golomb_parameter(count / n)
        body = encode_gaps(gaps, m)
        if len(body) < len(best.body):
            best = CodedBits(GOLOMB, symbol=symbol, m=m, count=count, body=body)
    return best


def decode_bits(
    coded: CodedBits, shape: tuple[int, ...], what: str, out: np.ndarray | None = None
) -> np.ndarray:
    """The flat bool vector of a tensor of ``shape`` from its coded form.

    With ``out`` (a flat bool array of the tensor's size, such as its slice of the
    full mask) the bits are written there and ``out`` is returned: no copy. ``out``
    may be partly written when a :class:`WireError` is raised.
    """
    n = int(np.prod(shape, dtype=np.int64))
    if out is None:
        out = np.empty(n, dtype=bool)
    elif out.shape != (n,) or out.dtype != bool or not out.flags.c_contiguous:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; expected contiguous ({n},) bool")
    if coded.encoding == CONSTANT:
        if coded.symbol not in (0, 1) or coded.body:
            raise WireError(f"{what}: a constant mask is 0 or 1 and carries no body")
        out[:] = bool(coded.symbol)
    elif coded.encoding == CHANNELS:
        axis = coded.symbol
        if axis >= min(len(shape), 2):
            raise WireError(f"{what}: channel axis {axis} does not exist for shape {shape}")
        channels = _unpack(coded.body, shape[axis], what)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        out.reshape(shape)[...] = channels.reshape(view)
    elif coded.encoding == BITMAP:
        out[:] = _unpack(coded.body, n, what)
    elif coded.encoding == ZSTD:
        out[:] = _unpack(zstd_decompress(coded.body, -(-n // 8), what), n, what)
    elif coded.encoding == GOLOMB:
        if coded.symbol not in (0, 1) or not 0 < coded.count <= n:
            raise WireError(f"{what}: Golomb stream of {coded.count} bits equal to {coded.symbol} in {n}")
        positions = decode_positions(coded.body, coded.count, coded.m, n)
        out[:] = not coded.symbol
        out[positions] = bool(coded.symbol)
    else:
        raise WireError(f"{what}: unknown mask encoding {coded.encoding}")
    return out


def _unpack(body: bytes | memoryview, n: int, what: str) -> np.ndarray:
    if len(body) != -(-n // 8):
        raise WireError(f"{what}: bitmap of {len(body)} bytes; expected {-(-n // 8)} for {n} bits")
    bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8))
    if bits[n:].any():
        raise WireError(f"{what}: bits set past the last weight")
    return bits[:n].view(bool)


def _tensor_bits(mask: np.ndarray, tensor: TensorSpec) -> np.ndarray:
    return mask[tensor.slice].reshape(tensor.shape)


def encode_mask(
    layout: ModelLayout,
    mask: np.ndarray,
    base: np.ndarray | None = None,
    base_version: int = 0,
    level: int = 1,
    kept: np.ndarray | None = None,
) -> tuple[bytes, list[CodedBits]]:
    """The mask section of ``mask`` (a full mask), as a delta against ``base`` when given.

    ``base`` is the mask of version ``base_version`` that the receiver holds
    (None: code every tensor directly; the base version is then 0). ``kept`` are
    the positions of True in ``mask`` when the caller has them (saves a pass).
    Returns the section and the chosen encodings (for the benchmark's table).
    """
    headers, bodies, chosen = [], [], []
    for tensor in layout.prunable:
        bits = _tensor_bits(mask, tensor)
        ones = None
        if kept is not None:
            start, stop = np.searchsorted(kept, [tensor.offset, tensor.offset + tensor.size])
            ones = kept[start:stop]  # offset by tensor.offset: encode_bits takes them so
        mode, coded = DIRECT, encode_bits(bits, level, ones, tensor.offset)
        if base is not None and coded.encoding not in (CONSTANT, CHANNELS):
            delta = encode_bits(bits ^ _tensor_bits(base, tensor), level)
            if len(delta.body) < len(coded.body):
                mode, coded = XOR, delta
        fields = (mode, coded.encoding, coded.symbol, coded.m, coded.count, len(coded.body))
        headers.append(struct.pack(TENSOR_HEADER, *fields))
        bodies.append(coded.body)
        chosen.append(coded)
    version = base_version if base is not None else 0
    head = struct.pack(SECTION_HEADER, FORMAT_VERSION, version, len(layout.prunable))
    return b"".join([head, *headers, *bodies]), chosen


def mask_base_version(section: bytes) -> int:
    """The base version a mask section is a delta against (0: none or the dense mask)."""
    version, base, _ = Reader(section, "mask section").unpack(SECTION_HEADER)
    if version != FORMAT_VERSION:
        raise WireError(f"mask section has format version {version}; this node reads {FORMAT_VERSION}")
    return base


def decode_mask(section: bytes, layout: ModelLayout, base_lookup: BaseLookup) -> np.ndarray:
    """The full mask coded in ``section``; XOR tensors use ``base_lookup(base version)``."""
    reader = Reader(section, "mask section")
    version, base_version, tensors = reader.unpack(SECTION_HEADER)
    if version != FORMAT_VERSION:
        raise WireError(f"mask section has format version {version}; this node reads {FORMAT_VERSION}")
    if tensors != len(layout.prunable):
        raise WireError(f"mask section codes {tensors} tensors; the layout has {len(layout.prunable)}")
    headers = [reader.unpack(TENSOR_HEADER) for _ in range(tensors)]
    base = None
    mask = layout.full_mask()
    for tensor, (mode, encoding, symbol, m, count, length) in zip(layout.prunable, headers, strict=True):
        what = f"mask of {tensor.name}"
        if mode not in (DIRECT, XOR):
            raise WireError(f"{what}: unknown mode {mode}")
        if mode == XOR and base is None:
            base = layout.full_mask() if base_version == 0 else base_lookup(base_version)
            if base is None:
                raise WireError(f"mask is a delta against version {base_version}, which is not held here")
        bits = mask[tensor.slice]  # decoded in place
        coded = CodedBits(encoding, symbol, m, count, reader.view(length))  # the body read in place
        decode_bits(coded, tensor.shape, what, out=bits)
        if mode == XOR:
            bits ^= base[tensor.slice]
    reader.finish()
    return mask


def mask_bound_bits(layout: ModelLayout, mask: np.ndarray, base: np.ndarray | None = None) -> float:
    """sum over prunable tensors of n min(H(d), H(f)): the information in the mask.

    ``f`` is the fraction of the tensor's bits that differ from ``base`` (the
    receiver's mask); without a base only H(d) counts.
    """
    total = 0.0
    for tensor in layout.prunable:
        bits = mask[tensor.slice]
        entropy = binary_entropy(float(np.count_nonzero(bits)) / tensor.size)
        if base is not None:
            flips = np.count_nonzero(bits != base[tensor.slice])
            entropy = min(entropy, binary_entropy(float(flips) / tensor.size))
        total += tensor.size * entropy
    return total


def binary_entropy(d: float) -> float:
    """H(d) = -d log2 d - (1 - d) log2 (1 - d) in bits; 0 at d = 0 and d = 1."""
    if d <= 0.0 or d >= 1.0:
        return 0.0
    return float(-d * np.log2(d) - (1 - d) * np.log2(1 - d))
