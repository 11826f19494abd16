"""Channel groups, physically smaller models, TGF's gates and the FLOPs count, on hand-checkable models."""

import numpy as np
import pytest
import torch
from torch import nn

from common.flops import forward_macs, output_positions, step_flops
from common.layout import ModelLayout
from common.models.digits import DigitsCNN
from common.pruning.channels import trace_channels
from common.pruning.shrink import ShrinkingHooks, removable_channels, shrink_model
from common.pruning.tgf import (
    GateHooks,
    TgfSettings,
    budget_ratio,
    gate_values,
    layer_costs,
    project_to_budget,
    split_gates,
)
from common.training import SgdSettings, TrainingHooks, load_flat, train_locally

DIGITS_MACS = {
    "conv1.weight": 16 * 9 * 64,
    "conv2.weight": 32 * 16 * 9 * 64,
    "fc1.weight": 512 * 64,
    "fc2.weight": 640,
}

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class TinyResNet(nn.Module):
    """stem -> two residual blocks -> pooled linear head: the stem's channels are tied to both blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.block1 = Block(6)
        self.block2 = Block(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(self.block2(self.block1(x)).mean((2, 3)))


def _setup(model: nn.Module, seed: int = 0):
    torch.manual_seed(seed)
    layout = ModelLayout.from_model(model)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        model(torch.randn(16, 1, 8, 8))
    structure = trace_channels(model, torch.zeros(1, 1, 8, 8), layout)
    return layout, structure


def _batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def test_digits_cnn_channel_groups():
    layout, structure = _setup(DigitsCNN())
    groups = {g.root: g for g in structure.groups}
    assert {root: g.channels for root, g in groups.items()} == {"conv1": 16, "conv2": 32, "fc1": 64}
    assert structure.outputs == frozenset({"fc2.weight"})  # the classes are never a group
    # conv2's channel c is its filter (16*9 weights) and fc1's 16 columns reading it (64 each)
    assert len(groups["conv2"].positions) == 32 * (16 * 9 + 16 * 64)
    reads = [s for s in groups["conv2"].weights if s.name == "fc1.weight"]
    assert reads[0].dim == 1 and np.array_equal(reads[0].root, np.repeat(np.arange(32), 16))


def test_residual_channels_are_tied_across_blocks():
    layout, structure = _setup(TinyResNet())
    tied = [g for g in structure.groups if any(s.name == "stem.weight" for s in g.weights)]
    assert len(tied) == 1
    members = {(s.name, s.dim) for s in tied[0].weights}
    assert {("stem.weight", 0), ("block1.c2.weight", 0), ("block2.c2.weight", 0)} <= members
    assert {("block1.c1.weight", 1), ("block2.c1.weight", 1), ("fc.weight", 1)} <= members
    assert {"bn.weight", "block1.b2.bias", "block2.b2.weight"} <= {o.name for o in tied[0].outputs}


@pytest.mark.parametrize("make", [DigitsCNN, TinyResNet])
def test_shrunk_model_computes_the_masked_full_model(make):
    model = make()
    layout, structure = _setup(model)
    rng = np.random.default_rng(1)
    keep = [rng.random(g.channels) < 0.5 for g in structure.groups]
    mask = structure.channel_mask(keep, layout.full_mask())
    assert structure.is_channel_mask(mask, layout)
    floats, ints = layout.flatten(model.state_dict())
    floats = np.where(mask, floats, np.float32(0))
    load_flat(model, layout, floats, ints)
    x = torch.randn(4, 1, 8, 8)
    small = shrink_model(model, layout, floats, ints, removable_channels(structure, mask), x[:1])
    model.eval()
    small.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small.model(x), model(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert np.array_equal(small.layout.flatten(small.model.state_dict())[0], floats[small.positions])


@pytest.mark.parametrize("make", [DigitsCNN, TinyResNet])
def test_training_the_smaller_model_equals_training_the_masked_full_model(make):
    model = make()
    layout, structure = _setup(model)
    keep = [np.arange(g.channels) % 3 != 0 for g in structure.groups]
    mask = structure.channel_mask(keep, layout.full_mask())
    floats, ints = layout.flatten(model.state_dict())
    start = np.where(mask, floats, np.float32(0))
    results = []
    for hooks in (TrainingHooks(), ShrinkingHooks(structure)):
        load_flat(model, layout, start, ints)
        sgd = SgdSettings(0.1)
        hooks.train(model, layout, mask, _batches(), 3, sgd, nn.functional.cross_entropy)
        results.append(layout.flatten(model.state_dict())[0])
    # every parameter matches; BatchNorm running statistics of removed channels stay as received
    # in the smaller model, while the full model drifts them towards the zero channel's
    parameters = np.zeros(layout.num_floats, dtype=bool)
    parameters[layout.parameter_positions] = True
    kept = mask & parameters
    np.testing.assert_allclose(results[1][kept], results[0][kept], rtol=1e-4, atol=1e-5)
    assert np.all(results[1][~mask] == 0)


def test_an_unstructured_mask_removes_no_channel():
    model = DigitsCNN()
    layout, structure = _setup(model)
    mask = layout.full_mask()
    mask[layout.prunable_positions] = np.random.default_rng(0).random(layout.num_prunable) < 0.5
    assert removable_channels(structure, mask) == [] and not structure.is_channel_mask(mask, layout)


def test_macs_are_counted_per_kept_weight_and_match_the_smaller_model():
    model = DigitsCNN()
    layout, structure = _setup(model)
    positions = output_positions(model, (1, 8, 8))
    assert {
        k: positions[k] * next(t.size for t in layout.tensors if t.name == k) for k in positions
    } == DIGITS_MACS
    full = forward_macs(layout, layout.full_mask(), positions)
    assert full == sum(DIGITS_MACS.values()) == 337_536
    assert step_flops(full, 32) == 2 * 3 * 337_536 * 32
    keep = [np.arange(g.channels) < g.channels // 2 for g in structure.groups]
    mask = structure.channel_mask(keep, layout.full_mask())
    floats, ints = layout.flatten(model.state_dict())
    small = shrink_model(
        model, layout, floats, ints, removable_channels(structure, mask), torch.zeros(1, 1, 8, 8)
    )
    small_positions = output_positions(small.model, (1, 8, 8))
    assert forward_macs(layout, mask, positions) == forward_macs(
        small.layout, small.layout.full_mask(), small_positions
    )


def test_gate_forward_is_the_step_and_backward_the_surrogate():
    m = 1e5
    gates = torch.tensor([0.2, 0.4999, 0.5, 0.7, 1.3], requires_grad=True)
    values = gate_values(gates, m, 0.5)
    np.testing.assert_allclose(values.detach().numpy(), [0, 0, 1, 1, 1], atol=1 / m)
    upstream = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0])
    (values * upstream).sum().backward()
    assert torch.equal(gates.grad, upstream)  # phi(g) = 1: the gradient passes unchanged


def test_budget_ratio_on_the_digits_cnn():
    model = DigitsCNN()
    layout, structure = _setup(model)
    costs = layer_costs(structure, layout, output_positions(model, (1, 8, 8)), "flops")
    assert costs == [float(DIGITS_MACS[t.name]) for t in layout.prunable]
    open_all = [torch.ones(g.channels, dtype=torch.float64) for g in structure.groups]
    assert float(budget_ratio(structure, costs, open_all)) == pytest.approx(1.0)
    half_conv1 = [torch.ones(g.channels, dtype=torch.float64) for g in structure.groups]
    half_conv1[[g.root for g in structure.groups].index("conv1")][:8] = 0
    expected = (9216 * 0.5 + 294912 * 0.5 + 32768 + 640) / 337536  # conv1 out and conv2 in halved
    assert float(budget_ratio(structure, costs, half_conv1)) == pytest.approx(expected)
    gates = split_gates(np.linspace(0.9, 1.0, sum(g.channels for g in structure.groups)), structure)
    keep = project_to_budget(structure, costs, gates, 0.3, 0.5)
    ratio = budget_ratio(structure, costs, [torch.from_numpy(k.astype(np.float64)) for k in keep])
    assert float(ratio) <= 0.3 and all(k.any() for k in keep)


def test_closed_gates_remove_channels_and_the_penalty_closes_gates():
    model = DigitsCNN()
    layout, structure = _setup(model)
    costs = layer_costs(structure, layout, output_positions(model, (1, 8, 8)), "flops")
    gates = np.ones(sum(g.channels for g in structure.groups), dtype=np.float32)
    conv1 = [g.root for g in structure.groups].index("conv1")
    offset = sum(g.channels for g in structure.groups[:conv1])
    gates[offset : offset + 4] = 0.1  # close conv1's channels 0-3
    hooks = GateHooks(structure, gates, TgfSettings(target_ratio=0.2, penalty_weight=1.0), costs)
    x = torch.randn(4, 1, 8, 8)
    gated = hooks.forward(model, x)
    with torch.no_grad():
        model.conv1.weight[:4] = 0
        model.conv1.bias[:4] = 0
        plain = model(x)
    torch.testing.assert_close(gated, plain, rtol=1e-4, atol=1e-4)
    before = [g.detach().clone() for g in hooks.gates]
    train_locally(
        model,
        layout,
        layout.full_mask(),
        _batches(),
        1,
        SgdSettings(0.1),
        lambda o, y: 0 * o.sum(),
        hooks=hooks,
    )
    # with the task loss switched off, only the budget term moves the gates: all of them down
    assert all(bool((after < b).all()) for after, b in zip(hooks.gates, before, strict=True))
    assert len(hooks.report()["gates"]) == len(gates)
