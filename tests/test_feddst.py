"""FedDST: the client's prune/regrow step, the server's vote, the schedule, the settings and the bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.pruning import ClientReport, MethodEnv, RoundUpdate
from common.pruning.feddst import (
    FedDST,
    FedDSTSettings,
    check_layer_counts,
    prune_and_regrow,
    readjust_fraction,
    vote_mask,
)
from common.settings import ConfigError

T, F = True, False


def _method(layout, rounds=10, factor=10.0, **settings) -> FedDST:
    env = MethodEnv(layout, rounds, 2, True, 0, statistic_factor=factor)
    return FedDST(FedDSTSettings(**settings), env)


def test_prune_and_regrow_drops_smallest_weights_and_grows_largest_gradients():
    weights = np.array([0.5, -0.1, 0.0, 0.3, 0.0, 0.0, -0.8, 0.2], dtype=np.float32)
    mask = np.array([T, T, F, T, F, F, T, T])
    grads = np.array([9, 9, 0.2, 9, -0.7, 0.4, 9, 9], dtype=np.float32)
    # 5 kept, k = floor(0.5 * 5) = 2: drop |w| = 0.1 (1) and 0.2 (7); grow |g| = 0.7 (4) and 0.4 (5)
    new = prune_and_regrow(weights, grads, mask, 0.5)
    assert new.tolist() == [T, F, F, T, T, T, T, F]
    assert mask.tolist() == [T, T, F, T, F, F, T, T]  # the input is left as it was


def test_prune_and_regrow_keeps_the_count_breaks_ties_by_position_and_grows_only_old_holes():
    weights = np.array([0.2, 0.2, 0.2, 0.0], dtype=np.float32)
    mask = np.array([T, T, T, F])
    grads = np.zeros(4, dtype=np.float32)
    # k = min(floor(1.0 * 3), 1 pruned) = 1: the first of the equal weights goes, the old hole grows
    assert prune_and_regrow(weights, grads, mask, 1.0).tolist() == [F, T, T, T]
    assert prune_and_regrow(weights, grads, mask, 0.3).tolist() == mask.tolist()  # floor(0.9) = 0


def _fc2(layout):
    return next(t for t in layout.prunable if t.name == "fc2.weight")


def _masks_on_fc2(layout, rows):
    masks = []
    for row in rows:
        mask = layout.full_mask()
        fc1 = next(t for t in layout.prunable if t.name == "fc1.weight")
        mask[fc1.slice] = np.arange(fc1.size) < 6  # every client keeps fc1's first half
        mask[_fc2(layout).slice] = row
        masks.append(mask)
    return masks


def test_the_vote_keeps_the_most_voted_positions_at_the_density(tiny):
    _, layout = tiny
    masks = _masks_on_fc2(layout, [[T, T, T, F, F, F], [F, T, T, T, F, F], [F, F, T, T, T, F]])
    weights = np.array([2.0, 1.0, 1.0])
    # votes on fc2 (/ 4): [2, 3, 4, 2, 1, 0]; K = round(0.5 * 6) = 3: positions 2, 1, then 0 or 3 (tied)
    magnitudes = np.zeros(layout.num_floats)
    by_position = vote_mask(masks, weights, magnitudes, layout, 0.5)
    assert by_position[_fc2(layout).slice].tolist() == [T, T, T, F, F, F]  # tie: the lower position
    magnitudes[_fc2(layout).slice] = [0.1, 0.0, 0.0, 0.5, 0.0, 0.0]
    by_magnitude = vote_mask(masks, weights, magnitudes, layout, 0.5)
    assert by_magnitude[_fc2(layout).slice].tolist() == [F, T, T, T, F, F]  # tie: the larger |w|
    assert by_magnitude[~_in_prunable(layout)].all()  # non-prunable positions stay kept
    check_layer_counts(by_magnitude, layout, 0.5)  # every layer at the density


def _in_prunable(layout):
    where = np.zeros(layout.num_floats, dtype=bool)
    where[layout.prunable_positions] = True
    return where


def test_the_mask_changes_only_on_interval_rounds_until_the_end(tiny):
    _, layout = tiny
    settings = FedDSTSettings(interval=3, end_fraction=0.8, alpha=0.4)  # T_end = ceil(0.8 * 10) = 8
    method = _method(layout, rounds=10, interval=3, end_fraction=0.8, alpha=0.4)
    plans = {t: method.round_plan(t) for t in range(1, 11)}
    assert [t for t, p in plans.items() if p.client_masks] == [3, 6]
    assert all(not p.client_config for t, p in plans.items() if t not in (3, 6))
    assert plans[3].client_config["fraction"] == pytest.approx(0.2 * (1 + math.cos(math.pi * 3 / 8)))
    assert readjust_fraction(8, settings, 10) == pytest.approx(0.0, abs=1e-12)  # cosine reaches 0 at T_end
    assert readjust_fraction(9, settings, 10) == 0.0
    every_fourth = _method(layout, rounds=10, interval=4, end_fraction=0.8)
    assert [t for t in range(1, 11) if every_fourth.round_plan(t).client_masks] == [4]  # 8: alpha_8 = 0


def test_the_initial_mask_is_layerwise_uniform_at_the_density(tiny):
    _, layout = tiny
    method = _method(layout, target_density=0.5)
    mask = method.initial_mask(np.zeros(layout.num_floats, np.float32), layout.full_mask(), None).mask
    check_layer_counts(mask, layout, 0.5)
    again = method.initial_mask(np.zeros(layout.num_floats, np.float32), layout.full_mask(), None).mask
    assert np.array_equal(mask, again)  # a function of the run's seed


def _report(mask, weight, partition=0):
    return ClientReport(partition, weight, mask, {})


def test_a_client_mask_off_the_layer_counts_is_refused(tiny):
    _, layout = tiny
    method = _method(layout, target_density=0.5)
    (honest,) = _masks_on_fc2(layout, [[T, T, T, F, F, F]])
    method.check_report(_report(honest, 1.0))
    greedy = honest.copy()
    greedy[_fc2(layout).slice] = True
    with pytest.raises(ValueError, match="keeps 6 weights of fc2.weight; FedDST keeps 3"):
        method.check_report(_report(greedy, 1.0))


def test_a_hostile_weight_counts_at_most_statistic_factor_times_the_median(tiny):
    _, layout = tiny
    masks = _masks_on_fc2(layout, [[T, T, T, F, F, F], [T, T, T, F, F, F], [F, F, F, T, T, T]])
    floats = np.zeros(layout.num_floats, dtype=np.float32)
    update = RoundUpdate(
        1,
        floats,
        layout.full_mask(),
        floats,
        0.1,
        [_report(m, w, i) for i, (m, w) in enumerate(zip(masks, [1.0, 1.0, 1e6], strict=True))],
    )
    merged = _method(layout, factor=1.5, target_density=0.5).merge_clients(update)
    # the hostile weight 1e6 is clipped to 1.5 x median 1 = 1.5 < 2: the two honest votes win
    assert merged[_fc2(layout).slice].tolist() == [T, T, T, F, F, F]


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("interval", 0, "an integer >= 1"),
        ("alpha", 0.0, "in \\(0, 1\\]"),
        ("end_fraction", 1.5, "in \\(0, 1\\]"),
    ],
)
def test_bad_settings_name_the_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError, match=allowed):
        FedDSTSettings(**{key: value})
