"""PruneFL's reconfiguration R(S, dtp) on hand-computed inputs and against a literal heap."""

import heapq

import numpy as np
import pytest

from common.layout import ModelLayout
from common.pruning import reconfiguration
from common.pruning.reconfiguration import protected_core, ranked_head, reconfigure_mask, removal_cap
from tests.conftest import TinyNet


def heap_reference(weights, mask, importance, layout, coefficients, constant, dtp):
    """The authors' greedy, written out with a max-heap over layers."""
    new_mask = mask.copy()
    numerator = sum(importance[t.slice].sum() for t in layout.parameters if not t.prunable)
    denominator = constant
    lists = []
    for t, c in zip(layout.prunable, coefficients, strict=True):
        core = protected_core(weights[t.slice], mask[t.slice], dtp)
        new_mask[t.slice] = core
        numerator += importance[t.slice][core].sum()
        denominator += c * core.sum()
        cand = np.flatnonzero(~core)
        cand = cand[np.argsort(-importance[t.slice][cand], kind="stable")]
        lists.append((t, c, list(cand)))
    heap = [(-importance[t.slice][cand[0]] / c, i) for i, (t, c, cand) in enumerate(lists) if cand]
    heapq.heapify(heap)
    while heap:
        neg_ratio, i = heap[0]
        if -neg_ratio <= numerator / denominator:
            break
        t, c, cand = lists[i]
        j = cand.pop(0)
        new_mask[t.offset + j] = True
        numerator += importance[t.slice][j]
        denominator += c
        if cand:
            heapq.heapreplace(heap, (-importance[t.slice][cand[0]] / c, i))
        else:
            heapq.heappop(heap)
    return new_mask


def test_protected_core_threshold():
    w = np.array([0.5, -0.1, 0.3, 0.0, -0.9, 0.2], dtype=np.float32)
    active = np.array([1, 1, 1, 0, 1, 1], dtype=bool)
    # five active weights, dtp = 0.4 -> k = int(2.0) = 2; sorted |w| = .1 .2 .3 .5 .9 -> threshold .3
    core = protected_core(w, active, 0.4)
    assert list(core) == [True, False, True, False, True, False]
    assert not protected_core(w, np.zeros(6, dtype=bool), 0.3).any()


def test_hand_computed_reconfiguration():
    layout = ModelLayout.from_model(TinyNet())
    weights = np.zeros(layout.num_floats, dtype=np.float32)
    weights[0:12] = np.arange(1, 13)  # fc1.weight magnitudes 1..12
    weights[15:21] = np.arange(1, 7)  # fc2.weight magnitudes 1..6
    mask = layout.full_mask()
    importance = np.zeros(layout.num_floats)
    importance[12:15] = 1.0  # fc1.bias: numerator starts at 3 (fc2.bias zero)
    # dtp = 0.5: fc1 keeps |w| >= 7 (six weights), fc2 keeps |w| >= 4 (three weights)
    importance[0:6] = [10, 0.01, 0.01, 0.01, 0.01, 0.01]  # fc1 candidate 0 is valuable
    importance[15:18] = [2.0, 0.01, 0.01]
    coefficients = np.array([1.0, 1.0])
    # num = 3, den = T0 + 9 = 10 -> objective 0.3: (fc1, 10) passes (objective 13 / 11),
    # (fc2, 2.0) passes (objective 15 / 12 = 1.25), then 0.01 fails.
    new = reconfigure_mask(weights, mask, importance, layout, coefficients, 1.0, 0.5)
    expected = layout.full_mask()
    expected[1:6] = False
    expected[16:18] = False
    assert np.array_equal(new, expected)


@pytest.mark.parametrize("head_start", [1, 2, 5, reconfiguration.HEAD_START])
@pytest.mark.parametrize("seed", range(5))
def test_vectorised_greedy_equals_heap(seed, head_start, monkeypatch):
    # head_start 1, 2, 5: the ranked head is widened (4x) several times before the stop
    monkeypatch.setattr(reconfiguration, "HEAD_START", head_start)
    rng = np.random.default_rng(seed)
    layout = ModelLayout.from_model(TinyNet())
    weights = rng.normal(size=layout.num_floats).astype(np.float32)
    mask = layout.full_mask()
    mask[layout.prunable_positions] = rng.random(layout.num_prunable) < 0.6
    importance = rng.exponential(size=layout.num_floats) ** 3
    coefficients = rng.uniform(0.5, 2.0, size=2)
    dtp = 0.3
    ours = reconfigure_mask(weights, mask, importance, layout, coefficients, 2.0, dtp)
    theirs = heap_reference(weights, mask, importance, layout, coefficients, 2.0, dtp)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("head_start", [1, 3, reconfiguration.HEAD_START])
def test_tied_ratios_are_taken_in_the_heaps_order(head_start, monkeypatch):
    monkeypatch.setattr(reconfiguration, "HEAD_START", head_start)
    layout = ModelLayout.from_model(TinyNet())
    rng = np.random.default_rng(7)
    weights = rng.normal(size=layout.num_floats).astype(np.float32)
    mask = layout.full_mask()
    mask[layout.prunable_positions] = rng.random(layout.num_prunable) < 0.5
    importance = rng.integers(0, 3, size=layout.num_floats).astype(np.float64)  # many ties
    for constant in (0.5, 4.0, 40.0):
        ours = reconfigure_mask(weights, mask, importance, layout, np.array([1.0, 1.0]), constant, 0.3)
        theirs = heap_reference(weights, mask, importance, layout, np.array([1.0, 1.0]), constant, 0.3)
        assert np.array_equal(ours, theirs)


def test_ranked_head_is_a_prefix_of_the_stable_sort():
    key = np.array([3.0, 1.0, 2.0, 1.0, 0.0, 2.0, 1.0, 5.0])
    full = np.argsort(key, kind="stable")  # 4, 1, 3, 6, 2, 5, 0, 7
    assert list(ranked_head(key, 1)) == [4]
    assert list(ranked_head(key, 2)) == [4, 1, 3, 6]  # the tie at the boundary comes whole
    assert list(ranked_head(key, 5)) == [4, 1, 3, 6, 2, 5]
    assert list(ranked_head(key, 8)) == list(full)


def test_an_emptied_layer_does_not_crash_and_can_regrow():
    layout = ModelLayout.from_model(TinyNet())
    weights = np.ones(layout.num_floats, dtype=np.float32)
    mask = layout.full_mask()
    mask[0:12] = False  # fc1.weight entirely pruned
    importance = np.zeros(layout.num_floats)
    importance[3] = 100.0
    new = reconfigure_mask(weights, mask, importance, layout, np.array([1.0, 1.0]), 1.0, 0.3)
    assert new[3] and new[0:12].sum() == 1


def test_max_removal_bounds_each_layer():
    layout = ModelLayout.from_model(TinyNet())
    weights = np.arange(layout.num_floats, dtype=np.float32) + 1
    mask = layout.full_mask()
    importance = np.zeros(layout.num_floats)  # nothing is worth re-adding
    new = reconfigure_mask(weights, mask, importance, layout, np.array([1.0, 1.0]), 1.0, 0.25)
    kept = layout.kept_per_layer(new)
    assert list(kept) == [12 - int(0.25 * 12), 6 - int(0.25 * 6)]


def test_max_kept_caps_additions():
    layout = ModelLayout.from_model(TinyNet())
    weights = np.arange(layout.num_floats, dtype=np.float32) + 1
    mask = layout.full_mask()
    importance = np.zeros(layout.num_floats)
    importance[layout.prunable_positions] = 1.0
    importance[[0, 1, 2, 3, 4, 5, 15, 16, 17]] = 1000.0  # the low-magnitude half is important
    uncapped = reconfigure_mask(weights, mask, importance, layout, np.array([1.0, 1.0]), 0.0, 0.5)
    capped = reconfigure_mask(weights, mask, importance, layout, np.array([1.0, 1.0]), 0.0, 0.5, max_kept=10)
    assert layout.kept_per_layer(uncapped).sum() > 10
    assert layout.kept_per_layer(capped).sum() == 10


def test_removal_cap_half_life():
    assert removal_cap(0, 0.3, 10000) == 0.3
    assert removal_cap(10000, 0.3, 10000) == pytest.approx(0.15)


def test_bad_arguments_are_refused():
    layout = ModelLayout.from_model(TinyNet())
    w, m, s = np.zeros(23, np.float32), layout.full_mask(), np.zeros(23)
    with pytest.raises(ValueError, match="max_removal"):
        reconfigure_mask(w, m, s, layout, np.array([1.0, 1.0]), 1.0, 1.0)
    with pytest.raises(ValueError, match="positive cost coefficient"):
        reconfigure_mask(w, m, s, layout, np.array([1.0, 0.0]), 1.0, 0.3)
