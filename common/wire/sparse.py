"""Sparse vectors on the wire: the nonzero entries of each segment, as index gaps + bfloat16.

PruneFL's compressed importance upload (``pruning.prunefl.importance-upload =
"top"``, :mod:`common.pruning.prunefl_top`) sends, per prunable layer, only the
largest entries of a client's importance at that layer's pruned positions; the
rest are implied zero. The vector is cut into *segments* (one per layer) whose
lengths both ends know from the layout and the mask, and whose *limits* (the most
entries a segment may carry) the server announced in the task; this module codes
the nonzero entries of each segment and checks every field when decoding.

Section layout (little-endian)::

    u8 version, u8 reserved, u16 reserved, u32 number of segments
    per segment: u64 count, u32 Golomb parameter m, u64 bytes of its gap stream
    the gap streams, one after the other (:mod:`common.wire.golomb`)
    one value section (:mod:`common.wire.values`): the counts' values, bfloat16
    (or float32 when the plan says so), segment by segment, in increasing position

A segment of ``n`` entries with ``k`` sent costs about ``k (16 + log2(n / k) + 1.5)``
bits before zstd: the Golomb code of geometric gaps is within 1% of the entropy
(``shared/notes/wire.md``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .errors import Reader, WireError
from .golomb import decode_positions, encode_gaps, golomb_parameter, positions_to_gaps
from .values import ValueFormat, decode_values, encode_values, quantize, read_header

FORMAT_VERSION = 1
SECTION_HEADER = "<BBHI"
SEGMENT_HEADER = "<QIQ"
SPARSE_FORMATS: tuple[ValueFormat, ...] = ("bfloat16", "float32")


@dataclass(frozen=True)
class SparsePlan:
    """The segments of a sparse vector: their lengths and the most entries each may carry."""

    lengths: tuple[int, ...]
    limits: tuple[int, ...]
    values: ValueFormat = "bfloat16"  # bfloat16 (2 bytes, relative error <= 2^-8) or float32 (exact)

    def __post_init__(self) -> None:
        if self.values not in SPARSE_FORMATS:
            raise ValueError(f"sparse values are one of {SPARSE_FORMATS}, not {self.values!r}")
        if len(self.lengths) != len(self.limits):
            raise ValueError(f"a plan needs one limit per segment, got {self.lengths} and {self.limits}")
        for length, limit in zip(self.lengths, self.limits, strict=True):
            if length < 0 or not 0 <= limit <= length:
                raise ValueError(f"segment of {length} entries with limit {limit}; need 0 <= limit <= length")

    @property
    def length(self) -> int:
        """Entries of the whole vector."""
        return sum(self.lengths)

    @property
    def max_entries(self) -> int:
        """The most entries a section for this plan may carry."""
        return sum(self.limits)

    def bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every segment in the vector."""
        stops = np.cumsum(self.lengths, dtype=np.int64).tolist()
        return list(zip([0, *stops[:-1]], stops, strict=True))


def _segment_code(values: np.ndarray, limit: int, index: int) -> tuple[np.ndarray, bytes, int]:
    """Positions of the nonzero entries of one segment, their Golomb-coded gaps and m."""
    positions = np.flatnonzero(values)
    if len(positions) > limit:
        raise WireError(f"segment {index} has {len(positions)} nonzero entries; its limit is {limit}")
    m = golomb_parameter(len(positions) / len(values)) if len(positions) else 1
    return positions, encode_gaps(positions_to_gaps(positions), m), m


def encode_sparse(vector: np.ndarray, plan: SparsePlan, level: int) -> bytes:
    """A sparse section of ``vector``'s nonzero entries (at most ``plan.limits`` per segment).

    The nonzero entries are rounded to ``plan.values`` first, so an entry that
    rounds to zero is not sent (it would decode as zero either way).
    """
    vector = np.asarray(vector, dtype=np.float32)
    if len(vector) != plan.length:
        raise WireError(f"a vector of {len(vector)} entries for a plan of {plan.length}")
    rounded = quantize(vector, plan.values)
    headers, streams, sent = [], [], []
    for index, ((start, stop), limit) in enumerate(zip(plan.bounds(), plan.limits, strict=True)):
        segment = rounded[start:stop]
        positions, stream, m = _segment_code(segment, limit, index)
        headers.append(struct.pack(SEGMENT_HEADER, len(positions), m, len(stream)))
        streams.append(stream)
        sent.append(segment[positions])
    values = np.concatenate(sent) if sent else np.zeros(0, dtype=np.float32)
    head = struct.pack(SECTION_HEADER, FORMAT_VERSION, 0, 0, len(plan.lengths))
    return b"".join([head, *headers, *streams, encode_values(values, plan.values, level)])


def _read_segment_headers(reader: Reader, plan: SparsePlan, what: str) -> list[tuple[int, int, int]]:
    version, _, _, num_segments = reader.unpack(SECTION_HEADER)
    if version != FORMAT_VERSION:
        raise WireError(f"{what} has sparse format version {version}; this node reads {FORMAT_VERSION}")
    if num_segments != len(plan.lengths):
        raise WireError(f"{what} has {num_segments} segments; expected {len(plan.lengths)}")
    headers = []
    for index, (length, limit) in enumerate(zip(plan.lengths, plan.limits, strict=True)):
        count, m, num_bytes = reader.unpack(SEGMENT_HEADER)
        if count > limit:
            raise WireError(
                f"{what}: segment {index} carries {count} entries; at most {limit} of its {length} may come"
            )
        if num_bytes > len(reader.data) - reader.offset:
            raise WireError(
                f"{what}: segment {index} declares a gap stream of {num_bytes} bytes past its end"
            )
        headers.append((count, m, num_bytes))
    return headers


def decode_sparse(section: bytes, plan: SparsePlan, what: str) -> np.ndarray:
    """The float32 vector of ``plan.length`` entries that ``section`` codes (zeros where none was sent).

    Raises :class:`WireError` for another version or segment count, a segment
    carrying more than its limit, positions that are not strictly increasing
    inside their segment (the gap code cannot express that, and a stream that
    runs past the segment is refused), value sections of another count or format,
    and bytes left over.
    """
    reader = Reader(section, what)
    headers = _read_segment_headers(reader, plan, what)
    out = np.zeros(plan.length, dtype=np.float32)
    targets = []
    for index, ((count, m, num_bytes), (start, stop)) in enumerate(zip(headers, plan.bounds(), strict=True)):
        stream = reader.view(num_bytes)
        try:
            positions = decode_positions(stream, count, m, stop - start)
        except WireError as exc:
            raise WireError(f"{what}: segment {index}: {exc}") from exc
        targets.append(positions + start)
    body = bytes(reader.view(len(reader.data) - reader.offset))
    fmt = read_header(body, f"{what} values")[0]
    if fmt != plan.values:
        raise WireError(f"{what} values are written in {fmt}; this round's sparse upload sends {plan.values}")
    total = sum(count for count, _, _ in headers)
    values, relative = decode_values(body, total, f"{what} values")
    if relative:
        raise WireError(f"{what} values cannot be relative")
    if targets:
        out[np.concatenate(targets)] = values
    return out


def sparse_counts(section: bytes, what: str) -> tuple[int, ValueFormat]:
    """The number of entries a sparse section carries and their format, from its headers (for the bound)."""
    reader = Reader(section, what)
    version, _, _, num_segments = reader.unpack(SECTION_HEADER)
    if version != FORMAT_VERSION:
        raise WireError(f"{what} has sparse format version {version}; this node reads {FORMAT_VERSION}")
    heads = [reader.unpack(SEGMENT_HEADER) for _ in range(num_segments)]
    reader.view(sum(num_bytes for _, _, num_bytes in heads))
    fmt = read_header(bytes(reader.view(len(reader.data) - reader.offset)), f"{what} values")[0]
    return sum(count for count, _, _ in heads), fmt
