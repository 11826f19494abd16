"""Encoding a masked model into a few byte arrays, and decoding it with checks.

A payload holds the *kept* float values only (the receiver knows or is sent the
mask), the integer buffers, and optionally the mask and an importance vector.
Each travels as one Flower ``Array`` of raw bytes (``dtype="uint8"``, its own
``stype``; no ``.npy`` header, nothing for ``np.load`` to unpickle):

==============  =================================================================
array           content
==============  =================================================================
``values``      value section (:mod:`common.wire.values`): ``floats[mask]`` in
                layout order, float32 by default (or float16 / bfloat16),
                byte-shuffled and zstd-compressed when that is smaller
``counters``    the integer buffers, int64 little-endian (omitted for models
                without any)
``mask``        mask section (:mod:`common.wire.masks`), only when the receiver's
                copy is stale: per tensor the smallest of Golomb-coded gaps, zstd
                or plain bitmap, a per-channel bitmap for structured masks, as an
                XOR delta against a version the receiver holds where smaller
``importance``  value section of the importance statistic, only when asked for
``importance-   sparse section (:mod:`common.wire.sparse`) of the statistic instead,
top``           when the method announced a sparse plan (PruneFL's ``top`` upload):
                per segment the nonzero entries, as Golomb-coded gaps + bfloat16
==============  =================================================================

Keeping them apart lets :mod:`common.wire.accounting` report bytes by
category. Decoding checks every length against the layout and the mask before
allocating, and raises :class:`WireError` naming the array and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from ..layout import ModelLayout
from . import masks
from .errors import WireError
from .sparse import SparsePlan, decode_sparse, encode_sparse, sparse_counts
from .values import ValueFormat, decode_values, encode_values, read_header, value_bits

VALUES = "values"
COUNTERS = "counters"
MASK = "mask"
IMPORTANCE = "importance"
IMPORTANCE_TOP = "importance-top"
ARRAY_NAMES = (VALUES, COUNTERS, MASK, IMPORTANCE, IMPORTANCE_TOP)
STYPES = {name: f"fedprune.{name}.v1" for name in ARRAY_NAMES}


@dataclass(frozen=True)
class WireFormat:
    """How numbers are written: value and importance formats, zstd level (0 = off)."""

    values: ValueFormat = "float32"
    importance: ValueFormat = "float32"
    level: int = 1

    @property
    def lossy_values(self) -> bool:
        return self.values != "float32"


@dataclass
class ModelPayload:
    values: np.ndarray
    counters: np.ndarray
    mask: np.ndarray | None = None  # the full mask (over the layout's floats), when it travels
    statistic: np.ndarray | None = None  # a method's uploaded vector (PruneFL's importance)
    relative: bool = False  # values are an update relative to a reference both ends hold
    statistic_plan: SparsePlan | None = None  # send ``statistic`` sparse, in these segments


@dataclass(frozen=True)
class PayloadInfo:
    """What a record carries, read from its section headers only (for the bound)."""

    num_values: int = 0
    value_bits: int = 32
    num_importance: int = 0
    importance_bits: int = 32
    mask_base: int | None = None  # base version of the mask section; None when no mask travels


def _array(name: str, data: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(data),), stype=STYPES[name], data=data)


def values_array(values: np.ndarray, fmt: WireFormat, relative: bool = False) -> Array:
    return _array(VALUES, encode_values(values, fmt.values, fmt.level, relative))


def counters_array(counters: np.ndarray) -> Array:
    return _array(COUNTERS, np.ascontiguousarray(counters, dtype="<i8").tobytes())


def mask_array(
    layout: ModelLayout,
    mask: np.ndarray,
    fmt: WireFormat,
    base: np.ndarray | None = None,
    base_version: int = 0,
    kept: np.ndarray | None = None,
) -> Array:
    section, _ = masks.encode_mask(layout, mask, base, base_version, fmt.level, kept)
    return _array(MASK, section)


def importance_array(importance: np.ndarray, fmt: WireFormat) -> Array:
    return _array(IMPORTANCE, encode_values(importance, fmt.importance, fmt.level))


def importance_top_array(importance: np.ndarray, plan: SparsePlan, fmt: WireFormat) -> Array:
    return _array(IMPORTANCE_TOP, encode_sparse(importance, plan, fmt.level))


def encode_payload(
    payload: ModelPayload,
    layout: ModelLayout,
    fmt: WireFormat = WireFormat(),
    base: np.ndarray | None = None,
    base_version: int = 0,
    kept: np.ndarray | None = None,
) -> ArrayRecord:
    """The payload as an ``ArrayRecord``; the mask as a delta against ``base`` when given.

    ``kept`` are the positions of True in ``payload.mask`` when the caller has them.
    """
    arrays = {VALUES: values_array(payload.values, fmt, payload.relative)}
    if payload.counters.size:
        arrays[COUNTERS] = counters_array(payload.counters)
    if payload.mask is not None:
        arrays[MASK] = mask_array(layout, payload.mask, fmt, base, base_version, kept)
    if payload.statistic is not None and payload.statistic_plan is not None:
        arrays[IMPORTANCE_TOP] = importance_top_array(payload.statistic, payload.statistic_plan, fmt)
    elif payload.statistic is not None:
        arrays[IMPORTANCE] = importance_array(payload.statistic, fmt)
    return ArrayRecord(arrays)


def _section(record: ArrayRecord, name: str) -> bytes:
    if name not in record:
        raise WireError(f"array {name!r} is missing")
    array = record[name]
    if array.stype != STYPES[name] or array.dtype != "uint8":
        raise WireError(
            f"array {name!r} has stype {array.stype!r} and dtype {array.dtype!r}; "
            f"expected {STYPES[name]!r} bytes"
        )
    if not isinstance(array.data, bytes) or tuple(array.shape) != (len(array.data),):
        raise WireError(f"array {name!r} declares shape {array.shape} for {len(array.data)} bytes")
    return array.data


def mask_base_version(record: ArrayRecord) -> int | None:
    """The version the record's mask is a delta against (0: none), or None if it carries no mask."""
    return masks.mask_base_version(_section(record, MASK)) if MASK in record else None


def decode_mask(
    record: ArrayRecord, layout: ModelLayout, base_lookup: masks.BaseLookup | None = None
) -> np.ndarray | None:
    """The full mask carried by ``record``, or None if it carries none.

    ``base_lookup(version)`` returns the receiver's mask of that version (or None);
    it is needed only when the mask is a delta against a version other than 0.
    """
    if MASK not in record:
        return None
    return masks.decode_mask(_section(record, MASK), layout, base_lookup or (lambda _version: None))


def require_format(section: bytes, what: str, expected: ValueFormat | None) -> None:
    """Raise unless the value section ``section`` is written in ``expected`` (None: any format)."""
    if expected is None:
        return
    fmt = read_header(section, what)[0]
    if fmt != expected:
        raise WireError(f"{what} is written in {fmt}; this run's format is {expected}")


def decode_payload(
    record: ArrayRecord,
    layout: ModelLayout,
    mask: np.ndarray,
    statistic_length: int | None = None,
    reference: np.ndarray | None = None,
    expected: WireFormat | None = None,
    statistic_plan: SparsePlan | None = None,
) -> ModelPayload:
    """Decode values (and the method's statistic vector) against ``mask``, the mask in force.

    The statistic vector travels in the ``importance`` section (PruneFL's is the
    only one today), in ``wire.importance``'s format; ``statistic_length`` is its
    expected length, None when none may come. With ``statistic_plan`` it must come
    sparse instead (``importance-top``, of ``statistic_plan.length`` entries, at most
    its limits per segment) and is returned whole, zero where nothing was sent.

    The caller resolves ``mask`` first (from :func:`decode_mask` or its cache).
    Values sent relative to a reference (a lossy update) are added to
    ``reference``, the values the sender started from; without one they are refused.
    With ``expected``, values and importance written in another format than the
    run's are refused, and so are whole values where an update is expected (a
    ``reference`` is given) or an update where whole values are.
    """
    unknown = set(record) - set(ARRAY_NAMES)
    if unknown:
        raise WireError(f"unexpected arrays {sorted(unknown)}; allowed: {list(ARRAY_NAMES)}")
    kept = int(np.count_nonzero(mask))
    section = _section(record, VALUES)
    require_format(section, "array 'values'", None if expected is None else expected.values)
    values, values_relative = decode_values(section, kept, "array 'values'")
    if expected is not None and reference is not None and not values_relative:
        raise WireError("array 'values' holds whole values; this run's replies send their update")
    if values_relative:
        if expected is not None and reference is None:
            raise WireError("array 'values' holds an update; this run's replies send whole values")
        if reference is None or len(reference) != kept:
            raise WireError("array 'values' holds an update, but no reference to add it to is expected here")
        values = reference + values
    counters = np.zeros(0, dtype=np.int64)
    if layout.num_ints:
        data = _section(record, COUNTERS)
        if len(data) != 8 * layout.num_ints:
            raise WireError(f"array 'counters' has {len(data)} bytes; expected {8 * layout.num_ints}")
        counters = np.frombuffer(data, dtype="<i8").astype(np.int64)
    elif COUNTERS in record:
        raise WireError("array 'counters' was sent for a model without integer buffers")
    statistic = _decode_statistic(record, statistic_length, statistic_plan, expected)
    return ModelPayload(values=values, counters=counters, statistic=statistic)


def _decode_statistic(
    record: ArrayRecord,
    statistic_length: int | None,
    statistic_plan: SparsePlan | None,
    expected: WireFormat | None,
) -> np.ndarray | None:
    """The statistic vector of a reply: dense, sparse per ``statistic_plan``, or None when none may come."""
    if statistic_plan is not None and statistic_length is not None:
        if statistic_plan.length != statistic_length:
            raise WireError(f"a sparse plan of {statistic_plan.length} entries for {statistic_length}")
        if IMPORTANCE in record:
            raise WireError("array 'importance' was sent whole; this round's upload is 'importance-top'")
        return decode_sparse(_section(record, IMPORTANCE_TOP), statistic_plan, "array 'importance-top'")
    if IMPORTANCE_TOP in record:
        raise WireError("array 'importance-top' was not asked for")
    statistic = None
    if statistic_length is not None:
        section = _section(record, IMPORTANCE)
        require_format(section, "array 'importance'", None if expected is None else expected.importance)
        statistic, relative = decode_values(section, statistic_length, "array 'importance'")
        if relative:
            raise WireError("array 'importance' cannot be relative")
    elif IMPORTANCE in record:
        raise WireError("array 'importance' was not asked for")
    return statistic


def payload_info(record: ArrayRecord) -> PayloadInfo:
    """Counts and formats of what ``record`` carries, from the section headers."""
    info: dict[str, int | None] = {}
    for name, count_key, bits_key in (
        (VALUES, "num_values", "value_bits"),
        (IMPORTANCE, "num_importance", "importance_bits"),
    ):
        if name in record:
            fmt, count, _, _, _ = read_header(_section(record, name), f"array {name!r}")
            info[count_key], info[bits_key] = count, value_bits(fmt)
    if IMPORTANCE_TOP in record:  # the entries sent; their positions are not in the bound
        count, fmt = sparse_counts(_section(record, IMPORTANCE_TOP), "array 'importance-top'")
        info["num_importance"], info["importance_bits"] = count, value_bits(fmt)
    info["mask_base"] = mask_base_version(record)
    return PayloadInfo(**info)  # type: ignore[arg-type]
