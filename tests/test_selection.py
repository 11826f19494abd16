"""Scoring, selecting and scheduling: hand-computed cases."""

import numpy as np
import pytest
from torch import nn

from common.layout import ModelLayout
from common.pruning.droppruning import DropPruningSettings, drop_step, expected_density
from common.pruning.schedules import DensitySchedule, Geometric, OneShot, Polynomial
from common.pruning.selection import keep_top, layer_count, magnitude_scores
from common.settings import ConfigError
from server.aggregation import masked_fedavg, per_position_fedavg


def test_keep_top_per_layer_and_global(tiny):
    _, layout = tiny  # fc1.weight 12 at [0, 12), fc2.weight 6 at [15, 21)
    scores = np.zeros(layout.num_floats)
    scores[0:12] = np.arange(12)  # fc1: 0..11
    scores[15:21] = 100 + np.arange(6)  # fc2: all above fc1
    per_layer = keep_top(scores, layout, 0.5, "layer")
    assert np.flatnonzero(~per_layer[0:12]).tolist() == list(range(6))  # 6 smallest of fc1 pruned
    assert np.flatnonzero(~per_layer[15:21]).tolist() == [0, 1, 2]
    assert per_layer[12:15].all() and per_layer[21:].all()  # biases are never pruned
    overall = keep_top(scores, layout, 0.5, "global")  # 9 of 18: all of fc2 and fc1's 3 largest
    assert overall[15:21].all() and np.flatnonzero(overall[0:12]).tolist() == [9, 10, 11]


def test_a_new_mask_keeps_the_zeros_of_the_old_one(tiny):
    _, layout = tiny
    scores = magnitude_scores(np.arange(layout.num_floats, dtype=np.float32))
    old = layout.full_mask()
    old[11] = False  # the best weight of fc1 was pruned before
    new = keep_top(scores, layout, 0.5, "layer", eligible=old)
    assert not new[11] and np.flatnonzero(new[0:12]).tolist() == [5, 6, 7, 8, 9, 10]


def test_layer_count_keeps_at_least_one_weight():
    assert layer_count(0.001, 10) == 1 and layer_count(0.5, 10) == 5 and layer_count(1.0, 7) == 7


def test_schedules_are_pure_functions_of_the_round_and_round_trip():
    one = OneShot(0.2, begin=3)
    assert [one.density_at(t) for t in (0, 2, 3, 9)] == [1.0, 1.0, 0.2, 0.2]
    assert [t for t in range(10) if one.updates_at(t)] == [3]
    poly = Polynomial(0.1, begin=0, end=4, frequency=2, power=1.0)
    assert [poly.density_at(t) for t in (0, 2, 4, 8)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert [t for t in range(10) if poly.updates_at(t)] == [0, 2, 4]
    cubic = Polynomial(0.1, begin=0, end=4)
    assert cubic.density_at(2) == pytest.approx(0.1 + 0.9 * 0.5**3)  # TF-MOT's cubic decay
    geo = Geometric(0.01, begin=0, end=2)
    assert [geo.density_at(t) for t in (0, 1, 2)] == pytest.approx([1.0, 0.1, 0.01])
    for schedule in (one, poly, cubic, geo):
        assert DensitySchedule.from_config(schedule.get_config()) == schedule


@pytest.mark.parametrize(
    "make",
    [
        lambda: OneShot(0.0),
        lambda: OneShot(0.5, begin=-1),
        lambda: Polynomial(0.5, begin=3, end=3),
        lambda: Polynomial(0.5, begin=0, end=3, frequency=0),
        lambda: Polynomial(0.5, begin=0, end=3, power=0),
        lambda: Geometric(1.5, begin=0, end=3),
    ],
)
def test_schedules_reject_impossible_settings(make):
    with pytest.raises(ValueError):
        make()


def test_droppruning_expected_density_moves_to_its_fixed_point():
    s = DropPruningSettings(target_density=0.1, candidate_fraction=0.2, drop_probability=0.5)
    q, p_out, p_in = s.candidate_fraction, s.drop_probability, s.revive_probability
    assert p_in == pytest.approx(0.5 * 0.2 * 0.1 / 0.9)
    assert p_in / (p_in + p_out * q) == pytest.approx(0.1)  # d* = p_in / (p_in + p_out q)
    d = 1.0
    for _ in range(200):
        d = expected_density(d, q, p_out, p_in)
    assert d == pytest.approx(0.1, abs=1e-9)
    assert expected_density(0.1, q, p_out, p_in) == pytest.approx(0.1)  # the target is a fixed point


def test_droppruning_steps_follow_the_expected_density():
    """On one large layer the sampled density tracks E[d'] step by step."""
    layout = ModelLayout.from_model(nn.Linear(400, 500, bias=False))
    floats = np.random.default_rng(1).normal(size=layout.num_floats).astype(np.float32)
    mask, d = layout.full_mask(), 1.0
    q, p_out, p_in = 0.2, 0.5, 0.5 * 0.2 * 0.3 / 0.7  # fixed point 0.3
    for step in range(30):
        mask = drop_step(floats, mask, layout, np.random.default_rng(step), q, p_out, p_in)
        d = expected_density(d, q, p_out, p_in)
        assert abs(layout.density(mask) - d) < 0.01  # 200k weights: binomial noise ~1e-3
    assert abs(layout.density(mask) - 0.3) < 0.02


def test_droppruning_rejects_a_target_above_the_reachable_fixed_point():
    with pytest.raises(ConfigError, match="1 / \\(1 \\+ drop-probability"):
        DropPruningSettings(target_density=0.95, candidate_fraction=0.2, drop_probability=0.5)


def test_per_position_fedavg_averages_over_the_clients_that_kept_each_position():
    floats = np.array([9.0, 9.0, 9.0, 9.0], dtype=np.float32)
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    new = per_position_fedavg(
        floats, [a, b], [np.array([1.0, 2.0], np.float32), np.array([4.0, 6.0], np.float32)], [1.0, 3.0]
    )
    # position 0: (1*1 + 3*4) / 4; 1: only a; 2: only b; 3: nobody, the old value stays
    np.testing.assert_allclose(new, [3.25, 2.0, 6.0, 9.0])
    same = per_position_fedavg(floats, [a, a], [np.array([1.0, 2.0]), np.array([3.0, 4.0])], [1.0, 1.0])
    np.testing.assert_allclose(
        same, masked_fedavg(floats, a, [np.array([1.0, 2.0]), np.array([3.0, 4.0])], [1, 1])
    )
