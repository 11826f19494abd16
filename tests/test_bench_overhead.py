"""bench_overhead's summary and ``fedprune bench``'s overhead share: one definition, by hand."""

import math

import pytest

from server.phases import PhaseRow
from server.results import PHASES_FILE
from simulations.bench import read_overhead, share_not_training
from simulations.bench_overhead import check_settable, overrides, summarise

ROUNDS = [  # round, wall, evaluation, training (union of the clients' intervals)
    (1, 9.0, 1.0, 1.0),  # the warm-up (Ray starting): left out by bench_overhead's --warmup 1
    (2, 4.0, 1.0, 1.5),
    (3, 6.0, 2.0, 2.0),
]


def test_share_not_training_by_hand():
    # rounds 2 and 3: wall 10 s, evaluation 3 s, training 3.5 s: 1 - 3.5 / 7 = 0.5
    assert share_not_training(10.0, 3.5, 3.0) == pytest.approx(0.5)
    assert share_not_training(10.0, 10.0, 0.0) == 0.0
    assert math.isnan(share_not_training(2.0, 0.0, 2.0))  # nothing but evaluation


def test_bench_overhead_summary_by_hand():
    timings = [{"round": r, "wall_s": w, "evaluate_s": e, "training_s": t} for r, w, e, t in ROUNDS]
    summary = summarise(timings, warmup=1)
    assert summary["rounds"] == 2
    assert summary["mean_s"] == pytest.approx(5.0) and summary["median_s"] == pytest.approx(5.0)
    assert summary["evaluate_s"] == pytest.approx(1.5)
    assert summary["not_training"] == pytest.approx(0.5)  # a ratio of sums, not a mean of ratios
    assert summary["not_training_with_evaluation"] == pytest.approx(1 - 3.5 / 10)


def test_both_benches_give_the_same_share_for_the_same_rounds(tmp_path):
    rows = [
        PhaseRow(round=r, wall_s=w, clients=2, server_evaluate_s=e, server_decode_s=0.25, training_wall_s=t)
        for r, w, e, t in ROUNDS[1:]
    ]
    with (tmp_path / PHASES_FILE).open("w") as f:
        f.write(",".join(PhaseRow.columns()) + "\n")
        f.writelines(",".join(row.formatted()) + "\n" for row in rows)
    overhead = read_overhead(tmp_path, "prunefl")
    assert overhead is not None
    timings = [{"round": r, "wall_s": w, "evaluate_s": e, "training_s": t} for r, w, e, t in ROUNDS[1:]]
    assert overhead.not_training_nor_evaluating == pytest.approx(summarise(timings, warmup=0)["not_training"])
    assert overhead.not_training_nor_evaluating == pytest.approx(0.5)
    assert overhead.not_training == pytest.approx(1 - 3.5 / 10)


def test_wire_settings_reach_fedprunes_runs_only(tmp_path):
    extra = ["wire.compression-level=0"]
    for configuration in ("dense", "prunefl"):
        assert overrides("conv2", configuration, 8, "", tmp_path, extra)[-1] == extra[0]
    for configuration in ("flower", "floor"):
        assert extra[0] not in overrides("conv2", configuration, 8, "", tmp_path, extra)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["model.name=lenet5"], "model.name=lenet5"),  # changes the work: refused
        (["wire.compression-level"], "wire.compression-level"),  # no value
        (["wire.compression-level=99"], "99"),  # validated as fedprune validates it
        (["evaluate.every=2"], "evaluate.every=2"),  # less evaluation is less work: refused
        (["evaluate.overlap=sometimes"], "sometimes"),
    ],
)
def test_bad_settings_are_named(extra, named):
    problem = check_settable(extra)
    assert problem is not None and named in problem
    assert check_settable(["wire.compression-level=0", "wire.values=bfloat16"]) is None
    assert check_settable(["evaluate.overlap=false"]) is None


def test_the_pruned_floor_keeps_each_prunable_tensors_largest_weights():
    """floor-pruned's mask, by hand: round(0.25 * 6) = 2 of the weight's 6 kept, the bias whole."""
    import numpy as np
    from torch import nn

    from common.layout import ModelLayout
    from simulations.bench_overhead import floor_mask

    layout = ModelLayout.from_model(nn.Linear(3, 2))
    weight = next(t for t in layout.tensors if t.name == "weight")
    assert [t.name for t in layout.prunable] == ["weight"]
    floats = np.zeros(layout.num_floats, dtype=np.float32)
    floats[weight.slice] = [0.1, -0.9, 0.3, 0.5, -0.2, 0.0]
    mask = floor_mask(layout, floats, 0.25)
    assert mask[weight.slice].tolist() == [False, True, False, True, False, False]
    assert mask.sum() == 2 + 2  # and the two biases
