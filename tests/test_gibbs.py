"""Gibbs pruning: the sampler's distribution, its limits, the annealing clock and the client hooks."""

import numpy as np
import pytest
import torch

from common.layout import ModelLayout
from common.models.digits import DigitsCNN
from common.pruning.channels import trace_channels
from common.pruning.gibbs import GibbsHooks, GibbsSettings, beta_at, final_mask
from common.pruning.gibbs_sampling import (
    _states,
    deterministic_mask,
    sample_mask,
    sample_spins,
    unit_size,
)
from common.pruning.selection import keep_top, magnitude_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_very_large_beta_is_magnitude_pruning(tiny):
    model, layout = tiny
    floats, _ = layout.flatten(model.state_dict())
    expected = keep_top(magnitude_scores(floats), layout, 0.25, "layer")
    for t in layout.prunable:
        weight = torch.from_numpy(floats[t.slice].reshape(t.shape).copy())
        sampled = sample_mask(weight, 1, 0.25, 1e12, 0.0, True, _generator())
        assert np.array_equal(sampled.numpy().astype(bool).reshape(-1), expected[t.slice])
        assert np.array_equal(deterministic_mask(weight, 1, 0.25).numpy().reshape(-1), expected[t.slice])


def test_unstructured_keep_probability_is_the_sigmoid_of_the_field():
    # two weights per unit-less layer: u = w^2 / mean(w^2) = [0.4, 1.6]; keeping half puts Q halfway
    weight = torch.tensor([1.0, 2.0], dtype=torch.float64).repeat(20000)
    density, beta = 0.5, 1.5
    masks = sample_mask(weight, 1, density, beta, 0.0, True, _generator()).reshape(-1, 2)
    q = (0.4 + 1.6) / 2
    expected = torch.sigmoid(beta * (torch.tensor([0.4, 1.6]) - q))
    np.testing.assert_allclose(masks.mean(0).numpy(), expected.numpy(), atol=0.01)


@pytest.mark.parametrize("exact_max", [0, 9])  # 0: the auxiliary-variable chain, 9: enumeration
def test_coupled_units_sample_the_gibbs_distribution(exact_max):
    """Marginals of exp(a M^2 + h . x) over 4 spins, exact by enumeration, against the sampler."""
    h = torch.tensor([0.6, -0.2, 0.1, -0.5], dtype=torch.float64)
    a = 0.15
    states = _states(4)
    p = torch.softmax(a * states.sum(1) ** 2 + states @ h, dim=0)
    expected_keep = (p.unsqueeze(1) * (states > 0)).sum(0)
    expected_aligned = p[(states.sum(1).abs() == 4)].sum()
    units = 40000
    fields = h.repeat(units, 1)
    start = torch.ones(units, 4, dtype=torch.float64)
    spins = sample_spins(fields, a, _generator(3), start, steps=30, exact_max=exact_max)
    np.testing.assert_allclose((spins > 0).double().mean(0).numpy(), expected_keep.numpy(), atol=0.012)
    aligned = (spins.sum(1).abs() == 4).double().mean()
    assert float(aligned) == pytest.approx(float(expected_aligned), abs=0.012)


def test_unit_sizes_and_structured_deterministic_masks():
    conv = (4, 3, 3, 3)
    assert unit_size(conv, "unstructured", False) == 1
    assert unit_size(conv, "kernel", False) == 9 and unit_size((5, 7), "kernel", False) == 1
    assert unit_size(conv, "filter", False) == 27 and unit_size(conv, "filter", True) == 1
    weight = torch.zeros(conv)
    for o in range(4):
        weight[o] = o + 1.0  # filter o has magnitude o + 1
    kept = deterministic_mask(weight, 27, 0.5)
    assert kept[2:].all() and not kept[:2].any()  # the two largest filters stay
    kernels = torch.zeros(conv)
    kernels[1, 2] = 5.0
    kernels[3, 0] = 4.0
    mask = deterministic_mask(kernels, 9, 2 / 12)  # 2 of 12 kernels
    assert mask[1, 2].all() and mask[3, 0].all() and int(mask.sum()) == 18


def test_beta_rises_log_uniformly_then_stays():
    s = GibbsSettings(beta_start=1.0, beta_end=1e4, anneal_fraction=0.5)
    assert beta_at(1, s, 10) == pytest.approx(1.0)
    assert beta_at(3, s, 10) == pytest.approx(100.0)  # halfway of rounds 1..5 in log space
    assert beta_at(5, s, 10) == pytest.approx(1e4) and beta_at(9, s, 10) == pytest.approx(1e4)


def test_client_hooks_sample_reproducibly_and_report_the_deterministic_mask(tiny):
    model, layout = tiny
    settings = GibbsSettings(target_density=0.5)
    x = torch.randn(8, 4)
    outputs = [GibbsHooks(layout, settings, 1.0, seed, frozenset()).forward(model, x) for seed in (1, 1, 2)]
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])
    hooks = GibbsHooks(layout, settings, 1.0, 0, frozenset())
    before = layout.flatten(model.state_dict())[0]
    own = hooks.client_mask(model, layout, layout.full_mask())
    after = layout.flatten(model.state_dict())[0]
    assert np.array_equal(own, keep_top(magnitude_scores(before), layout, 0.5, "layer"))
    assert np.all(after[~own] == 0) and np.array_equal(after[own], before[own])


def test_filter_wise_final_mask_removes_whole_channels():
    torch.manual_seed(0)
    model = DigitsCNN()
    layout = ModelLayout.from_model(model)
    structure = trace_channels(model, torch.zeros(1, 1, 8, 8), layout)
    floats, _ = layout.flatten(model.state_dict())
    mask = final_mask(floats, layout, GibbsSettings(mode="filter", target_density=0.5), structure)
    assert structure.is_channel_mask(mask, layout)
    assert [int((~r).sum()) for r in structure.removed(mask)] == [32, 16, 8]  # fc1, conv2, conv1
    fc2 = next(t for t in layout.prunable if t.name == "fc2.weight")
    # the output layer keeps its classes: only the columns of removed fc1 channels go
    assert mask[fc2.slice].sum() == 0.5 * fc2.size
