"""Robust aggregation and bounded statistics: hand-computed cases, then each attack against each rule.

The attack table screens every reply with the server's own always-on checks
(:func:`server.validation.bounded_update`, :class:`server.validation.ReplayGuard`,
the codec's format check) and aggregates the rest with each rule, over a pruned
mask and over clients' own masks (partial coverage). The bounds asserted:

* a rejected reply leaves the aggregate exactly equal to the honest clients' one;
* ``mean``: the step ||w' - w|| is at most the largest accepted update's norm,
  itself at most ``outlier_factor * ||w||``;
* ``clip``: the step is at most ``clip_factor`` times the largest honest update norm
  (while fewer than half the clients are hostile);
* ``trimmed-mean`` (beta above the hostile share) and ``median`` (hostile under half):
  every position lies between the smallest and the largest honest value there.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common.bounds import median_clip_scales
from common.wire import WireError, WireFormat
from common.wire.codec import STYPES, require_format
from common.wire.values import encode_values
from server.aggregation import masked_fedavg, per_position_fedavg
from server.robust import RULES, aggregate_masked, robust_average, weighted_median, weighted_trimmed_mean
from server.validation import RejectedReply, ReplayGuard, bounded_update

F32 = np.float32


# -- hand-computed -----------------------------------------------------------------------------------
def test_weighted_median_of_equal_weights_is_the_ordinary_median():
    values = np.array([[1.0, 5.0], [3.0, 1.0], [2.0, 9.0], [10.0, 2.0]])
    weights = np.ones_like(values)
    np.testing.assert_allclose(weighted_median(values, weights), [2.5, 3.5])
    np.testing.assert_allclose(weighted_median(values[:3], weights[:3]), [2.0, 5.0])


def test_weighted_median_follows_the_weights_and_skips_absent_clients():
    values = np.array([[1.0], [2.0], [100.0]])
    np.testing.assert_allclose(weighted_median(values, np.array([[3.0], [1.0], [1.0]])), [1.0])
    np.testing.assert_allclose(weighted_median(values, np.array([[0.0], [1.0], [1.0]])), [51.0])
    assert np.isnan(weighted_median(values, np.zeros((3, 1))))[0]


def test_trimmed_mean_cuts_a_share_of_the_weight_at_each_end():
    values = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    weights = np.ones_like(values)
    np.testing.assert_allclose(weighted_trimmed_mean(values, weights, 0.2), [3.0])  # drops 1 and 100
    np.testing.assert_allclose(weighted_trimmed_mean(values, weights, 0.0), [22.0])
    # beta * n = 0.5: half of the smallest and half of the largest element are cut
    half = (0.5 * 1 + 2 + 3 + 4 + 0.5 * 100) / 4
    np.testing.assert_allclose(weighted_trimmed_mean(values, weights, 0.1), [half])


def test_median_and_trimmed_mean_over_the_clients_that_kept_a_position():
    floats = np.array([10.0, 20.0, 30.0], F32)
    masks = [np.array([True, True, False]), np.array([True, False, False]), np.array([True, True, False])]
    values = [np.array([1.0, 4.0], F32), np.array([2.0], F32), np.array([3.0, 8.0], F32)]
    out = robust_average(floats, masks, values, [1.0, 1.0, 1.0], "median")
    np.testing.assert_allclose(out, [2.0, 6.0, 30.0])  # position 2: nobody kept it
    out = robust_average(floats, masks, values, [1.0, 1.0, 1.0], "trimmed-mean", trim_fraction=0.0)
    np.testing.assert_allclose(out, [2.0, 6.0, 30.0])


def test_clip_scales_updates_above_the_factor_times_the_median_norm():
    np.testing.assert_allclose(median_clip_scales([1.0, 2.0, 3.0, 40.0], 2.0), [1.0, 1.0, 1.0, 5.0 / 40.0])
    floats = np.zeros(2, F32)
    mask = np.ones(2, bool)
    values = [np.array([1.0, 0.0], F32), np.array([0.0, 1.0], F32), np.array([300.0, 400.0], F32)]
    out = aggregate_masked(floats, mask, values, [1.0, 1.0, 1.0], "clip", clip_factor=2.0)
    # median norm 1, the third update (norm 500) scaled to norm 2: (1.2, 1.6)
    np.testing.assert_allclose(out, [(1 + 1.2) / 3, (1 + 1.6) / 3], rtol=1e-6)


def test_mean_is_exactly_masked_fedavg():
    rng = np.random.default_rng(0)
    floats = rng.normal(size=50).astype(F32)
    mask = rng.random(50) < 0.5
    values = [rng.normal(size=int(mask.sum())).astype(F32) for _ in range(4)]
    weights = [3.0, 1.0, 2.0, 5.0]
    ours = aggregate_masked(floats, mask, values, weights, "mean")
    assert ours.tobytes() == masked_fedavg(floats, mask, values, weights).tobytes()
    masks = [mask] * 4
    assert robust_average(floats, masks, values, weights, "mean").tobytes() == (
        per_position_fedavg(floats, masks, values, weights).tobytes()
    )


def test_the_format_check_names_the_format_found():
    section = encode_values(np.ones(3, F32), "bfloat16", 1)
    require_format(section, "array 'values'", "bfloat16")
    with pytest.raises(WireError, match="written in bfloat16; this run's format is float32"):
        require_format(section, "array 'values'", "float32")


# -- each attack against each rule ---------------------------------------------------------------------
HONEST, CLIENTS, SIZE = 7, 10, 400
OUTLIER_FACTOR, CLIP_FACTOR, TRIM = 10.0, 2.0, 0.2
RNG = np.random.default_rng(14)
MODEL = RNG.normal(size=SIZE).astype(F32)
DIRECTION = RNG.normal(scale=0.01, size=SIZE)  # what honest training agrees on
HONEST_UPDATES = [DIRECTION + RNG.normal(scale=0.01, size=SIZE) for _ in range(CLIENTS)]


def sign_flip(update: np.ndarray, _previous: np.ndarray) -> np.ndarray:
    return -update


def scaled(factor: float):
    def attack(update: np.ndarray, _previous: np.ndarray) -> np.ndarray:
        return update * factor

    return attack


def huge(update: np.ndarray, _previous: np.ndarray) -> np.ndarray:
    return np.full_like(update, 1e30)  # values of about 1e30


def replay(_update: np.ndarray, previous: np.ndarray) -> np.ndarray:
    return previous


ATTACKS = {
    # name: (attack on the update, hostile replies rejected by the always-on checks)
    "sign-flip": (sign_flip, False),
    "scaled-x5": (scaled(5.0), False),
    "scaled-x1e4": (scaled(1e4), True),
    "values-1e30": (huge, True),
    "replay": (replay, True),
}


def screen(guard: ReplayGuard, node: int, values: np.ndarray, start: np.ndarray) -> bool:
    """The server's checks on one reply's values: True if it is accepted."""
    record = ArrayRecord(
        {
            "values": Array(
                dtype="uint8",
                shape=(values.nbytes,),
                stype=STYPES["values"],
                data=values.astype("<f4").tobytes(),
            )
        }
    )
    try:
        guard.check(node, record)
        bounded_update(values, start, float(np.linalg.norm(start.astype(np.float64))), OUTLIER_FACTOR)
    except RejectedReply:
        return False
    return True


def rounds_of_replies(attack, hostile: int, masks: list[np.ndarray]):
    """Round 1 (honest) and round 2 (hostile clients attack) values per client at its mask."""
    guard = ReplayGuard()
    previous = {}
    for c in range(CLIENTS):
        first = (MODEL + HONEST_UPDATES[c] * 0.5).astype(F32)[masks[c]]
        assert screen(guard, c, first, MODEL[masks[c]])
        previous[c] = first
    accepted, honest = [], []
    for c in range(CLIENTS):
        update = HONEST_UPDATES[c][masks[c]]
        if c >= CLIENTS - hostile:
            values = (MODEL[masks[c]] + attack(update, previous[c] - MODEL[masks[c]])).astype(F32)
        else:
            values = (MODEL[masks[c]] + update).astype(F32)
            honest.append(c)
        ok = screen(guard, c, values, MODEL[masks[c]])
        accepted.append((c, values) if ok else None)
    return accepted, honest


def aggregate(rule: str, masks, pairs):
    kept = [(masks[c], v) for c, v in pairs]
    return robust_average(
        MODEL,
        [m for m, _ in kept],
        [v for _, v in kept],
        [1.0] * len(kept),
        rule,  # type: ignore[arg-type]
        clip_factor=CLIP_FACTOR,
        trim_fraction=TRIM,
    )


MASKINGS = {
    "pruned": lambda c: np.arange(SIZE) % 3 != 0,  # every client on the same global mask
    "own-masks": lambda c: np.random.default_rng(c).random(SIZE) < 0.7,  # partial coverage
}


@pytest.mark.parametrize("masking", list(MASKINGS))
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("attack_name", list(ATTACKS))
def test_each_attack_against_each_rule(attack_name, rule, masking):
    attack, rejected = ATTACKS[attack_name]
    hostile = 1
    masks = [MASKINGS[masking](c) for c in range(CLIENTS)]
    accepted, honest = rounds_of_replies(attack, hostile, masks)
    hostile_accepted = [a for a in accepted[CLIENTS - hostile :] if a is not None]
    assert (not hostile_accepted) == rejected
    assert all(accepted[c] is not None for c in honest)  # no honest reply is rejected
    result = aggregate(rule, masks, [a for a in accepted if a is not None])
    honest_only = aggregate(rule, masks, [accepted[c] for c in honest])
    assert np.isfinite(result).all()
    if rejected:
        assert result.tobytes() == honest_only.tobytes()
        return
    step = float(np.linalg.norm(result.astype(np.float64) - MODEL))
    honest_norms = [float(np.linalg.norm(HONEST_UPDATES[c][masks[c]])) for c in honest]
    if rule == "mean":
        assert step <= OUTLIER_FACTOR * float(np.linalg.norm(MODEL))
    elif rule == "clip":
        assert step <= CLIP_FACTOR * max(honest_norms) * (1 + 1e-6)
    else:  # within the honest values' range at every position some honest client kept
        stacked = np.full((len(honest), SIZE), np.nan)
        for row, c in enumerate(honest):
            stacked[row, masks[c]] = MODEL[masks[c]] + HONEST_UPDATES[c][masks[c]]
        # positions where the hostile clients hold at most beta (trimmed) or under half (median)
        # of the weight of the clients that kept them
        share = (
            np.mean([m for m in masks[CLIENTS - hostile :]], axis=0)
            * hostile
            / np.maximum(np.sum(masks, axis=0), 1)
        )
        limit = share <= TRIM if rule == "trimmed-mean" else share < 0.5
        covered = ~np.isnan(stacked).all(axis=0) & limit
        assert covered.mean() > 0.5
        low, high = np.nanmin(stacked[:, covered], axis=0), np.nanmax(stacked[:, covered], axis=0)
        tolerance = 1e-6 * (1 + np.abs(high))
        assert (result[covered] >= low - tolerance).all() and (result[covered] <= high + tolerance).all()


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
def test_three_of_ten_sign_flippers_stay_within_the_honest_range_under_the_median(rule):
    """3 of 10: the median holds; a trimmed mean holds while beta >= 0.3 (the default 0.2 does not)."""
    masks = [MASKINGS["pruned"](c) for c in range(CLIENTS)]
    accepted, honest = rounds_of_replies(scaled(-5.0), 3, masks)
    pairs = [a for a in accepted if a is not None]
    kept = [(masks[c], v) for c, v in pairs]
    beta = 0.3
    result = robust_average(
        MODEL, [m for m, _ in kept], [v for _, v in kept], [1.0] * len(kept), rule, trim_fraction=beta
    )
    stacked = np.stack([MODEL + HONEST_UPDATES[c] for c in honest])[:, masks[0]]
    assert (result[masks[0]] >= stacked.min(axis=0) - 1e-6).all()
    assert (result[masks[0]] <= stacked.max(axis=0) + 1e-6).all()


def test_the_replay_guard_keeps_one_digest_per_node():
    guard = ReplayGuard()
    record = ArrayRecord({"values": Array(np.zeros(3, F32))})
    guard.check(1, record)
    guard.check(2, record)  # another node may send the same bytes
    with pytest.raises(RejectedReply, match="replay"):
        guard.check(1, record)
    assert len(guard.latest) == 2


# -- bounded statistics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("boost", [1e30, 1e3, 50.0])
def test_a_clients_statistic_weighs_at_most_factor_times_the_median(boost):
    """The stated bound: after scaling, a client's mass is <= factor * the round's median mass."""
    rng = np.random.default_rng(3)
    honest = [rng.random(100) for _ in range(9)]
    hostile = honest[0] * boost
    sizes = [float(x.sum()) for x in [*honest, hostile]]
    scales = median_clip_scales(sizes, 10.0)
    assert np.all(scales[:9] == 1.0)  # honest clients untouched, bit for bit
    median = float(np.median(sizes))
    assert hostile.sum() * scales[9] <= 10.0 * median * (1 + 1e-12)
    assert hostile.sum() * scales[9] <= 10.0 * max(sizes[:9]) * (1 + 1e-12)


def test_format_settings_are_what_the_strategy_expects():
    assert WireFormat().values == "float32" and not WireFormat().lossy_values


def _method(name: str, extra: list[str] = ()):
    from common.config import load_config
    from common.data import DATASETS
    from common.layout import ModelLayout
    from common.models import build_model
    from common.pruning import MethodEnv

    config = load_config(None, [f"pruning.method={name}", *extra])
    source = DATASETS[config.data.dataset]
    layout = ModelLayout.from_model(build_model(config.model.name, source.num_classes, source.input_shape))
    env = MethodEnv(
        layout, 10, 2, True, 0, config.model.name, source.num_classes, source.input_shape, 32, 10.0
    )
    return config.method_class(config.method, env)


def test_one_clients_gates_move_the_average_by_at_most_its_bounded_share():
    from common.pruning import ClientReport, RoundUpdate

    method = _method("tgf")
    start = method.gates.astype(np.float64)
    rng = np.random.default_rng(0)
    honest = [start + rng.normal(scale=0.01, size=start.size) for _ in range(9)]
    hostile = start + 1e30
    reports = [ClientReport(i, 1.0, None, {"gates": list(g)}) for i, g in enumerate([*honest, hostile])]
    method.merge_clients(RoundUpdate(1, np.zeros(0), np.zeros(0, bool), np.zeros(0, F32), 0.1, reports))
    honest_norms = [np.linalg.norm(g - start) for g in honest]
    moved = np.linalg.norm(method.gates.astype(np.float64) - np.mean([*honest, start], axis=0))
    # the hostile change is clipped to 10 x median honest-ish change, and weighs 1/10
    assert moved <= 10.0 * max(honest_norms) / 10 * (1 + 1e-3) + 1e-6
    assert np.isfinite(method.gates).all()


def test_a_dense_mask_cannot_take_over_a_gibbs_union():
    from common.pruning import ClientReport, RoundUpdate

    method = _method("gibbs")
    layout = method.env.layout
    rng = np.random.default_rng(0)
    masks = [layout.mask_from_prunable(rng.random(layout.num_prunable) < 0.05) for _ in range(9)]
    reports = [ClientReport(i, 1.0, m, {}) for i, m in enumerate([*masks, layout.full_mask()])]
    zeros = np.zeros(layout.num_floats, F32)
    merged = method.merge_clients(RoundUpdate(1, zeros, layout.full_mask(), zeros, 0.1, reports))
    assert merged is not None
    assert np.array_equal(merged, np.logical_or.reduce(masks))  # the all-kept mask is left out


def test_an_update_above_the_median_factor_is_an_outlier_and_one_just_below_is_not():
    from server.validation import median_outliers

    # median of [1, 1, 1, 5] is 1: 5 > 4 x 1; [1, 1, 1, 3.9]: 3.9 <= 4
    assert median_outliers([1.0, 1.0, 1.0, 5.0], 4.0) == [False, False, False, True]
    assert median_outliers([1.0, 1.0, 1.0, 3.9], 4.0) == [False] * 4
    # two replies: the median is their mean, which neither exceeds twice
    assert median_outliers([0.0, 1e30], 4.0) == [False, False]
    assert median_outliers([1.0, 1.0, 1.0, 5.0], 0.0) == [False] * 4  # off
