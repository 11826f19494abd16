"""A client thread decodes a model once: the same bytes under the same mask are not decoded again."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from client.app import BadMessage, _thread_received
from common.wire.codec import ModelPayload, encode_payload

NO_INTS = np.zeros(0, dtype=np.int64)


def _record(layout, values: np.ndarray) -> ArrayRecord:
    return encode_payload(ModelPayload(values, NO_INTS), layout)


def _copy(record: ArrayRecord) -> ArrayRecord:
    """The same arrays as new objects with new buffers, as a second client's message holds them."""
    return ArrayRecord(
        {
            name: Array("uint8", (len(a.data),), a.stype, bytes(bytearray(a.data)))
            for name, a in record.items()
        }
    )


def test_the_same_bytes_under_the_same_mask_are_decoded_once(tiny):
    _, layout = tiny
    mask = layout.full_mask()
    values = np.linspace(-1, 1, layout.num_floats, dtype=np.float32)
    first, _ = _thread_received(_record(layout, values), layout, mask)
    again, _ = _thread_received(_copy(_record(layout, values)), layout, mask.copy())
    assert again is first  # equal bytes and an equal mask: the decoded model is reused
    assert np.array_equal(first.floats, values)
    with pytest.raises(ValueError, match="read-only"):
        first.values[0] = 5.0  # the shared arrays cannot be written by a handler


def test_one_changed_value_or_another_mask_is_decoded_again(tiny):
    _, layout = tiny
    mask = layout.full_mask()
    values = np.linspace(-1, 1, layout.num_floats, dtype=np.float32)
    first, _ = _thread_received(_record(layout, values), layout, mask)
    changed = values.copy()
    changed[7] = 0.25
    second, _ = _thread_received(_record(layout, changed), layout, mask)
    assert second is not first and second.floats[7] == 0.25
    sparse = mask.copy()
    sparse[[1, 2, 3]] = False
    kept = changed[sparse]
    third, _ = _thread_received(_record(layout, kept), layout, sparse)
    assert third is not second
    assert np.array_equal(third.floats, np.where(sparse, changed, 0))
    assert np.array_equal(third.kept, np.flatnonzero(sparse))


def test_a_refused_model_is_not_kept_for_the_next_message(tiny):
    _, layout = tiny
    mask = layout.full_mask()
    values = np.zeros(layout.num_floats, dtype=np.float32)
    values[3] = np.nan
    for _ in range(2):  # refused each time, never reused as if it had been checked
        with pytest.raises(BadMessage, match="NaN or Inf"):
            _thread_received(_record(layout, values), layout, mask)
