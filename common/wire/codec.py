"""Encoding a masked model into a few arrays, and decoding it with checks.

A payload holds the *kept* float values only (the receiver knows or is sent the
mask), the integer buffers, and optionally the mask and an importance vector:

=============  ==========================================================
array          content
=============  ==========================================================
``values``     float32, ``floats[mask]`` in layout order
``counters``   int64, the integer buffers (omitted for models without any)
``mask``       the prunable part of the mask, one bit per weight
               (``np.packbits``), only when the receiver's copy is stale
``importance`` float32 importance statistic, only when asked for
=============  ==========================================================

Arrays travel as Flower ``Array``s in ``.npy`` form, read back with
``allow_pickle=False``; nothing is ever unpickled. Decoding checks every length
against the layout and the mask and raises :class:`WireError` with the array's
name and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from ..layout import ModelLayout

VALUES = "values"
COUNTERS = "counters"
MASK = "mask"
IMPORTANCE = "importance"
ARRAY_NAMES = (VALUES, COUNTERS, MASK, IMPORTANCE)


class WireError(ValueError):
    """A payload that cannot be decoded against the expected layout and mask."""


@dataclass
class ModelPayload:
    values: np.ndarray
    counters: np.ndarray
    mask: np.ndarray | None = None  # bool over the layout's prunable positions
    importance: np.ndarray | None = None


def encode_payload(payload: ModelPayload) -> ArrayRecord:
    arrays = {VALUES: Array(np.ascontiguousarray(payload.values, dtype=np.float32))}
    if payload.counters.size:
        arrays[COUNTERS] = Array(np.ascontiguousarray(payload.counters, dtype=np.int64))
    if payload.mask is not None:
        arrays[MASK] = Array(np.packbits(payload.mask.astype(bool)))
    if payload.importance is not None:
        arrays[IMPORTANCE] = Array(np.ascontiguousarray(payload.importance, dtype=np.float32))
    return ArrayRecord(arrays)


def _read(record: ArrayRecord, name: str, dtype: np.dtype, length: int) -> np.ndarray:
    if name not in record:
        raise WireError(f"array {name!r} is missing")
    try:
        array = record[name].numpy()
    except (ValueError, TypeError, EOFError, OSError) as exc:
        raise WireError(f"array {name!r} is not a readable .npy array: {exc}") from exc
    if array.dtype != dtype or array.ndim != 1:
        raise WireError(f"array {name!r} has dtype {array.dtype} and {array.ndim} dims; expected 1-D {dtype}")
    if len(array) != length:
        raise WireError(f"array {name!r} has {len(array)} entries; expected {length}")
    return array


def decode_mask(record: ArrayRecord, layout: ModelLayout) -> np.ndarray | None:
    """The full mask carried by ``record``, or None if it carries none."""
    if MASK not in record:
        return None
    packed = _read(record, MASK, np.dtype(np.uint8), -(-layout.num_prunable // 8))
    bits = np.unpackbits(packed)
    if bits[layout.num_prunable :].any():
        raise WireError("array 'mask' has bits set past the last prunable weight")
    return layout.mask_from_prunable(bits[: layout.num_prunable].astype(bool))


def decode_payload(
    record: ArrayRecord,
    layout: ModelLayout,
    mask: np.ndarray,
    importance_length: int | None = None,
) -> ModelPayload:
    """Decode values (and importance) against ``mask``, the mask in force.

    The caller resolves ``mask`` first (from :func:`decode_mask` or its cache).
    """
    unknown = set(record) - set(ARRAY_NAMES)
    if unknown:
        raise WireError(f"unexpected arrays {sorted(unknown)}; allowed: {list(ARRAY_NAMES)}")
    values = _read(record, VALUES, np.dtype(np.float32), int(np.count_nonzero(mask)))
    counters = (
        _read(record, COUNTERS, np.dtype(np.int64), layout.num_ints)
        if layout.num_ints
        else np.zeros(0, dtype=np.int64)
    )
    importance = None
    if importance_length is not None:
        importance = _read(record, IMPORTANCE, np.dtype(np.float32), importance_length)
    elif IMPORTANCE in record:
        raise WireError("array 'importance' was not asked for")
    return ModelPayload(values=values, counters=counters, importance=importance)
