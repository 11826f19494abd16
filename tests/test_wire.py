"""The first codec, byte accounting and the bound."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from common.wire import WireError, binary_entropy, dense_bytes, measure_message, payload_bound
from common.wire.codec import ModelPayload, decode_mask, decode_payload, encode_payload
from tests.inprocess_grid import through_wire


def _mask(layout):
    mask = layout.full_mask()
    mask[[1, 2, 3, 16]] = False
    return mask


def test_round_trip_with_mask_and_importance(tiny):
    _, layout = tiny
    mask = _mask(layout)
    values = np.arange(np.count_nonzero(mask), dtype=np.float32)
    importance = np.arange(4, dtype=np.float32)
    record = encode_payload(
        ModelPayload(values, np.zeros(0, np.int64), layout.prunable_part(mask), importance)
    )
    assert set(record) == {"values", "mask", "importance"}
    decoded_mask = decode_mask(record, layout)
    assert np.array_equal(decoded_mask, mask)
    payload = decode_payload(record, layout, decoded_mask, importance_length=4)
    assert np.array_equal(payload.values, values)
    assert np.array_equal(payload.importance, importance)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"values": np.zeros(5, np.float32)}, "has 5 entries; expected 19"),
        ({"values": np.zeros(19, np.float64)}, "dtype float64"),
        ({"values": np.zeros((19, 1), np.float32)}, "2 dims"),
        ({}, "'values' is missing"),
        ({"values": np.zeros(19, np.float32), "extra": np.zeros(1)}, "unexpected arrays"),
        ({"values": np.zeros(19, np.float32), "importance": np.zeros(1, np.float32)}, "not asked for"),
    ],
)
def test_bad_payloads_raise_a_wire_error(tiny, arrays, message):
    _, layout = tiny
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    with pytest.raises(WireError, match=message):
        decode_payload(record, layout, _mask(layout))


def test_mask_with_padding_bits_set_is_refused(tiny):
    _, layout = tiny  # 18 prunable weights: 3 bytes, the last 6 bits padding
    record = ArrayRecord({"mask": Array(np.array([255, 255, 255], dtype=np.uint8))})
    with pytest.raises(WireError, match="past the last prunable weight"):
        decode_mask(record, layout)


def test_bytes_equal_the_serialised_size_and_split_by_category(tiny):
    _, layout = tiny
    mask = _mask(layout)
    record = encode_payload(
        ModelPayload(
            np.ones(np.count_nonzero(mask), np.float32), np.zeros(0, np.int64), layout.prunable_part(mask)
        )
    )
    message = Message(
        content=RecordDict({"arrays": record, "config": ConfigRecord({"lr": 0.1})}),
        dst_node_id=5,
        message_type="train",
    )
    measured = measure_message(message)
    serialised = sum(len(o.deflate()) for o in get_all_nested_objects(message).values())
    assert measured.total == serialised
    values_bytes = sum(len(o.deflate()) for o in get_all_nested_objects(record["values"]).values())
    assert measured.values == values_bytes
    assert measured.mask > 0 and measured.importance == 0 and measured.other > 0
    # what a receiver rebuilds from those bytes is the same message
    assert measure_message(through_wire(message)).total == serialised


def test_entropy_and_bound(tiny):
    _, layout = tiny
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.1) == pytest.approx(0.469, abs=1e-3)
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    mask = layout.full_mask()
    mask[0:6] = False  # fc1 at d = 0.5 (12 weights -> 12 bits), fc2 dense (0 bits)
    kept = int(np.count_nonzero(mask))
    assert payload_bound(layout, mask, True, kept) == pytest.approx((12 + 32 * kept) / 8)
    assert payload_bound(layout, mask, False, kept, num_importance=6) == pytest.approx(4 * (kept + 6))
    assert dense_bytes(layout) == 4 * 23
