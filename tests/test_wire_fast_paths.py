"""The codec's faster paths: the bytes of before them, the values and byte counts of the plain paths.

The hashes below were computed with the codec as it was before these paths
(commit 181ac41): sections coded without zstd (Golomb streams, headers, plain
values) must stay byte for byte what they were. zstd's own output is compared
with a fresh compressor instead of a hash, so that a libzstd upgrade does not
fail these tests.
"""

import hashlib
import threading

import numpy as np
import pytest
import zstandard
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_children_ids_from_object_content,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from common.layout import ModelLayout
from common.wire import MessageBytes, WireError, WireFormat, golomb, measure_message
from common.wire import masks as mask_codec
from common.wire.accounting import array_chunks
from common.wire.codec import ModelPayload, encode_payload
from common.wire.errors import zstd_compress, zstd_decompress
from common.wire.values import decode_values, encode_values, shuffle, unshuffle

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_a_message_without_zstd_keeps_its_bytes():
    layout = ModelLayout.from_model(nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 50)))
    rng = np.random.default_rng(12)
    bits = rng.random(layout.num_prunable) < 0.13
    bits[:6000] = rng.random(6000) < 0.01
    mask = layout.mask_from_prunable(bits)
    values = ((rng.random(int(mask.sum())) - 0.5) / 8).astype(np.float32)
    record = encode_payload(
        ModelPayload(values, np.zeros(0, np.int64), mask=mask), layout, WireFormat(level=0)
    )
    digests = {
        name: (len(record[name].data), hashlib.sha256(record[name].data).hexdigest()) for name in record
    }
    assert digests == {
        "values": (34204, "1c9d9bb64b74b3633fa2a613b0e54dc8a71f6c863eed6f0b32375f70c478e064"),
        "mask": (4673, "f3be6a61b1572bbaa821852fc67d70f16a1549421ac5581d03458a5d512dca87"),
    }
    _, chosen = mask_codec.encode_mask(layout, mask, level=0)
    assert [(c.encoding, c.m) for c in chosen] == [(mask_codec.GOLOMB, 6), (mask_codec.GOLOMB, 5)]


@pytest.mark.parametrize(
    ("m", "digest"),
    [
        (1, "25eb3427012b80b3e609"),  # b = 0: no remainder bits
        (2, "d0b2e13fde457bf44c29"),  # a power of two
        (5, "fa27fc5edd94740d218a"),
        (6, "4b0cf9323cec67ca38e4"),
        (69, "20b5791d6a22efaddfd5"),
        (256, "fdfba6b28330071efc88"),  # the largest m with one-byte remainders
        (1000, "865be739938a0ee65286"),  # remainders wider than a byte
    ],
)
def test_golomb_streams_keep_their_bytes(m, digest):
    gaps = np.random.default_rng(12).integers(0, 3000, 500)
    data = golomb.encode_gaps(gaps, m)
    assert hashlib.sha256(data).hexdigest()[:20] == digest
    assert np.array_equal(golomb.decode_gaps(data, 500, m, int(gaps.sum()) + 500), gaps)


def test_positions_from_the_streams_by_hand():
    # gaps 0 and 4 (m = 3): positions 0 and 0 + 1 + 4 = 5
    data = golomb.encode_gaps(np.array([0, 4]), 3)
    assert golomb.decode_positions(data, 2, 3, 10).tolist() == [0, 5]
    assert golomb.decode_positions(data, 2, 3, 10).dtype == np.intp
    with pytest.raises(WireError, match="run past the end"):
        golomb.decode_positions(data, 2, 3, 5)  # position 5 in a vector of 5
    assert golomb.decode_positions(b"", 0, 3, 10).tolist() == []
    with pytest.raises(WireError, match="empty gap stream carries bytes"):
        golomb.decode_positions(b"\x00", 0, 3, 10)


def test_gaps_from_positions_in_a_larger_vector_by_hand():
    # a tensor that starts at position 5 of the vector: its positions 5, 7, 8 are 0, 2, 3
    gaps = golomb.positions_to_gaps(np.array([5, 7, 8]), start=4)
    assert gaps.tolist() == [0, 1, 0] and gaps.dtype == np.int32  # int32 when the span allows
    assert golomb.positions_to_gaps(np.array([0, 2, 3])).tolist() == [0, 1, 0]
    assert golomb.positions_to_gaps(np.zeros(0, np.int64)).tolist() == []
    assert golomb.gaps_to_positions(np.array([0, 1, 0]), 4).tolist() == [0, 2, 3]


@FAST
@given(gaps=st.lists(st.integers(0, 5000), min_size=1, max_size=200), m=st.integers(1, 300))
def test_positions_equal_the_running_sum_of_the_gaps(gaps, m):
    gaps = np.array(gaps, dtype=np.int64)
    limit = max(int(gaps.sum()) + len(gaps), m)
    data = golomb.encode_gaps(gaps, m)
    assert np.array_equal(golomb.decode_positions(data, len(gaps), m, limit), np.cumsum(gaps + 1) - 1)


@FAST
@given(
    gaps=st.lists(st.integers(0, 300), min_size=1, max_size=60),
    m=st.integers(1, 40),
    flips=st.lists(st.integers(0, 10_000), max_size=3),
    cut=st.integers(0, 4),
    slack=st.integers(-3, 3),
)
def test_positions_and_gaps_fail_alike_on_corrupted_streams(gaps, m, flips, cut, slack):
    gaps = np.array(gaps, dtype=np.int64)
    limit = max(int(gaps.sum()) + len(gaps) + slack, 1)
    data = bytearray(golomb.encode_gaps(gaps, min(m, limit)))
    for flip in flips:
        data[flip % len(data)] ^= 1 << (flip % 8)
    data = bytes(data[: len(data) - cut] if cut < len(data) else data)
    results = []
    for decode in (
        lambda: golomb.decode_positions(data, len(gaps), min(m, limit), limit),
        lambda: golomb.gaps_to_positions(golomb.decode_gaps(data, len(gaps), min(m, limit), limit), limit),
    ):
        try:
            results.append(decode().tolist())
        except WireError:
            results.append("WireError")
    assert results[0] == results[1]


def test_mask_bits_from_positions_in_the_whole_vector_are_coded_alike():
    rng = np.random.default_rng(3)
    vector = rng.random(5000) < 0.1
    bits = vector[1000:3000].reshape(40, 50)  # a tensor at offset 1000
    kept = np.flatnonzero(vector)
    ones = kept[(kept >= 1000) & (kept < 3000)]
    assert mask_codec.encode_bits(bits, 1, ones, offset=1000) == mask_codec.encode_bits(bits, 1)
    assert mask_codec.encode_bits(bits, 1).encoding == mask_codec.GOLOMB


@pytest.mark.parametrize("level", [0, 3])
def test_mask_bits_decode_into_a_given_slice(level):
    rng = np.random.default_rng(4)
    cases = [
        rng.random((30, 40)) < 0.05,  # golomb
        rng.random((30, 40)) < 0.5,  # bitmap
        np.repeat(rng.random(60) < 0.5, 20).reshape(30, 40),  # zstd (level 3) or bitmap
        np.broadcast_to((rng.random(30) < 0.5)[:, None], (30, 40)).copy(),  # channels
        np.zeros((30, 40), bool),  # constant
    ]
    for bits in cases:
        coded = mask_codec.encode_bits(bits, level)
        whole = np.ones(3000, dtype=bool)
        out = whole[1000:2200]
        assert mask_codec.decode_bits(coded, bits.shape, "t", out=out) is out
        assert np.array_equal(out, bits.reshape(-1))
        assert whole[:1000].all() and whole[2200:].all()  # nothing written outside the slice
        assert np.array_equal(mask_codec.decode_bits(coded, bits.shape, "t"), bits.reshape(-1))
    with pytest.raises(ValueError, match="expected contiguous"):
        mask_codec.decode_bits(coded, (30, 40), "t", out=np.zeros(1199, bool))
    with pytest.raises(ValueError, match="expected contiguous"):
        mask_codec.decode_bits(coded, (30, 40), "t", out=np.zeros(2400, bool)[::2])


@pytest.mark.parametrize("level", [1, 3, 19])
def test_zstd_frames_equal_a_fresh_compressors_in_every_thread(level):
    data = np.random.default_rng(5).integers(0, 4, 200_000, dtype=np.uint8).tobytes()
    expected = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
    frames = []
    threads = [threading.Thread(target=lambda: frames.append(zstd_compress(data, level))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert frames == [expected] * 3 and zstd_compress(data, level) == expected
    assert zstd_compress(np.frombuffer(data, np.uint8), level) == expected  # an array, not bytes
    assert zstd_decompress(expected, len(data), "x") == data


def test_zstd_frames_with_bytes_after_them_or_cut_short_are_refused():
    frame = zstd_compress(b"abc" * 1000, 1)
    with pytest.raises(WireError, match="bytes after it"):
        zstd_decompress(frame + b"\x00", 3000, "x")
    with pytest.raises(WireError, match="truncated"):
        zstd_decompress(frame[:-2], 3000, "x")
    with pytest.raises(WireError, match="declares 3000 bytes; expected 2999"):
        zstd_decompress(frame, 2999, "x")


def test_shuffle_by_hand():
    raw = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.uint8)  # three values of two bytes
    planes = shuffle(raw)
    assert planes.tolist() == [[1, 3, 5], [2, 4, 6]]
    assert np.array_equal(unshuffle(planes), raw)


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("level", [0, 1])
def test_decoded_values_are_writable_arrays_of_their_own(fmt, level):
    values = (np.random.default_rng(6).standard_normal(5000) / 10).astype(np.float32)
    section = encode_values(values, fmt, level)
    decoded, _ = decode_values(section, 5000, "x")
    assert decoded.dtype == np.float32 and decoded.flags.writeable
    if fmt == "float32":
        assert np.array_equal(decoded, values)
    decoded[0] = 7.0  # the section's bytes stay as they were
    assert np.array_equal(decode_values(section, 5000, "x")[0][1:], decoded[1:])
    assert decode_values(section, 5000, "x")[0][0] != 7.0
    writable = bytearray(section)  # a writable buffer: the values are still a copy, not a view of it
    from_buffer, _ = decode_values(writable, 5000, "x")
    writable[-4:] = b"\xff\xff\xff\xff"
    assert np.array_equal(from_buffer, decode_values(section, 5000, "x")[0])


# -- measuring bytes without deflating the chunks -------------------------------------------------
def _deflated(message: Message) -> MessageBytes:
    """The definition: len(deflate()) of every unique nested object, split by array name."""
    objects = get_all_nested_objects(message)
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    parts = {"values": 0, "mask": 0, "importance": 0}
    claimed: set[str] = set()
    if message.has_content():
        for record in message.content.array_records.values():
            for name, array in record.items():
                if name not in parts:
                    continue
                ids = [
                    array.object_id,
                    *get_object_children_ids_from_object_content(contents[array.object_id]),
                ]
                for object_id in ids:
                    if object_id not in claimed:
                        claimed.add(object_id)
                        parts[name] += len(contents[object_id])
    total = sum(len(c) for c in contents.values())
    return MessageBytes(**parts, other=total - sum(parts.values()), objects=len(objects))


def _raw(name: str, data: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(data),), stype=f"fedprune.{name}.v1", data=data)


CHUNK = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5])
def test_array_chunks_are_flowers(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    ours, flowers = _raw("values", data), _raw("values", data)
    chunks = array_chunks(ours)
    assert [(i, bytes(c.data)) for i, c in chunks] == [(i, bytes(c.data)) for i, c in flowers.slice_array()]
    assert ours.slice_array() is chunks  # kept where Flower looks for it
    assert ours.object_id == flowers.object_id


def test_measured_bytes_equal_the_deflated_objects(tiny):
    _, layout = tiny
    rng = np.random.default_rng(8)
    zeros = bytes(2 * CHUNK + 3)  # two identical chunks: one object
    arrays = {
        "values": _raw("values", rng.integers(0, 256, CHUNK + 10, dtype=np.uint8).tobytes()),
        "mask": _raw("mask", zeros),
        "importance": _raw("importance", b""),
        "counters": _raw("counters", zeros),  # the same chunk as the mask's: counted once, as mask
    }
    content = RecordDict(
        {
            "arrays": ArrayRecord(arrays),
            "config": ConfigRecord({"server-round": 3, "note": "x" * 100}),
            "metrics": MetricRecord({"loss": 0.5}),
        }
    )
    messages = [
        Message(content, dst_node_id=1, message_type="train"),
        Message(RecordDict({"config": ConfigRecord({"a": 1})}), dst_node_id=2, message_type="query"),
    ]
    for message in messages:
        expected = _deflated(message)
        assert measure_message(message) == expected
        assert measure_message(message) == expected  # again, from the kept chunks
    mask = layout.full_mask()
    mask[[0, 5, 7]] = False
    record = encode_payload(
        ModelPayload(np.arange(20, dtype=np.float32), np.zeros(0, np.int64), mask), layout
    )
    message = Message(RecordDict({"arrays": record}), dst_node_id=1, message_type="train")
    assert measure_message(message) == _deflated(message)


def test_measuring_a_message_cuts_its_arrays_once_without_deflating_chunks(monkeypatch):
    """Flower's own cutting deflates (copies) every chunk to hash it; the measure hashes in place."""
    from flwr.app.message.arraychunk import ArrayChunk

    deflated = []
    flowers_deflate = ArrayChunk.deflate
    monkeypatch.setattr(
        ArrayChunk, "deflate", lambda self: deflated.append(len(self.data)) or flowers_deflate(self)
    )
    data = np.random.default_rng(3).integers(0, 256, 2 * CHUNK + 7, dtype=np.uint8).tobytes()
    message = Message(
        RecordDict({"arrays": ArrayRecord({"values": _raw("values", data)})}),
        dst_node_id=1,
        message_type="train",
    )
    measured = measure_message(message)
    assert deflated == []
    monkeypatch.setattr(ArrayChunk, "deflate", flowers_deflate)
    assert measured == _deflated(message)
