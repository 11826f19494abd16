"""Golomb coding of index gaps, vectorised in numpy.

A sparse bit vector is sent as the gaps ``g_i >= 0`` between its set positions
(the number of unset bits before each set bit). For i.i.d. bits with density p,
the gaps are geometric, and the Golomb code with parameter

    m = ceil(log(2 - p) / -log(1 - p))           (Gallager & Van Voorhis, 1975)

is the optimal prefix code for them. Each gap is split as ``g = q m + r``: ``q`` in
unary (q zeros, then a one), ``r`` in truncated binary (``b = ceil(log2 m)`` bits,
``cut = 2^b - m``: ``r < cut`` takes b - 1 bits, else ``r + cut`` takes b bits).
Its expected length is within 0.8% of the entropy H(p)/p per set bit for every
p >= 0.001 (Rice codes, m a power of two, reach 2.4%).

To decode with array operations instead of a bit-by-bit loop, the codes of all
gaps are stored as three separate streams, concatenated and packed MSB first:

1. the leading ``b - 1`` bits of every remainder (fixed width);
2. the last bit of each long remainder (those whose leading bits are >= ``cut``);
3. the unary quotients: each set bit ends one quotient.

The decoder reads stream 1 as a matrix, counts the long codes to find stream 2,
and finds the quotients as the distances between the set bits of stream 3.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import WireError


def golomb_parameter(p: float) -> int:
    """Optimal Golomb parameter m for geometric gaps of a symbol with probability ``p``."""
    if p >= 0.5:
        return 1
    q = 1.0 - p
    m = math.ceil(math.log(1 + q) / -math.log(q))
    return max(m, 1)


def _widths(m: int) -> tuple[int, int]:
    """Bits of the truncated-binary remainder (b) and the number of short codes (cut)."""
    b = (m - 1).bit_length()
    return b, (1 << b) - m


def _index_type(limit: int) -> type[np.signedinteger]:
    """int32 when every value stays below ``limit`` < 2^31 (half the memory traffic), else int64."""
    return np.int32 if limit < (1 << 31) else np.int64


def encode_gaps(gaps: np.ndarray, m: int) -> bytes:
    """The three streams of the Golomb code of ``gaps`` (integers >= 0), packed."""
    count = len(gaps)
    dtype = _index_type(int(gaps.max()) + 1 if count else 0)
    gaps = gaps.astype(dtype, copy=False)
    b, cut = _widths(m)
    if m & (m - 1) == 0:  # a power of two: shifts instead of divisions
        q, r = gaps >> b, gaps & dtype(m - 1)
    else:
        q = gaps // dtype(m)
        r = gaps - q * dtype(m)
    width = max(b - 1, 0)
    if b:
        # long codes write r + cut in b bits, short ones r in b - 1: the first b - 1 bits
        # are min(r, (r + cut) >> 1) either way, the last bit of a long code follows apart
        shifted = r + dtype(cut)
        prefix = np.minimum(r, shifted >> 1)
        extra = shifted[r >= cut].astype(np.uint8) & 1
    else:
        prefix, extra = r, np.zeros(0, dtype=np.uint8)
    head = count * width + len(extra)
    total = head + int(q.sum(dtype=np.int64)) + count
    bits = np.zeros(total, dtype=np.uint8)
    if width:
        matrix = bits[: count * width].reshape(count, width)  # one row per remainder, MSB first
        for column in range(width):
            matrix[:, column] = prefix >> (width - 1 - column)  # cast keeps the low byte
        matrix &= 1
    bits[count * width : head] = extra
    q += 1
    ends = np.cumsum(q, dtype=_index_type(total))
    ends += head - 1
    bits[ends] = 1
    return np.packbits(bits).tobytes()


def decode_gaps(data: bytes, count: int, m: int, limit: int) -> np.ndarray:
    """Decode ``count`` gaps coded with parameter ``m`` in a vector of ``limit`` entries.

    Raises :class:`WireError` when ``m`` or ``count`` cannot occur in such a vector,
    the streams are too short, carry more or fewer quotients than ``count`` or
    whole padding bytes, or the gaps run past the end of the vector. Nothing is
    allocated beyond a few arrays of ``count`` entries and 8 bytes per input byte.
    """
    if not 1 <= m <= max(limit, 1):
        raise WireError(f"Golomb parameter {m} is out of range [1, {limit}]")
    if not 0 <= count <= limit:
        raise WireError(f"a gap stream of {count} codes cannot occur in a vector of {limit} entries")
    if count == 0:
        if data:
            raise WireError("an empty gap stream carries bytes")
        return np.zeros(0, dtype=np.int64)
    dtype = _index_type(2 * limit + 2)  # q m + r < 2 limit once q is checked
    b, cut = _widths(m)
    width = max(b - 1, 0)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    head = count * width
    if head > len(bits):
        raise WireError(f"gap stream of {len(data)} bytes is too short for {count} remainders")
    if width:
        matrix = bits[:head].reshape(count, width)
        prefix = matrix[:, 0].astype(dtype)
        for column in range(1, width):
            prefix <<= 1
            prefix |= matrix[:, column]
    else:
        prefix = np.zeros(count, dtype=dtype)
    r = prefix
    if b:
        long = prefix >= cut
        rank = np.cumsum(long, dtype=dtype)  # 1-based index of each long code's extra bit
        num_long = int(rank[-1])
        if head + num_long > len(bits):
            raise WireError(f"gap stream of {len(data)} bytes is too short for its remainder bits")
        extras = np.zeros(num_long + 1, dtype=dtype)
        extras[1:] = bits[head : head + num_long]
        r = np.where(long, ((prefix << 1) | extras[rank]) - dtype(cut), prefix)
        head += num_long
    ends = np.flatnonzero(bits[head:].view(bool))  # a bool view is several times faster
    if len(ends) != count:
        raise WireError(f"gap stream holds {len(ends)} unary quotients; expected {count}")
    if len(bits) - head - int(ends[-1]) - 1 >= 8:
        raise WireError("gap stream has whole bytes past its last code")
    q = np.diff(ends, prepend=-1)
    q -= 1
    if int(q.max()) > limit // m:
        raise WireError(f"a gap runs past the end of a vector of {limit} entries")
    gaps = q.astype(dtype) * dtype(m) + r
    if int(gaps.sum(dtype=np.int64)) + count > limit:
        raise WireError(f"gaps run past the end of a vector of {limit} entries")
    return gaps


def positions_to_gaps(positions: np.ndarray) -> np.ndarray:
    """Gaps before each of the sorted ``positions``."""
    return np.diff(positions, prepend=-1) - 1


def gaps_to_positions(gaps: np.ndarray, length: int) -> np.ndarray:
    """Positions from gaps, checked to lie inside a vector of ``length`` entries."""
    if int(gaps.sum(dtype=np.int64)) + len(gaps) > length:
        raise WireError(f"gaps run past the end of a tensor of {length} entries")
    positions = np.cumsum(gaps + 1, dtype=_index_type(length))
    positions -= 1
    return positions
