"""The codec: round trips, encodings chosen per tensor, bad payloads, accounting and the bound."""

import struct

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from common.wire import WireError, WireFormat, binary_entropy, dense_bytes, measure_message, payload_bound
from common.wire import masks as mask_codec
from common.wire.bound import mask_bound_bits
from common.wire.codec import (
    ModelPayload,
    decode_mask,
    decode_payload,
    encode_payload,
    mask_base_version,
    payload_info,
)
from common.wire.errors import zstd_compress
from common.wire.golomb import decode_gaps, encode_gaps, golomb_parameter
from common.wire.values import decode_values, encode_values, quantize, to_format
from tests.inprocess_grid import through_wire

NO_INTS = np.zeros(0, np.int64)


def _mask(layout):
    mask = layout.full_mask()
    mask[[1, 2, 3, 16]] = False
    return mask


def test_round_trip_with_mask_and_importance(tiny):
    _, layout = tiny
    mask = _mask(layout)
    values = np.arange(np.count_nonzero(mask), dtype=np.float32)
    importance = np.arange(4, dtype=np.float32)
    record = encode_payload(ModelPayload(values, NO_INTS, mask, importance), layout)
    assert set(record) == {"values", "mask", "importance"}
    assert all(record[name].stype == f"fedprune.{name}.v1" for name in record)
    decoded_mask = decode_mask(record, layout)
    assert np.array_equal(decoded_mask, mask)
    payload = decode_payload(record, layout, decoded_mask, statistic_length=4)
    assert np.array_equal(payload.values, values)
    assert np.array_equal(payload.statistic, importance)
    info = payload_info(record)
    assert (info.num_values, info.value_bits, info.num_importance, info.mask_base) == (19, 32, 4, 0)


def test_golomb_code_of_known_gaps_is_bit_exact():
    # m = 3: b = 2, cut = 1. Gap 0 -> q 0, r 0 (short: '0'); gap 4 -> q 1, r 1 (long: r + cut = 2 = '10').
    # streams: prefixes '0' '1', extra bits '0', unary '1' '01' -> 0 1 0 1 0 1 + padding = 0b01010100
    data = encode_gaps(np.array([0, 4]), 3)
    assert data == bytes([0b01010100])
    assert decode_gaps(data, 2, 3, 10).tolist() == [0, 4]
    assert golomb_parameter(0.5) == 1 and golomb_parameter(0.2) == 3 and golomb_parameter(0.01) == 69


@pytest.mark.parametrize("density", [0.5, 0.2, 0.1, 0.05, 0.02, 0.01])
def test_iid_masks_cost_at_most_3_percent_over_the_entropy(density):
    rng = np.random.default_rng(1)
    n = 200_000
    bits = rng.random(n) < density
    coded = mask_codec.encode_bits(bits.reshape(400, 500), level=1)
    d = bits.mean()
    assert len(coded.body) <= 1.03 * n * binary_entropy(d) / 8 + 8
    assert np.array_equal(mask_codec.decode_bits(coded, (400, 500), "t"), bits)


def test_encodings_chosen_per_tensor():
    rng = np.random.default_rng(0)
    encode = mask_codec.encode_bits
    assert encode(np.ones((4, 5), bool), 1).encoding == mask_codec.CONSTANT
    filters = np.zeros((8, 3, 2, 2), bool)
    filters[[1, 5]] = True  # two whole output channels kept
    coded = encode(filters, 1)
    assert (coded.encoding, coded.symbol, coded.body) == (mask_codec.CHANNELS, 0, bytes([0b01000100]))
    inputs = np.zeros((6, 9), bool)
    inputs[:, [0, 8]] = True  # two whole input features kept (axis 1)
    assert encode(inputs, 1).encoding == mask_codec.CHANNELS and encode(inputs, 1).symbol == 1
    assert encode(rng.random((100, 100)) < 0.05, 1).encoding == mask_codec.GOLOMB
    assert encode(rng.random((100, 100)) < 0.5, 0).encoding == mask_codec.BITMAP
    blocks = np.repeat(rng.random(500) < 0.5, 20).reshape(100, 100)  # runs of 20, not whole channels
    assert encode(blocks, 3).encoding == mask_codec.ZSTD
    for bits in (filters, inputs, blocks):
        assert np.array_equal(mask_codec.decode_bits(encode(bits, 3), bits.shape, "t"), bits.reshape(-1))


def test_xor_delta_against_the_receivers_mask(tiny):
    _, layout = tiny
    old = _mask(layout)
    new = old.copy()
    new[4] = False  # one flip in fc1; fc2 unchanged
    section, chosen = mask_codec.encode_mask(layout, new, old, base_version=7)
    assert mask_codec.mask_base_version(section) == 7
    assert np.array_equal(mask_codec.decode_mask(section, layout, {7: old}.get), new)
    with pytest.raises(WireError, match="version 7, which is not held"):
        mask_codec.decode_mask(section, layout, {}.get)
    # fc2 (unchanged) costs a constant: zero body bytes
    assert chosen[1].encoding == mask_codec.CONSTANT and chosen[1].body == b""


def test_bound_of_a_delta_counts_the_flips(tiny):
    _, layout = tiny
    mask = layout.full_mask()
    mask[0:6] = False  # fc1 (12 weights) at d = 0.5, fc2 dense
    assert mask_bound_bits(layout, mask) == pytest.approx(12)
    base = mask.copy()
    base[0] = True  # one of 12 bits differs
    assert mask_bound_bits(layout, mask, base) == pytest.approx(12 * binary_entropy(1 / 12))


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16"])
def test_value_formats_round_trip_and_round_as_documented(fmt):
    rng = np.random.default_rng(2)
    values = (rng.standard_normal(1000) * 0.05).astype(np.float32)
    for level in (0, 3):
        decoded, relative = decode_values(encode_values(values, fmt, level), 1000, "v")
        assert np.array_equal(decoded, quantize(values, fmt)) and not relative
    # unit roundoff: 2^-11 for float16 (normal numbers, |x| >= 2^-14), 2^-8 for bfloat16
    normal = np.abs(values) >= 2.0**-14
    error = np.abs(quantize(values, fmt) - values)[normal] / np.abs(values[normal])
    assert error.max() <= {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}[fmt]


def test_bfloat16_rounds_to_nearest_even():
    one_and_half_ulp = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)], dtype=np.float32)
    assert quantize(one_and_half_ulp, "bfloat16").tolist() == [1.0, 1 + 2**-6, -1.0]
    assert np.isnan(quantize(np.array([np.nan], np.float32), "bfloat16")[0])
    with pytest.raises(WireError, match="65504"):
        to_format(np.array([1e6], np.float32), "float16")


def test_lossy_update_is_added_to_the_reference(tiny):
    _, layout = tiny
    mask = layout.full_mask()
    start = quantize(np.linspace(-1, 1, layout.num_floats).astype(np.float32), "bfloat16")
    update = np.full(layout.num_floats, 1e-4, np.float32)
    record = encode_payload(
        ModelPayload(update, NO_INTS, relative=True), layout, WireFormat(values="bfloat16")
    )
    decoded = decode_payload(record, layout, mask, reference=start)
    np.testing.assert_allclose(decoded.values - start, 1e-4, rtol=2**-8)
    with pytest.raises(WireError, match="no reference"):
        decode_payload(record, layout, mask)


def _raw(name, data):
    return Array(dtype="uint8", shape=(len(data),), stype=f"fedprune.{name}.v1", data=data)


def _values(count, fmt="float32"):
    return encode_values(np.zeros(count, np.float32), fmt, 0)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"values": _raw("values", _values(5))}, "has 5 entries; expected 19"),
        ({"values": _raw("values", _values(19)[:-3])}, "bytes of values; expected 76"),
        ({"values": _raw("values", _values(19)[:5])}, "truncated"),
        ({"values": Array(np.zeros(19, np.float32))}, "stype 'numpy.ndarray'"),
        ({"values": _raw("mask", _values(19))}, "expected 'fedprune.values.v1'"),
        ({}, "'values' is missing"),
        ({"values": _raw("values", _values(19)), "extra": Array(np.zeros(1))}, "unexpected arrays"),
        ({"values": _raw("values", _values(19)), "importance": _raw("importance", _values(1))}, "not asked"),
        ({"values": _raw("values", b"\x02" + _values(19)[1:])}, "format version 2"),
        ({"values": _raw("values", _values(19)[:1] + b"\x07" + _values(19)[2:])}, "value format 7"),
    ],
)
def test_bad_payloads_raise_a_wire_error(tiny, arrays, message):
    _, layout = tiny
    record = ArrayRecord(arrays)
    with pytest.raises(WireError, match=message):
        decode_payload(record, layout, _mask(layout))


def test_a_shape_that_disagrees_with_the_bytes_is_refused(tiny):
    _, layout = tiny
    array = Array(dtype="uint8", shape=(10**12,), stype="fedprune.values.v1", data=_values(19))
    with pytest.raises(WireError, match="declares shape"):
        decode_payload(ArrayRecord({"values": array}), layout, _mask(layout))


def _section(*tensors, body=b""):
    head = struct.pack(mask_codec.SECTION_HEADER, 1, 0, len(tensors))
    return head + b"".join(struct.pack(mask_codec.TENSOR_HEADER, *t) for t in tensors) + body


def test_mask_with_padding_bits_set_is_refused(tiny):
    _, layout = tiny  # fc1: 12 weights, a 2-byte bitmap whose last 4 bits are padding
    constant = (mask_codec.DIRECT, mask_codec.CONSTANT, 1, 0, 0, 0)
    bitmap = (mask_codec.DIRECT, mask_codec.BITMAP, 0, 0, 0, 2)
    good = _section(bitmap, constant, body=bytes([0xFF, 0xF0]))
    assert mask_codec.decode_mask(good, layout, {}.get).all()
    with pytest.raises(WireError, match="bits set past the last weight"):
        mask_codec.decode_mask(_section(bitmap, constant, body=bytes([0xFF, 0xFF])), layout, {}.get)


@pytest.mark.parametrize(
    ("tensors", "body", "message"),
    [
        ([(0, 2, 1, 3, 20, 1)], b"\x00", "codes 1 tensors; the layout has 2"),
        ([(0, 2, 1, 3, 20, 1), (0, 0, 1, 0, 0, 0)], b"\x00", "20 bits equal to 1 in 12"),  # count > n
        ([(0, 2, 1, 3, 2, 1), (0, 0, 1, 0, 0, 0)], b"\x00", "0 unary quotients; expected 2"),
        ([(0, 2, 1, 3, 1, 4), (0, 0, 1, 0, 0, 0)], b"\x01\x00\x00\x00", "whole bytes past"),
        ([(0, 2, 1, 1, 1, 2), (0, 0, 1, 0, 0, 0)], b"\x00\x01", "runs past the end"),  # gap 15 of 12
        ([(0, 4, 0, 0, 0, 9), (0, 0, 1, 0, 0, 0)], b"\x00" * 9, "bitmap of 9 bytes; expected 2"),
        ([(0, 3, 0, 0, 0, 4), (0, 0, 1, 0, 0, 0)], b"\x00" * 4, "not a zstd frame"),
        ([(0, 1, 2, 0, 0, 1), (0, 0, 1, 0, 0, 0)], b"\x00", "axis 2 does not exist"),
        ([(0, 9, 0, 0, 0, 0), (0, 0, 1, 0, 0, 0)], b"", "unknown mask encoding 9"),
        ([(5, 0, 1, 0, 0, 0), (0, 0, 1, 0, 0, 0)], b"", "unknown mode 5"),
        ([(0, 0, 1, 0, 0, 0), (0, 0, 1, 0, 0, 0)], b"\x00", "1 bytes past its last section"),
        ([(0, 4, 0, 0, 0, 2), (0, 0, 1, 0, 0, 0)], b"\x00", "truncated"),
    ],
)
def test_corrupt_mask_sections_raise_a_wire_error(tiny, tensors, body, message):
    _, layout = tiny
    with pytest.raises(WireError, match=message):
        mask_codec.decode_mask(_section(*tensors, body=body), layout, {}.get)


def test_a_zstd_frame_that_claims_more_than_the_layout_allows_is_refused(tiny):
    _, layout = tiny
    frame = zstd_compress(bytes(1000), 3)  # a bomb for a 12-bit tensor
    section = _section((0, 3, 0, 0, 0, len(frame)), (0, 0, 1, 0, 0, 0), body=frame)
    with pytest.raises(WireError, match="declares 1000 bytes; expected 2"):
        mask_codec.decode_mask(section, layout, {}.get)


def test_a_header_claiming_a_huge_size_allocates_nothing(tiny):
    _, layout = tiny
    values = bytearray(_values(19))
    values[4:12] = (2**60).to_bytes(8, "little")
    with pytest.raises(WireError, match="has 1152921504606846976 entries; expected 19"):
        decode_values(bytes(values), 19, "v")
    with pytest.raises(WireError, match="cannot occur"):
        decode_gaps(b"\xff", 2**40, 3, 1000)


def test_bytes_equal_the_serialised_size_and_split_by_category(tiny):
    _, layout = tiny
    mask = _mask(layout)
    record = encode_payload(ModelPayload(np.ones(np.count_nonzero(mask), np.float32), NO_INTS, mask), layout)
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
    # what a receiver rebuilds from those bytes is the same message, and decodes the same
    rebuilt = through_wire(message)
    assert measure_message(rebuilt).total == serialised
    assert mask_base_version(rebuilt.content["arrays"]) == 0
    assert np.array_equal(decode_mask(rebuilt.content["arrays"], layout), mask)


def test_entropy_and_bound(tiny):
    _, layout = tiny
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.1) == pytest.approx(0.469, abs=1e-3)
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    mask = layout.full_mask()
    mask[0:6] = False  # fc1 at d = 0.5 (12 weights -> 12 bits), fc2 dense (0 bits)
    kept = int(np.count_nonzero(mask))
    bits = mask_bound_bits(layout, mask)
    assert payload_bound(layout, bits, kept) == pytest.approx((12 + 32 * kept) / 8)
    assert payload_bound(layout, 0.0, kept, num_importance=6) == pytest.approx(4 * (kept + 6))
    assert payload_bound(layout, 0.0, kept, value_bits=16) == pytest.approx(2 * kept)
    assert dense_bytes(layout) == 4 * 23
