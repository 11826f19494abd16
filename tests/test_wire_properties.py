"""Property-based tests of the codec: round trips, and corrupted payloads that fail cleanly."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from common.layout import ModelLayout
from common.wire import WireError, WireFormat
from common.wire import masks as mask_codec
from common.wire.codec import ModelPayload, decode_mask, decode_payload, encode_payload
from common.wire.golomb import decode_gaps, encode_gaps, positions_to_gaps
from common.wire.values import VALUE_FORMATS, decode_values, encode_values, quantize


class ConvNet(nn.Module):
    """A conv (4x3x3x3 = 108 prunable), a linear (5x12 = 60 prunable) and their biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(12, 5)


LAYOUT = ModelLayout.from_model(ConvNet())
PRUNABLE = LAYOUT.num_prunable
NO_INTS = np.zeros(0, np.int64)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mask_from(bits: list[bool]) -> np.ndarray:
    return LAYOUT.mask_from_prunable(np.array(bits, dtype=bool))


def structured_or_random() -> st.SearchStrategy[list[bool]]:
    """Masks of every kind the coder distinguishes: random, sparse, runs, whole channels."""
    density = st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.9, 1.0])
    random_bits = st.tuples(density, st.integers(0, 2**32 - 1)).map(
        lambda ds: list(np.random.default_rng(ds[1]).random(PRUNABLE) < ds[0])
    )
    channels = st.lists(st.booleans(), min_size=4, max_size=4).map(
        lambda kept: list(np.repeat(kept, 27)) + [True] * 60
    )
    return st.one_of(st.lists(st.booleans(), min_size=PRUNABLE, max_size=PRUNABLE), random_bits, channels)


@FAST
@given(gaps=st.lists(st.integers(0, 5000), min_size=1, max_size=200), m=st.integers(1, 300))
def test_golomb_round_trip(gaps, m):
    gaps = np.array(gaps, dtype=np.int64)
    limit = max(int(gaps.sum()) + len(gaps), m)  # the encoder never picks m above the length
    assert np.array_equal(decode_gaps(encode_gaps(gaps, m), len(gaps), m, limit), gaps)


@FAST
@given(positions=st.sets(st.integers(0, 999), min_size=1))
def test_golomb_round_trip_of_positions(positions):
    ordered = np.array(sorted(positions))
    gaps = positions_to_gaps(ordered)
    assert np.array_equal(decode_gaps(encode_gaps(gaps, 7), len(gaps), 7, 1000), gaps)


@FAST
@given(new=structured_or_random(), old=structured_or_random(), level=st.sampled_from([0, 1, 3]))
def test_mask_round_trip_whole_and_as_delta(new, old, level):
    new_mask, old_mask = mask_from(new), mask_from(old)
    whole, _ = mask_codec.encode_mask(LAYOUT, new_mask, level=level)
    assert np.array_equal(mask_codec.decode_mask(whole, LAYOUT, {}.get), new_mask)
    kept = np.flatnonzero(new_mask)  # the same section when the caller passes the kept positions
    assert mask_codec.encode_mask(LAYOUT, new_mask, level=level, kept=kept)[0] == whole
    delta, _ = mask_codec.encode_mask(LAYOUT, new_mask, old_mask, base_version=3, level=level)
    assert np.array_equal(mask_codec.decode_mask(delta, LAYOUT, {3: old_mask}.get), new_mask)
    assert len(delta) <= len(whole)  # a delta is never larger than the whole mask


@FAST
@given(
    bits=structured_or_random(),
    fmt=st.sampled_from(VALUE_FORMATS),
    level=st.sampled_from([0, 1]),
    seed=st.integers(0, 1000),
)
def test_payload_round_trip(bits, fmt, level, seed):
    mask = mask_from(bits)
    values = (np.random.default_rng(seed).standard_normal(int(mask.sum())) * 0.1).astype(np.float32)
    importance = np.abs(values[:7])
    record = encode_payload(
        ModelPayload(values, NO_INTS, mask, importance), LAYOUT, WireFormat(fmt, "bfloat16", level)
    )
    decoded_mask = decode_mask(record, LAYOUT)
    assert np.array_equal(decoded_mask, mask)
    payload = decode_payload(record, LAYOUT, decoded_mask, statistic_length=7)
    assert np.array_equal(payload.values, quantize(values, fmt))
    assert np.array_equal(payload.statistic, quantize(importance, "bfloat16"))


def _corrupt(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(0, len(data) - cut)])
    for position, value in flips:
        if out:
            out[position % len(out)] ^= value
    return bytes(out)


@FAST
@given(
    bits=structured_or_random(),
    old=structured_or_random(),
    cut=st.integers(0, 8),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
)
def test_corrupted_mask_sections_fail_cleanly_or_decode_to_a_valid_mask(bits, old, cut, flips):
    section, _ = mask_codec.encode_mask(LAYOUT, mask_from(bits), mask_from(old), base_version=2)
    try:
        mask = mask_codec.decode_mask(_corrupt(section, cut, flips), LAYOUT, {2: mask_from(old)}.get)
    except WireError:
        return
    # a corruption that still parses yields a well-formed mask: non-prunable floats stay kept
    assert mask.shape == (LAYOUT.num_floats,) and mask.dtype == bool
    assert mask[~np.isin(np.arange(LAYOUT.num_floats), LAYOUT.prunable_positions)].all()


@FAST
@given(
    fmt=st.sampled_from(VALUE_FORMATS),
    level=st.sampled_from([0, 3]),
    count=st.integers(0, 300),
    cut=st.integers(0, 8),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
)
def test_corrupted_value_sections_fail_cleanly(fmt, level, count, cut, flips):
    values = np.linspace(-1, 1, count, dtype=np.float32)
    section = _corrupt(encode_values(values, fmt, level), cut, flips)
    try:
        decoded, _ = decode_values(section, count, "v")
    except WireError:
        return
    assert decoded.shape == (count,) and decoded.dtype == np.float32


@FAST
@given(data=st.binary(max_size=64), count=st.integers(0, 10**12), m=st.integers(0, 10**12))
def test_arbitrary_gap_streams_fail_cleanly(data, count, m):
    try:
        gaps = decode_gaps(data, count, m, 1000)
    except WireError:
        return
    assert len(gaps) == count and int(gaps.sum()) + count <= 1000
