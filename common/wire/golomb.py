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
and finds the quotients as the distances between the set bits of stream 3; the
mask decoder takes the positions straight from those set bits
(:func:`decode_positions`), without the gaps.

Speed (numpy 2.x, measured on the 2-core sandbox): arrays that index are ``np.intp``
(int32 indices are converted on every use, about 2.5x slower), selections use
``np.compress`` or ``np.flatnonzero`` (a boolean index is several times slower),
differences and running sums are written in place (``np.diff`` with ``prepend``
copies first; ``np.cumsum`` of int32 into int64 is several times slower than a
conversion and an in-place cumsum), and remainders below 256 are bytes.
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
    """int32 when every value stays below ``limit`` < 2^31 (half the memory traffic), else int64.

    For arithmetic only: arrays that index other arrays are ``np.intp``, which numpy
    uses directly (int32 indices are converted first, about 2.5x slower).
    """
    return np.int32 if limit < (1 << 31) else np.int64


def _differences(values: np.ndarray, first: int, dtype: type | None = None) -> np.ndarray:
    """``values[i] - values[i - 1] - 1`` with ``values[-1] = first``: a gap from each entry to the next.

    Several times faster than ``np.diff(values, prepend=...)``, which copies first;
    written as ``dtype`` (default: that of ``values``), which must hold every difference.
    """
    out = np.empty(len(values), dtype=dtype or values.dtype)
    if len(values):
        out[0] = values[0] - first - 1
        np.subtract(values[1:], values[:-1], out=out[1:], casting="unsafe")
        out[1:] -= 1
    return out


def _running_sum(values: np.ndarray, plus: int) -> np.ndarray:
    """``cumsum(values + plus)`` as ``np.intp`` (which numpy indexes with directly).

    Converted first and summed in place: numpy's cumsum of int32 into int64 is
    several times slower than the two steps.
    """
    total = values.astype(np.intp)
    if plus:
        total += plus
    np.cumsum(total, out=total)
    return total


def encode_gaps(gaps: np.ndarray, m: int) -> bytes:
    """The three streams of the Golomb code of ``gaps`` (integers >= 0), packed."""
    count = len(gaps)
    dtype = _index_type(int(gaps.max()) + 1 if count else 0)
    gaps = gaps.astype(dtype, copy=False)
    b, cut = _widths(m)
    # remainders are below m: one byte each when m <= 256 (a quarter of the memory traffic)
    small = np.uint8 if m <= 256 else dtype
    if m & (m - 1) == 0:  # a power of two: shifts instead of divisions
        q = gaps >> b
        r = np.bitwise_and(gaps, m - 1, dtype=small, casting="unsafe")
    else:
        q = gaps // dtype(m)
        r = np.subtract(gaps, q * dtype(m), dtype=small, casting="unsafe")
    width = max(b - 1, 0)
    if b:
        # long codes write r + cut in b bits, short ones r in b - 1: the first b - 1 bits
        # are min(r, (r + cut) >> 1) either way, the last bit of a long code follows apart
        shifted = r + small(cut)  # below 2^b: no overflow in a byte
        prefix = np.minimum(r, shifted >> 1)
        extra = np.compress(r >= cut, shifted).astype(np.uint8) & 1  # faster than a boolean index
    else:
        prefix, extra = r, np.zeros(0, dtype=np.uint8)
    head = count * width + len(extra)
    total = head + int(q.sum(dtype=np.int64)) + count
    bits = np.zeros(total, dtype=np.uint8)
    if width:
        matrix = bits[: count * width].reshape(count, width)  # one row per remainder, MSB first
        for column in range(width):
            matrix[:, column] = prefix >> (width - 1 - column)  # the cast keeps the low byte
        matrix &= 1
    bits[count * width : head] = extra
    ends = _running_sum(q, 1)  # each code's quotient and its terminating one
    ends += head - 1
    bits[ends] = 1
    return np.packbits(bits).tobytes()


def _read_streams(data: bytes | memoryview, count: int, m: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The remainders of ``count`` codes and the positions of their quotients' ones, checked.

    The ``i``-th one of the unary stream sits at ``ends[i] = q_0 + ... + q_i + i``.
    ``count`` >= 1 and ``m`` are checked by :func:`_check_counts` first.
    """
    dtype = _index_type(2 * limit + 2)  # q m + r < 2 limit once q is checked
    b, cut = _widths(m)
    width = max(b - 1, 0)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    head = count * width
    if head > len(bits):
        raise WireError(f"gap stream of {len(data)} bytes is too short for {count} remainders")
    if width:
        matrix = bits[:head].reshape(count, width)
        r = matrix[:, 0].astype(dtype)
        for column in range(1, width):
            r <<= 1
            r |= matrix[:, column]
    else:
        r = np.zeros(count, dtype=dtype)
    if b:
        long = np.flatnonzero(r >= cut)  # each long code's extra bit follows in order
        num_long = len(long)
        if head + num_long > len(bits):
            raise WireError(f"gap stream of {len(data)} bytes is too short for its remainder bits")
        r[long] = ((r[long] << 1) | bits[head : head + num_long]) - dtype(cut)
        head += num_long
    ends = np.flatnonzero(bits[head:].view(bool))  # a bool view is several times faster
    if len(ends) != count:
        raise WireError(f"gap stream holds {len(ends)} unary quotients; expected {count}")
    if len(bits) - head - int(ends[-1]) - 1 >= 8:
        raise WireError("gap stream has whole bytes past its last code")
    if int(ends[-1]) - (count - 1) > limit // m:  # the sum of the quotients
        raise WireError(f"a gap runs past the end of a vector of {limit} entries")
    return ends, r


def decode_gaps(data: bytes | memoryview, count: int, m: int, limit: int) -> np.ndarray:
    """Decode ``count`` gaps coded with parameter ``m`` in a vector of ``limit`` entries.

    Raises :class:`WireError` when ``m`` or ``count`` cannot occur in such a vector,
    the streams are too short, carry more or fewer quotients than ``count`` or
    whole padding bytes, or the gaps run past the end of the vector. Nothing is
    allocated beyond a few arrays of ``count`` entries and 8 bytes per input byte.
    """
    if _check_counts(data, count, m, limit):
        return np.zeros(0, dtype=np.int64)
    ends, r = _read_streams(data, count, m, limit)
    gaps = _differences(ends, -1).astype(r.dtype)  # the quotients, each at most limit // m
    gaps *= r.dtype.type(m)
    gaps += r
    if int(gaps.sum(dtype=np.int64)) + count > limit:
        raise WireError(f"gaps run past the end of a vector of {limit} entries")
    return gaps


def decode_positions(data: bytes | memoryview, count: int, m: int, limit: int) -> np.ndarray:
    """The positions (``np.intp``, sorted) that :func:`decode_gaps` codes, with the same checks.

    Computed from the unary stream without the gaps: the ``i``-th position is
    ``m (q_0 + ... + q_i) + (r_0 + ... + r_i) + i``, and ``ends_i = q_0 + ... + q_i + i``,
    so it is ``m ends_i + cumsum(r - (m - 1))_i + m - 1``: fewer passes over the
    arrays, and fewer of them allocated, than the gaps and then their running sum.
    """
    if _check_counts(data, count, m, limit):
        return np.zeros(0, dtype=np.intp)
    if count * m >= 1 << 62:  # cumsum(r) < count m could overflow: an absurd stream; the slow path
        return gaps_to_positions(decode_gaps(data, count, m, limit), limit)
    ends, r = _read_streams(data, count, m, limit)
    positions = ends  # a fresh array: reused in place
    positions *= m  # m (q_0 + ... + q_i + i): below 2^62 + limit
    positions += _running_sum(r, 1 - m)  # + r_0 + ... + r_i - (m - 1) (i + 1)
    positions += m - 1
    if int(positions[-1]) >= limit:  # positions increase: each step is q m + r + 1 >= 1
        raise WireError(f"gaps run past the end of a vector of {limit} entries")
    return positions


def _check_counts(data: bytes | memoryview, count: int, m: int, limit: int) -> bool:
    """Raise unless ``m`` and ``count`` can occur in a vector of ``limit`` entries; True if empty."""
    if not 1 <= m <= max(limit, 1):
        raise WireError(f"Golomb parameter {m} is out of range [1, {limit}]")
    if not 0 <= count <= limit:
        raise WireError(f"a gap stream of {count} codes cannot occur in a vector of {limit} entries")
    if count == 0 and data:
        raise WireError("an empty gap stream carries bytes")
    return count == 0


def positions_to_gaps(positions: np.ndarray, start: int = -1) -> np.ndarray:
    """Gaps before each of the sorted ``positions``; the first counts from ``start`` + 1.

    ``start`` is the position before the vector's first entry: -1, or ``offset - 1``
    for positions in a larger vector whose slice from ``offset`` is the one coded.
    """
    positions = np.asarray(positions)
    if len(positions) and positions.dtype.itemsize > 4 and int(positions[-1]) - start < (1 << 31):
        return _differences(positions, start, np.int32)  # what encode_gaps computes with
    return _differences(positions, start)


def gaps_to_positions(gaps: np.ndarray, length: int) -> np.ndarray:
    """Positions (``np.intp``, to index with) from gaps, checked to lie inside a vector of ``length``."""
    if int(gaps.sum(dtype=np.int64)) + len(gaps) > length:
        raise WireError(f"gaps run past the end of a tensor of {length} entries")
    positions = _running_sum(gaps, 1)
    positions -= 1
    return positions
