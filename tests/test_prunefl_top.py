"""PruneFL's ``top`` importance upload: the bound, the sparse section, the greedy's decision, rejections."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Message

from client.app import app as client_app
from common.config import ConfigError, load_config
from common.layout import ModelLayout
from common.pruning.prunefl import PruneFL, PruneFLSettings
from common.pruning.prunefl_top import TopRule, addition_bound, core_minimum, keep_top, segment_plan
from common.pruning.reconfiguration import reconfigure_mask
from common.wire.codec import IMPORTANCE, IMPORTANCE_TOP
from common.wire.errors import WireError
from common.wire.sparse import SECTION_HEADER, SEGMENT_HEADER, SparsePlan, decode_sparse, encode_sparse
from common.wire.values import decode_values, encode_values, read_header
from server.app import method_env, run_federation
from server.results import read_rounds
from tests.conftest import TinyNet
from tests.inprocess_grid import InProcessGrid
from tests.test_reply_validation import TamperingGrid, config, raw_array

LAYOUT = ModelLayout.from_model(TinyNet())  # fc1.weight 0..11, fc1.bias 12..14, fc2.weight 15..20, fc2.bias


# -- the bound --------------------------------------------------------------------------------------------
def test_the_bound_counts_what_the_cores_leave_to_add():
    kept = np.array([10, 4])
    # dtp = 0.3: cores keep at least 10 - 3 + 4 - 1 = 10; N_max = floor(1.5 * 14) = 21 -> B = 11
    assert core_minimum(kept, 0.3) == 10
    assert addition_bound(kept, TopRule(removal=0.3, growth=0.5, factor=1.0)) == 11
    # a maximum density of 12 kept weights binds first: B = 12 - 10
    assert addition_bound(kept, TopRule(removal=0.3, growth=0.5, factor=1.0, max_kept=12)) == 2
    assert addition_bound(kept, TopRule(removal=0.0, growth=0.0, factor=1.0)) == 0


def test_the_plan_has_one_segment_per_prunable_layer_limited_by_f_times_b():
    mask = LAYOUT.full_mask()
    mask[0:8] = False  # fc1: 4 kept, 8 pruned
    mask[15:17] = False  # fc2: 4 kept, 2 pruned
    rule = TopRule(removal=0.25, growth=0.0, factor=1.5)  # cores >= 3 + 3 = 6, N_max = 8 -> B = 2, f B = 3
    plan = segment_plan(LAYOUT, mask, rule)
    assert plan == SparsePlan((8, 2), (3, 2))


@pytest.mark.parametrize("field", ["removal", "growth", "factor", "max_kept"])
def test_a_rule_out_of_range_is_refused_naming_the_key(field):
    bad = {"removal": 1.0, "growth": -0.1, "factor": 0.5, "max_kept": -1}[field]
    with pytest.raises(ConfigError, match=f"importance-top.{field.replace('_', '-')}"):
        TopRule(**{field: bad})


def test_keep_top_breaks_ties_toward_lower_positions():
    plan = SparsePlan((6,), (3,))
    out = keep_top(np.array([1.0, 5.0, 2.0, 2.0, 2.0, 0.5], dtype=np.float32), plan)
    assert list(out) == [0.0, 5.0, 2.0, 2.0, 0.0, 0.0]


# -- the sparse section -----------------------------------------------------------------------------------
def test_sparse_round_trip_is_exact_for_bfloat16_values():
    rng = np.random.default_rng(0)
    plan = SparsePlan((1000, 0, 37, 5), (40, 0, 37, 2))
    vector = np.zeros(plan.length, dtype=np.float32)
    vector[rng.choice(1000, 40, replace=False)] = 2.0 ** rng.integers(-20, 20, 40)
    vector[1000:1037] = rng.integers(1, 255, 37) / 64.0  # 8 significant bits: exact in bfloat16
    vector[1039] = 3.0
    section = encode_sparse(vector, plan, level=1)
    assert np.array_equal(decode_sparse(section, plan, "s"), vector)
    assert len(section) < 4 * 80  # far below float32 of the whole vector (4168 bytes)


def test_float32_sparse_values_travel_exactly():
    plan = SparsePlan((5,), (2,), "float32")
    vector = np.array([0, 1.0 + 2**-20, 0, 0, 3.3], np.float32)
    assert np.array_equal(decode_sparse(encode_sparse(vector, plan, 1), plan, "s"), vector)
    with pytest.raises(WireError, match="written in float32; this round's sparse upload sends bfloat16"):
        decode_sparse(encode_sparse(vector, plan, 1), SparsePlan((5,), (2,)), "s")


def test_sparse_values_are_rounded_to_bfloat16():
    plan = SparsePlan((3,), (3,))
    decoded = decode_sparse(encode_sparse(np.array([1.0 + 2**-10, 0.0, 3.0], np.float32), plan, 1), plan, "s")
    assert list(decoded) == [1.0, 0.0, 3.0]


def test_a_segment_over_its_limit_cannot_be_encoded():
    with pytest.raises(WireError, match="segment 0 has 4 nonzero entries; its limit is 2"):
        encode_sparse(np.ones(4, np.float32), SparsePlan((4,), (2,)), 1)


def _section(counts_m_bytes: list[tuple[int, int, int]], streams: bytes, tail: bytes) -> bytes:
    head = struct.pack(SECTION_HEADER, 1, 0, 0, len(counts_m_bytes))
    return head + b"".join(struct.pack(SEGMENT_HEADER, *f) for f in counts_m_bytes) + streams + tail


PLAN = SparsePlan((8,), (2,))
GOOD = encode_sparse(np.array([0, 4.0, 0, 0, 0, 1.0, 0, 0], np.float32), PLAN, 0)
HEAD = struct.calcsize(SECTION_HEADER) + struct.calcsize(SEGMENT_HEADER)  # one segment
STREAM, TAIL = GOOD[HEAD : HEAD + 1], GOOD[HEAD + 1 :]  # positions 1 and 5 (m = 2): one byte

MALFORMED = {
    "version": (b"\x02" + GOOD[1:], "sparse format version 2"),
    "segments": (_section([(2, 2, 1), (0, 1, 0)], STREAM, TAIL), "has 2 segments; expected 1"),
    "over-limit": (_section([(3, 2, 1)], STREAM, TAIL), "segment 0 carries 3 entries; at most 2 of its 8"),
    "stream-past-end": (_section([(2, 2, 999)], STREAM, TAIL), "gap stream of 999 bytes past its end"),
    # m = 1, gaps 0 and 9: positions 0 and 10 in a segment of 8
    "past-the-segment": (_section([(2, 1, 2)], b"\x80\x20", TAIL), "past the end of a vector of 8"),
    "golomb-parameter": (_section([(2, 9, 1)], STREAM, TAIL), "Golomb parameter 9 is out of range"),
    "values-count": (
        GOOD[: HEAD + 1] + encode_values(np.array([4.0], np.float32), "bfloat16", 0),
        "has 1 entries; expected 2",
    ),
    "values-float32": (
        GOOD[: HEAD + 1] + encode_values(np.array([4.0, 1.0], np.float32), "float32", 0),
        "written in float32; this round's sparse upload sends bfloat16",
    ),
    "values-relative": (
        GOOD[: HEAD + 1] + encode_values(np.array([4.0, 1.0], np.float32), "bfloat16", 0, True),
        "cannot be relative",
    ),
    "truncated": (GOOD[:5], "truncated"),
}


def test_the_good_section_decodes():
    assert list(decode_sparse(GOOD, PLAN, "s")) == [0, 4.0, 0, 0, 0, 1.0, 0, 0]


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_sparse_section_is_refused_with_the_reason(case):
    section, reason = MALFORMED[case]
    with pytest.raises(WireError, match=reason):
        decode_sparse(section, PLAN, "s")


# -- the greedy's decision --------------------------------------------------------------------------------
def _greedy(importance: np.ndarray, weights: np.ndarray, mask: np.ndarray, rule: TopRule) -> np.ndarray:
    coefficients = np.array([1.0, 2.0])  # c_l differ: the order across layers is by S / c_l
    return reconfigure_mask(weights, mask, importance, LAYOUT, coefficients, 1.0, rule.removal)


def test_top_importance_gives_the_exact_greedy_decision_where_the_bound_holds():
    weights = np.arange(1, LAYOUT.num_floats + 1, dtype=np.float32)
    mask = LAYOUT.full_mask()
    mask[0:6] = False  # fc1: 6 pruned (0..5), 6 kept (6..11)
    mask[15:18] = False  # fc2: 3 pruned (15..17), 3 kept (18..20)
    rule = TopRule(removal=0.5, growth=0.0, factor=1.0)  # cores >= 3 + 2 = 5, N_max = 9: B = 4
    assert addition_bound(LAYOUT.kept_per_layer(mask), rule) == 4
    plan = segment_plan(LAYOUT, mask, rule)
    assert plan == SparsePlan((6, 3), (4, 3))
    # two clients' pruned-position importance (bfloat16-exact); kept positions rebuilt on the server
    uploads = [
        np.array([8, 0.25, 6, 0.5, 0.125, 3, 4, 0.5, 1], np.float32),
        np.array([4, 0.5, 2, 0.25, 0.25, 5, 2, 0.25, 3], np.float32),
    ]
    rebuilt = np.zeros(LAYOUT.num_floats)
    rebuilt[LAYOUT.parameter_positions] = 1.0
    rebuilt[~mask] = 0.0
    pruned = LAYOUT.pruned_positions(mask)

    def total(vectors: list[np.ndarray]) -> np.ndarray:
        s = rebuilt.copy()
        for v in vectors:
            s[pruned] += v
        return s

    sent = [decode_sparse(encode_sparse(keep_top(u, plan), plan, 1), plan, "s") for u in uploads]
    assert all(np.count_nonzero(v[:6]) == 4 for v in sent)  # fc1's two smallest of each client stay home
    exact = _greedy(total(uploads), weights, mask, rule)
    top = _greedy(total(sent), weights, mask, rule)
    added = np.flatnonzero(exact & ~mask)
    assert len(added) <= 4 and len(added) > 0  # the bound held
    assert np.array_equal(top, exact)


def test_a_position_some_client_left_out_can_change_the_decision():
    """The sum of per-client top-Ks is not the top-K of the sum: the bound alone guarantees nothing."""
    weights = np.arange(1, LAYOUT.num_floats + 1, dtype=np.float32)
    mask = LAYOUT.full_mask()
    mask[0:6] = False
    rule = TopRule(removal=0.0, growth=1 / 6, factor=1.0)  # 18 kept -> N_max = 21, cores 18: B = 3
    plan = segment_plan(LAYOUT, mask, rule)
    # each client's third-largest is a position the other ranks low; summed, positions 3 and 4 lead
    uploads = [np.array([9, 8, 7, 6.5, 0, 0], np.float32), np.array([0, 0, 0, 6.5, 7, 0], np.float32)]
    rebuilt = np.zeros(LAYOUT.num_floats)
    rebuilt[12:15] = 47.5  # objective 142.5 / (T0 + 6 c_1 + 6 c_2) = 7.5: candidates need S / c > 7.5
    s_exact, s_top = rebuilt.copy(), rebuilt.copy()
    for u in uploads:
        s_exact[0:6] += u
        s_top[0:6] += keep_top(u, plan)
    exact = _greedy(s_exact, weights, mask, rule)
    top = _greedy(s_top, weights, mask, rule)
    # exact: 13 (position 3), 9, 8 join; top: 9, 8 only - client 0 left out its 6.5 at position 3
    assert list(np.flatnonzero(exact[0:6])) == [0, 1, 3]
    assert list(np.flatnonzero(top[0:6])) == [0, 1]


# -- through the app --------------------------------------------------------------------------------------
TOP = ["pruning.prunefl.importance-upload=top"]


def test_top_uploads_are_smaller_and_the_run_completes(tmp_path):
    exact_grid, top_grid = InProcessGrid(client_app, 3), InProcessGrid(client_app, 3)
    run_federation(exact_grid, config(tmp_path / "exact"))
    run_federation(top_grid, config(tmp_path / "top", TOP))
    exact_row, top_row = (read_rounds(tmp_path / name / "run")[1] for name in ("exact", "top"))
    assert int(top_row["rejected"]) == 0 and int(top_row["clients"]) == 3
    assert 0 < int(top_row["importance_up"]) < int(exact_row["importance_up"])
    trained = [m for m in top_grid.received if m.has_content() and m.metadata.message_type == "train"]
    replies = [m.content.array_records["arrays"] for m in trained]
    uploads = [r for r in replies if IMPORTANCE_TOP in r]
    assert len(uploads) == 3 and not any(IMPORTANCE in r for r in replies)


def test_the_exact_upload_is_the_default_and_its_task_entries_are_unchanged():
    config = load_config(None, ["pruning.prunefl.reconfig-interval=1"])
    assert config.method.importance_upload == "exact"  # type: ignore[attr-defined]
    method = PruneFL(config.method, method_env(config, LAYOUT, True))  # type: ignore[arg-type]
    assert method.task_entries(1, True) == {"importance": "upload", "importance-scope": "pruned"}
    assert method.upload_plan(1, LAYOUT.full_mask()) is None
    top = load_config(None, ["pruning.prunefl.reconfig-interval=1", *TOP])
    entries = PruneFL(top.method, method_env(top, LAYOUT, True)).task_entries(1, True)  # type: ignore[arg-type]
    assert set(entries) > {"importance", "importance-scope", "importance-top.removal"}


def _swap(name: str, data: bytes):
    def tamper(reply: Message, _sent: Message) -> list[Message]:
        record = reply.content.array_records["arrays"]
        for old in (IMPORTANCE, IMPORTANCE_TOP):
            if old in record:
                del record[old]
        record[name] = raw_array(name, data)
        return [reply]

    return tamper


def _over_limit(reply: Message, _sent: Message) -> list[Message]:
    record = reply.content.array_records["arrays"]
    section = record[IMPORTANCE_TOP].data
    offset = struct.calcsize(SECTION_HEADER)
    count, m, num_bytes = struct.unpack_from(SEGMENT_HEADER, section, offset)
    forged = section[:offset] + struct.pack(SEGMENT_HEADER, 10**6, m, num_bytes) + section[offset + 20 :]
    record[IMPORTANCE_TOP] = raw_array(IMPORTANCE_TOP, forged)
    return [reply]


def _values(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Message, Message], list[Message]]:
    """Change the numbers of the reply's sparse section (its positions stay)."""

    def tamper(reply: Message, _sent: Message) -> list[Message]:
        record = reply.content.array_records["arrays"]
        section = record[IMPORTANCE_TOP].data
        reader_offset = struct.calcsize(SECTION_HEADER)
        num_segments = struct.unpack_from(SECTION_HEADER, section)[3]
        heads = [
            struct.unpack_from(SEGMENT_HEADER, section, reader_offset + i * struct.calcsize(SEGMENT_HEADER))
            for i in range(num_segments)
        ]
        body = reader_offset + num_segments * struct.calcsize(SEGMENT_HEADER) + sum(h[2] for h in heads)
        tail = section[body:]
        numbers, _ = decode_values(tail, read_header(tail, "v")[1], "v")
        forged = section[:body] + encode_values(change(numbers), "bfloat16", 1)
        record[IMPORTANCE_TOP] = raw_array(IMPORTANCE_TOP, forged)
        return [reply]

    return tamper


REJECTED = {
    "whole-instead": (
        _swap(IMPORTANCE, b"\x01\x00\x00\x00" + bytes(8)),
        "bad-payload: array 'importance' was sent whole; this round's upload is 'importance-top'",
    ),
    "junk": (_swap(IMPORTANCE_TOP, b"junk"), "bad-payload: array 'importance-top' is truncated"),
    "over-limit": (_over_limit, "bad-payload: array 'importance-top': segment 0 carries 1000000 entries"),
    "negative": (_values(lambda v: -v), "bad-metric: the uploaded importance holds negative values"),
    "nan": (_values(lambda v: np.full_like(v, np.nan)), "non-finite"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_a_malformed_top_upload_is_rejected_with_its_reason(tmp_path, case, warnings_logged):
    tamper, reason = REJECTED[case]
    grid = TamperingGrid(client_app, 3, tamper=tamper, message_type="train")
    run_federation(grid, config(tmp_path, TOP))
    row = read_rounds(tmp_path / "run")[1]
    assert (int(row["rejected"]), int(row["clients"])) == (1, 3)
    assert any(f"rejected: {reason}" in w for w in warnings_logged), warnings_logged


def test_top_is_refused_with_momentum():
    env = method_env(load_config(None, [*TOP, "train.momentum=0.9"]), LAYOUT, True)
    with pytest.raises(ValueError, match="importance-upload = 'top' needs plain SGD"):
        PruneFL(PruneFLSettings(importance_upload="top"), env)
