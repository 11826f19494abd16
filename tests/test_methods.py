"""Invariants every registered pruning method must keep, through the whole app in process.

For each method (and the structured variants of Gibbs): the saved mask has one
bool array per prunable tensor, the saved model is zero wherever the mask prunes,
the final density is the one the method aims at (within ``DENSITY_TOLERANCE``,
the rounding of per-layer counts), local training leaves every weight outside
the reported mask at zero, and two runs with the same seed are identical.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from client.app import app as client_app
from common.config import AppConfig, load_config
from common.data import DATASETS, client_split
from common.initial_data import initial_data_for
from common.layout import ModelLayout
from common.models import build_model
from common.pruning import METHODS, MethodEnv
from common.pruning.selection import layer_count
from common.pruning.tgf import budget_ratio
from common.training import GradientStatistic, SgdSettings, load_flat, make_loss
from server.app import cost_model_for, run_federation, task_for_run
from tests.inprocess_grid import InProcessGrid

DENSITY_TOLERANCE = 0.005  # per-layer rounding of kept counts on the digits CNN
NUM_NODES = 3
BASE = ["federation.rounds=3", "train.local-steps=2", f"simulation.num-clients={NUM_NODES}"]
CASES: dict[str, list[str]] = {
    "none": [],
    "random": [],
    "magnitude": ["pruning.magnitude.schedule=polynomial", "pruning.magnitude.end-round=2"],
    "snip": [],
    "prunefl": [
        "pruning.prunefl.ip-max-rounds=10",
        "pruning.prunefl.ip-eval-interval=5",
        "pruning.prunefl.ip-reconfig-interval=5",
        "pruning.prunefl.reconfig-interval=2",
    ],
    "droppruning": ["pruning.droppruning.final-fraction=0.67"],
    "gibbs": [],
    "gibbs-filter": ["pruning.gibbs.mode=filter", "pruning.gibbs.target-density=0.5"],
    "tgf": ["pruning.tgf.search-fraction=0.34"],
    "l1-filter": [],
    "rethinking": ["pruning.rethinking.regime=lottery"],  # source: the magnitude run
    # readjust in rounds 1 and 2 (alpha_3 = 0 at T_end = 3)
    "feddst": ["pruning.feddst.interval=1", "pruning.feddst.end-fraction=1.0", "pruning.feddst.alpha=0.3"],
}
SOURCE_OF = {"rethinking": "magnitude"}
pytestmark = pytest.mark.usefixtures("one_thread")


def _method_of(case: str) -> str:
    return "gibbs" if case == "gibbs-filter" else case


def test_every_registered_method_has_a_case():
    assert set(METHODS) <= {_method_of(case) for case in CASES}


def _config(tmp: Path, case: str, runs: dict) -> AppConfig:
    overrides = [
        *BASE,
        f"pruning.method={_method_of(case)}",
        *CASES[case],
        f"output.dir={tmp}",
        "output.name=run",
    ]
    if case in SOURCE_OF:
        overrides.append(f"pruning.rethinking.source={runs[SOURCE_OF[case]][0].results_dir}")
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One run per case, shared by the tests of this module (sources first)."""
    done: dict = {}
    for case in sorted(CASES, key=lambda c: c in SOURCE_OF):
        config = _config(tmp_path_factory.mktemp(case), case, done)
        done[case] = (run_federation(InProcessGrid(client_app, NUM_NODES), config), config)
    return done


def _saved(summary) -> tuple[dict, dict]:
    folder = Path(summary.results_dir)
    with (
        np.load(folder / "mask.npz", allow_pickle=False) as m,
        np.load(folder / "model.npz", allow_pickle=False) as w,
    ):
        return {k: m[k] for k in m.files}, {k: w[k] for k in w.files}


@pytest.mark.parametrize("case", list(CASES))
def test_mask_shape_dtype_and_zeros_after_aggregation(runs, case):
    summary, config = runs[case]
    source = DATASETS[config.data.dataset]
    layout = ModelLayout.from_model(build_model(config.model.name, source.num_classes, source.input_shape))
    masks, model = _saved(summary)
    assert set(masks) == {t.name for t in layout.prunable}
    mask = layout.full_mask()
    for t in layout.prunable:
        assert masks[t.name].dtype == np.bool_ and masks[t.name].shape == t.shape
        assert np.all(model[t.name][~masks[t.name]] == 0)  # the aggregated model is zero where pruned
        mask[t.slice] = masks[t.name].reshape(-1)
    assert summary.final_density == pytest.approx(layout.density(mask))
    with (Path(summary.results_dir) / "rounds.csv").open() as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == list(range(config.federation.rounds + 1))


@pytest.mark.parametrize("case", [c for c in CASES if c != "prunefl"])
def test_target_is_reached(runs, case):
    """The final mask meets the method's target: a weight density, a channel share or a FLOPs budget.

    PruneFL has no target: its model size comes out of its greedy (test_reconfiguration.py).
    """
    summary, config = runs[case]
    method = _server_method(config)
    layout = method.env.layout
    masks, _ = _saved(summary)
    mask = layout.full_mask()
    for t in layout.prunable:
        mask[t.slice] = masks[t.name].reshape(-1)
    target = method.target_density()
    if case == "none":
        assert summary.final_density == 1.0
    elif case in ("l1-filter", "gibbs-filter"):
        structure = method.structure
        density = config.method.target_density
        kept = [
            g.channels - int(r.sum()) for g, r in zip(structure.groups, structure.removed(mask), strict=True)
        ]
        assert kept == [layer_count(density, g.channels) for g in structure.groups]
    elif case == "tgf":
        kept = [torch.from_numpy((~r).astype(np.float64)) for r in method.structure.removed(mask)]
        ratio = float(budget_ratio(method.structure, method.costs, kept))
        assert ratio <= config.method.target_ratio + 1e-9 and summary.final_density < 1.0
    else:
        assert target is not None
        assert abs(summary.final_density - target) <= DENSITY_TOLERANCE


@pytest.mark.parametrize("case", [c for c in CASES if c not in SOURCE_OF])
def test_same_seed_same_run(runs, case, tmp_path):
    first, config = runs[case]
    second = run_federation(InProcessGrid(client_app, NUM_NODES), _config(tmp_path, case, runs))
    drop = {"wall_time_s", "elapsed_s"}

    def rows(summary):
        with (Path(summary.results_dir) / "rounds.csv").open() as f:
            return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]

    assert rows(first) == rows(second)
    for a, b in zip(_saved(first), _saved(second), strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _server_method(config: AppConfig, num_rounds: int | None = None):
    source = DATASETS[config.data.dataset]
    layout = ModelLayout.from_model(build_model(config.model.name, source.num_classes, source.input_shape))
    env = MethodEnv(
        layout,
        num_rounds or config.federation.rounds,
        config.train.local_steps,
        True,
        config.federation.seed,
        config.model.name,
        source.num_classes,
        source.input_shape,
        config.train.batch_size,
    )
    return config.method_class(config.method, env)


@pytest.mark.parametrize("case", list(CASES))
def test_local_training_leaves_pruned_weights_zero(runs, case):
    """After a client's local training, every weight outside the mask it reports is zero."""
    _, config = runs[case]
    method = _server_method(config)
    layout = method.env.layout
    source = DATASETS[config.data.dataset]
    model = build_model(config.model.name, source.num_classes, source.input_shape, seed=0)
    floats, ints = layout.flatten(model.state_dict())
    task = task_for_run(config, layout)
    data = None
    if method.needs_initial_data():
        data = initial_data_for(task, NUM_NODES, 0, floats, ints, 2, 8, cost_model_for(config, layout))
    mask = method.initial_mask(floats, layout.full_mask(), data).mask
    if mask.all():  # a method that starts dense: train under a random half mask instead
        mask = layout.full_mask()
        mask[layout.prunable_positions] = np.random.default_rng(0).random(layout.num_prunable) < 0.5
    split = client_split(config.data.dataset, None, NUM_NODES, 1, "iid", 1.0, 0, 0.1)
    for server_round in (1, config.federation.rounds):
        load_flat(model, layout, np.where(mask, floats, 0), ints)
        plan = method.round_plan(server_round)
        hooks = method.training_hooks(plan.client_config, seed=server_round)
        hooks.train(
            model,
            layout,
            mask,
            split.train.batches(16, server_round),
            2,
            SgdSettings(0.05),
            make_loss("cross-entropy", source.num_classes),
            GradientStatistic.NONE,
        )
        reported = hooks.client_mask(model, layout, mask)
        after, _ = layout.flatten(model.state_dict())
        outside = ~(mask if reported is None else reported)
        assert np.all(after[outside] == 0), f"round {server_round}: weights outside the mask moved"
        assert np.all(np.isfinite(after))


@pytest.mark.parametrize("case", list(CASES))
def test_a_budget_sub_mask_lies_in_the_mask_with_the_counts_the_server_expects(runs, case):
    """Per-client round budgets (common/budget.py): the sub-mask a client trains is inside the
    global mask, keeps what the server will check (budget_counts), and keeps all at 1."""
    _, config = runs[case]
    method = _server_method(config)
    layout = method.env.layout
    floats = np.random.default_rng(0).standard_normal(layout.num_floats).astype(np.float32)
    mask = layout.full_mask()
    mask[layout.prunable_positions] = np.random.default_rng(1).random(layout.num_prunable) < 0.7
    if hasattr(method, "structure"):  # a structured method's masks are channel masks
        mask = method.budget_submask(floats, layout.full_mask(), 0.7)
    for fraction in (0.0, 0.4, 0.99):
        sub = method.budget_submask(floats, mask, fraction)
        assert not np.any(sub & ~mask)
        assert np.array_equal(layout.kept_per_layer(sub), method.budget_counts(mask, fraction))
        assert np.all(layout.kept_per_layer(sub)[layout.kept_per_layer(mask) > 0] >= 1)
    assert np.array_equal(method.budget_submask(floats, mask, 1.0), mask)
