"""Per-client round budgets: the keep fraction, the magnitude sub-mask and its aggregation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from client.app import app as client_app
from common.budget import (
    budget_entries,
    fit_fraction,
    fraction_for,
    keep_fraction,
    kept_counts,
    magnitude_submask,
    submask_time,
)
from common.config import load_config
from common.cost_model import CostModel
from common.layout import ModelLayout
from common.models import build_model
from common.pruning.channels import structure_for
from common.pruning.structured import leading_channels
from server.aggregation import per_position_fedavg
from server.app import run_federation
from server.strategy import PruningFedAvg
from simulations.report import load_run, straggler_section
from tests.inprocess_grid import InProcessGrid

PI, SANDBOX = "raspberry-pi-4-class", "x86-2core-sandbox"


def test_the_keep_fraction_fits_t_of_m_to_the_budget():
    """E = 2, t0 0.5 s, comp (1e-3, 0) s, 8 B per value over 1000 B/s, |M| = (100, 50):
    T0 = 1.0 s, c = (0.008 + 0.002, 0.008), T(M) = 1.0 + 1.0 + 0.4 = 2.4 s. The download of
    M is fixed, 0.004 x 150 = 0.6 s; the rest scales with S: 0.006 x 100 + 0.004 x 50 = 0.8 s.
    B = 2.0 s: s = (2.0 - 1.0 - 0.6) / 0.8 = 0.5; B >= 2.4: 1; B <= 1.6 (T0 + download): 0;
    no budget: 1."""
    cost = CostModel(2, 0.5, np.array([1e-3, 0.0]), bandwidth=1000.0, bytes_per_value=8.0)
    kept = np.array([100, 50])
    assert cost.round_time(kept) == pytest.approx(2.4)
    assert keep_fraction(cost, kept, 2.0) == pytest.approx(0.5)
    assert keep_fraction(cost, kept, 1.8) == pytest.approx(0.25)
    assert keep_fraction(cost, kept, 2.4) == 1.0 and keep_fraction(cost, kept, 3.0) == 1.0
    assert keep_fraction(cost, kept, 1.6) == pytest.approx(0.0, abs=1e-12)
    assert keep_fraction(cost, kept, 0.9) == 0.0
    assert keep_fraction(cost, kept, 0.0) == 1.0
    assert kept_counts(kept, 0.5).tolist() == [50, 25]
    assert kept_counts(np.array([3, 0, 7]), 0.0).tolist() == [1, 0, 1]  # no layer is cut off
    assert kept_counts(np.array([3, 7]), 0.34).tolist() == [2, 3]  # ceil


def test_the_sub_mask_keeps_the_largest_kept_weights_of_every_layer():
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    rng = np.random.default_rng(0)
    floats = rng.normal(size=layout.num_floats).astype(np.float32)
    mask = layout.full_mask()
    mask[layout.prunable_positions[::3]] = False
    sub = magnitude_submask(layout, floats, mask, 0.4)
    assert not np.any(sub & ~mask)
    assert layout.kept_per_layer(sub).tolist() == kept_counts(layout.kept_per_layer(mask), 0.4).tolist()
    outside = np.ones_like(mask)
    outside[layout.prunable_positions] = False
    assert np.array_equal(sub[outside], mask[outside])
    for tensor in layout.prunable:
        magnitude = np.abs(floats[tensor.slice])
        kept, dropped = magnitude[sub[tensor.slice]], magnitude[mask[tensor.slice] & ~sub[tensor.slice]]
        assert kept.min() >= dropped.max()


def test_a_position_trained_by_k_of_n_clients_is_the_weighted_mean_of_those_k():
    """Three clients of weights 1, 2, 3: A trains all four positions, B the first two
    (a sub-mask), C the first only; position 3 was pruned by none but trained by A only.

    w_0 = (1 * 1 + 2 * 4 + 3 * 7) / 6 = 5,  w_1 = (1 * 2 + 2 * 5) / 3 = 4,  w_2 = 3,  w_3 = 9.
    """
    floats = np.full(4, -1.0, dtype=np.float32)
    masks = [np.array([1, 1, 1, 1], bool), np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)]
    values = [np.array([1, 2, 3, 9], np.float32), np.array([4, 5], np.float32), np.array([7], np.float32)]
    new = per_position_fedavg(floats, masks, values, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(new, [5.0, 4.0, 3.0, 9.0], rtol=1e-6)


def test_the_budget_entries_round_trip_and_are_checked():
    entries = budget_entries({4: 0.25, 1: 0.5})
    assert entries == {"fleet.budget-partitions": [1, 4], "fleet.budget-keep": [0.5, 0.25]}
    assert fraction_for(entries, 4) == 0.25 and fraction_for(entries, 2) is None
    assert fraction_for({}, 0) is None and budget_entries({}) == {}  # no budget: the task as ever
    with pytest.raises(ValueError, match="one length"):
        fraction_for({"fleet.budget-partitions": [1], "fleet.budget-keep": []}, 1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        fraction_for({"fleet.budget-partitions": [1], "fleet.budget-keep": [1.5]}, 1)


def test_the_width_ratio_is_the_largest_that_fits_the_budget():
    """The cost of the first test; S(r) = (100 r^2, 50 r) kept weights (a layer between two
    narrowed groups, one after one). T(S(r)) = 1.6 + 0.006 x 100 r^2 + 0.004 x 50 r; at
    B = 1.8: 0.6 r^2 + 0.2 r - 0.2 = 0, r = (-0.2 + sqrt(0.52)) / 1.2 = 0.43426..."""
    cost = CostModel(2, 0.5, np.array([1e-3, 0.0]), bandwidth=1000.0, bytes_per_value=8.0)
    kept = np.array([100, 50])

    def sub(r: float) -> np.ndarray:
        return np.array([100 * r * r, 50 * r])

    assert fit_fraction(cost, kept, sub, 1.8) == pytest.approx((-0.2 + np.sqrt(0.52)) / 1.2, abs=1e-9)
    assert submask_time(cost, kept, kept) == pytest.approx(cost.round_time(kept))
    assert fit_fraction(cost, kept, sub, 2.4) == 1.0 and fit_fraction(cost, kept, sub, 0.0) == 1.0
    assert fit_fraction(cost, kept, sub, 1.5) == 0.0  # not even the download of M fits


def test_leading_channels_keep_the_first_kept_channels_of_every_group_with_their_inputs():
    """digits-CNN: conv1 (16 channels) -> conv2 (32) -> fc1 (64) -> fc2 (output, never narrowed)."""
    structure = structure_for("digits-cnn", 10, (1, 8, 8))
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    sizes = {g.root: g.channels for g in structure.groups}
    assert sizes == {"conv1": 16, "conv2": 32, "fc1": 64}
    # a mask that already removed channels 0 and 1 of conv1
    keep = [np.arange(g.channels) >= (2 if g.root == "conv1" else 0) for g in structure.groups]
    mask = structure.channel_mask(keep, layout.full_mask())
    sub = leading_channels(structure, mask, 0.5)
    assert not np.any(sub & ~mask) and structure.is_channel_mask(sub, layout)
    left = {
        g.root: np.flatnonzero(~gone).tolist()
        for g, gone in zip(structure.groups, structure.removed(sub), strict=True)
    }
    # conv1 keeps 14 channels (2..15): the first ceil(0.5 x 14) = 7 of them, channels 2..8
    assert left == {"conv1": list(range(2, 9)), "conv2": list(range(16)), "fc1": list(range(32))}
    # conv2 keeps 7 of 16 input channels x 16 of 32 filters: 7/16 x 1/2 of its weights
    kept = dict(zip([t.name for t in layout.prunable], layout.kept_per_layer(sub).tolist(), strict=True))
    conv2 = next(t for t in layout.prunable if t.name == "conv2.weight")
    assert kept["conv2.weight"] == conv2.size * 7 * 16 // (16 * 32)
    assert np.array_equal(leading_channels(structure, mask, 1.0), mask)
    tiny = structure.removed(leading_channels(structure, mask, 0.0))
    assert [int((~gone).sum()) for gone in tiny] == [1, 1, 1]  # a group is never cut off


def budgeted_run(tmp_path: Path, method: str, budget: float, more: list[str] | None = None) -> list[dict]:
    """Two in-process rounds of ``method``, partitions 0 and 1 on the Pi, 2 on the sandbox; rounds.csv."""
    config = load_config(
        None,
        [
            f"output.dir={tmp_path}",
            "output.name=run",
            "simulation.num-clients=3",
            "federation.rounds=2",
            f"pruning.method={method}",
            f"simulation.profiles={PI},{PI},{SANDBOX}",
            f"fleet.round-budget={budget}",
            *(more or []),
        ],
    )
    run_federation(InProcessGrid(client_app, 3), config)
    with (tmp_path / "run" / "rounds.csv").open() as f:
        return list(csv.DictReader(f))


def test_pi_clients_train_sub_masks_within_the_budget_and_the_round_aggregates_them(tmp_path, monkeypatch):
    """Dense FedAvg, partitions 0 and 1 on the Pi profile, 2 on the sandbox, a 1.9 s budget:
    a dense digits-CNN round models to about 2.1 s on the Pi, so its clients train sub-masks
    (and are no longer the straggler by compute); no reply is rejected."""
    seen: list[list[bool]] = []
    original = PruningFedAvg._aggregate

    def spy(self, server_round, accepted):
        seen.append([r.mask is not None and r.method_values is not None for r in accepted])
        for r in accepted:
            if r.mask is not None:
                assert r.mask.sum() < self.model.mask.sum() and len(r.values) == r.mask.sum()
                assert len(r.report().values) == self.model.mask.sum() and r.report().mask is None
        return original(self, server_round, accepted)

    monkeypatch.setattr(PruningFedAvg, "_aggregate", spy)
    rows = budgeted_run(tmp_path, "none", 1.9)
    assert seen == [[True, True, False], [True, True, False]]
    assert [int(r["rejected"]) for r in rows[1:]] == [0, 0]
    # within 1% of the budget (the download of M is counted whole; ceil per layer, mask bits)
    assert all(float(r["modelled_round_time_s"]) <= 1.9 * 1.01 for r in rows[1:])
    assert all(r["straggler_profile"] in (PI, SANDBOX) for r in rows[1:])
    section = straggler_section([load_run(Path(tmp_path) / "run")])
    assert section is not None and "| 1.9 s |" in section and "Stragglers (modelled)" in section


def test_a_structured_method_budgets_clients_to_leading_channels(tmp_path, monkeypatch):
    """L1-norm filter pruning (a channel mask of density 0.26 on the digits CNN), partitions
    0 and 1 on the Pi profile, 2 on the sandbox, a 1.7 s budget (the Pi's round models to
    1.707 s unbudgeted): each Pi client trains the leading channels of the global mask, a
    channel mask itself, and the round fits the budget; no reply is rejected."""
    seen: list[list[bool]] = []
    original = PruningFedAvg._aggregate

    def spy(self, server_round, accepted):
        structure, mask = self.method.structure, self.model.mask
        seen.append([r.mask is not None for r in accepted])
        for r in accepted:
            if r.mask is not None:
                assert structure.is_channel_mask(r.mask, self.model.layout)
                counts = next(iter(self.budgeted.values()))  # both Pi clients: one profile, one fit
                assert np.array_equal(self.model.layout.kept_per_layer(r.mask), counts)
                assert r.mask.sum() < mask.sum() and not np.any(r.mask & ~mask)
        return original(self, server_round, accepted)

    monkeypatch.setattr(PruningFedAvg, "_aggregate", spy)
    rows = budgeted_run(tmp_path, "l1-filter", 1.7, [f"cost.profile={PI}"])
    assert seen == [[True, True, False], [True, True, False]]
    assert [int(r["rejected"]) for r in rows[1:]] == [0, 0]
    assert all(float(r["modelled_round_time_s"]) <= 1.7 for r in rows[1:])
