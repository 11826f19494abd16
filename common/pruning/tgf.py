"""Differentiable channel pruning with trainable gates (TGF), federated.

Kim, Park, Jung and Choe, "Plug-in, Trainable Gate for Streamlining Arbitrary
Neural Networks" (arXiv 1904.10921). Every output channel c of a channel group
(:mod:`~common.pruning.channels`) has a gate parameter g_c; its gate value is

    TG(g) = b(g) + s_M(g) * phi(g),     s_M(g) = (M g - floor(M g)) / M

with b the 0/1 step (at ``threshold``), s_M a sawtooth below 1/M and phi the
gradient shape: the forward value is the step to within 1/M, and the backward
pass hands phi(g) * upstream gradient to g (:class:`TrainableGate`; phi = 1
here, the straight-through shape). Every parameter indexed by the channel
(the producing convolutions' filters and biases, BatchNorm's scale and shift)
is multiplied by TG(g_c), so a closed gate removes the channel from the forward
pass. The loss adds a budget term

    lambda * | R(TG) - R_target |,    R = sum_l cost_l * f_in,l * f_out,l / sum_l cost_l

where f_out,l (f_in,l) is the mean gate value over layer l's output (input)
channels and cost_l its MACs per sample (``budget = "flops"``) or its weights
(``"params"``), so the budget is met through the gates directly. Weights and gates
are trained together.

In FL (our adaptation): during the first ``search-fraction`` of the rounds the
server sends the averaged gate parameters with each task, clients train weights
and gates on the full model (a closed channel must still be computed for its gate
to reopen), and reply with their gate parameters, which the server averages by
the FedAvg weights. After the search the server fixes the channel mask of the
binary gates; if it exceeds the budget, the open channels with the lowest gate
parameters are closed until it holds (at least one channel per group stays). The
remaining rounds train that mask on the physically smaller model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..bounds import median_clip_scales
from ..cost_model import CostModel
from ..flops import positions_for
from ..layout import ModelLayout
from ..settings import Scalar
from ..training import TrainingHooks
from .base import (
    ClientReport,
    ConfigValue,
    MethodSettings,
    RoundPlan,
    RoundUpdate,
    settings_dict,
)
from .channels import ChannelStructure
from .structured import StructuredPruning


class TrainableGate(torch.autograd.Function):
    """Forward: step(g) + s_M(g) (the step to within 1/M); backward: phi(g) = 1 times the gradient."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, sawtooth_m: float, threshold: float) -> torch.Tensor:  # type: ignore[override]
        step = (gate >= threshold).to(gate.dtype)
        scaled = sawtooth_m * gate
        sawtooth = (scaled - torch.floor(scaled)) / sawtooth_m
        return step + sawtooth

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return grad, None, None


def gate_values(gates: torch.Tensor, sawtooth_m: float, threshold: float) -> torch.Tensor:
    return TrainableGate.apply(gates, sawtooth_m, threshold)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TgfSettings(MethodSettings):
    PREFIX = "pruning.tgf"

    target_ratio: float = 0.5  # R_target: kept share of the budget measure
    budget: Literal["flops", "params"] = "flops"
    penalty_weight: float = 2.0  # lambda
    search_fraction: float = 0.5  # share of the rounds in which gates are trained
    gate_init: float = 1.0  # initial gate parameter (open)
    threshold: float = 0.5  # where the step opens
    sawtooth_m: float = 100000.0  # M: the sawtooth stays below 1/M

    def validate(self) -> None:
        self.require("target_ratio", 0 < self.target_ratio <= 1, "a share in (0, 1]")
        self.require("budget", self.budget in ("flops", "params"), "one of ('flops', 'params')")
        self.require("penalty_weight", self.penalty_weight >= 0, "a number >= 0")
        self.require("search_fraction", 0 < self.search_fraction <= 1, "a fraction of the rounds in (0, 1]")
        self.require("sawtooth_m", self.sawtooth_m >= 1, "a number >= 1")


def layer_costs(
    structure: ChannelStructure, layout: ModelLayout, positions: Mapping[str, int], budget: str
) -> list[float]:
    """cost_l of every prunable layer: MACs per sample (flops) or weights (params)."""
    sizes = {t.name: t.size for t in layout.prunable}
    return [
        float(sizes[layer.name] * (positions.get(layer.name, 1) if budget == "flops" else 1))
        for layer in structure.layers
    ]


def _kept_fraction(size: int, items: tuple, gates: list[torch.Tensor]) -> torch.Tensor:
    covered = sum(len(s.index) for _, s in items)
    kept = torch.tensor(float(size - covered), dtype=torch.float64)
    for group, s in items:
        kept = kept + gates[group][torch.from_numpy(s.root)].to(torch.float64).sum()
    return kept / size


def budget_ratio(structure: ChannelStructure, costs: list[float], gates: list[torch.Tensor]) -> torch.Tensor:
    """R = sum_l cost_l f_in,l f_out,l / sum_l cost_l, differentiable in the gate values."""
    total = torch.tensor(0.0, dtype=torch.float64)
    for layer, cost in zip(structure.layers, costs, strict=True):
        f_out = _kept_fraction(layer.out_size, layer.outs, gates)
        f_in = _kept_fraction(layer.in_size, layer.ins, gates)
        total = total + cost * f_in * f_out
    return total / sum(costs)


def split_gates(flat: np.ndarray, structure: ChannelStructure) -> list[np.ndarray]:
    bounds = np.cumsum([0] + [g.channels for g in structure.groups])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class GateHooks(TrainingHooks):
    """A client's search round: gated forward, budget penalty, gates trained and reported."""

    def __init__(
        self, structure: ChannelStructure, gates: np.ndarray, settings: TgfSettings, costs: list[float]
    ) -> None:
        self.structure = structure
        self.settings = settings
        self.costs = costs
        self.gates = [
            torch.tensor(g, dtype=torch.float32, requires_grad=True) for g in split_gates(gates, structure)
        ]
        self.values: list[torch.Tensor] = []

    def place(self, device: torch.device) -> None:
        self.gates = [g.detach().to(device).requires_grad_(True) for g in self.gates]

    def extra_parameters(self) -> list[torch.Tensor]:
        return list(self.gates)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        s = self.settings
        self.values = [gate_values(g, s.sawtooth_m, s.threshold) for g in self.gates]
        params = dict(model.named_parameters())
        gated = {}
        for group, value in zip(self.structure.groups, self.values, strict=True):
            for item in group.outputs:
                param = gated.get(item.name, params[item.name])
                index = torch.from_numpy(item.index).to(param.device)
                root = torch.from_numpy(item.root).to(param.device)
                factor = torch.ones(param.shape[0], dtype=param.dtype, device=param.device)
                factor = factor.index_copy(0, index, value[root])
                gated[item.name] = param * factor.view(-1, *([1] * (param.dim() - 1)))
        return torch.func.functional_call(model, gated, (inputs,))

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        s = self.settings
        if s.penalty_weight == 0:
            return None
        ratio = budget_ratio(self.structure, self.costs, self.values)
        return (s.penalty_weight * (ratio - s.target_ratio).abs()).to(torch.float32)

    def report(self) -> dict[str, float | list[float]]:
        return {"gates": torch.cat([g.detach() for g in self.gates]).tolist()}


def project_to_budget(
    structure: ChannelStructure, costs: list[float], gates: list[np.ndarray], target: float, threshold: float
) -> list[np.ndarray]:
    """Open channels (gate >= threshold); then close the lowest gates until R <= target.

    Ties between gate values go to the channel whose closing saves most of the
    budget (the largest dR / dTG at the open configuration). Every group keeps at
    least one channel.
    """
    keep = [g >= threshold for g in gates]
    for k, g in zip(keep, gates, strict=True):
        if not k.any():
            k[int(np.argmax(g))] = True

    def ratio() -> float:
        return float(budget_ratio(structure, costs, [torch.from_numpy(k.astype(np.float64)) for k in keep]))

    opened = [torch.tensor(k.astype(np.float64), requires_grad=True) for k in keep]
    budget_ratio(structure, costs, opened).backward()
    saving = [o.grad.numpy() if o.grad is not None else np.zeros(len(o)) for o in opened]
    candidates = sorted(
        (float(g[c]), -float(saving[i][c]), i, c) for i, g in enumerate(gates) for c in range(len(g))
    )
    for _, _, i, c in candidates:
        if ratio() <= target + 1e-12:
            break
        if keep[i][c] and keep[i].sum() > 1:
            keep[i][c] = False
    return keep


class TrainableGates(StructuredPruning):
    """TGF: channel gates trained with the weights under a FLOPs or parameter budget."""

    name = "tgf"
    Settings = TgfSettings
    settings: TgfSettings

    def __init__(self, settings: MethodSettings, env) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, env)
        self._gates: np.ndarray | None = None

    @property
    def costs(self) -> list[float]:
        env = self.env
        positions = positions_for(env.model, env.num_classes, tuple(env.input_shape))
        return layer_costs(self.structure, env.layout, positions, self.settings.budget)

    @property
    def gates(self) -> np.ndarray:
        if self._gates is None:
            count = sum(g.channels for g in self.structure.groups)
            self._gates = np.full(count, self.settings.gate_init, dtype=np.float32)
        return self._gates

    @property
    def search_rounds(self) -> int:
        return max(1, math.ceil(self.settings.search_fraction * self.env.num_rounds))

    def state_dict(self) -> dict[str, np.ndarray | Scalar]:
        """The averaged gates: the one thing TGF's server keeps between rounds."""
        return {"gates": self.gates.copy()}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Scalar]) -> None:
        gates = np.asarray(state.get("gates"))
        if set(state) != {"gates"} or gates.shape != self.gates.shape or not np.isfinite(gates).all():
            raise ValueError(f"a TGF checkpoint holds finite gates of shape {self.gates.shape}, nothing else")
        self._gates = gates.astype(np.float32)

    def round_plan(self, server_round: int) -> RoundPlan:
        if server_round > self.search_rounds:
            return RoundPlan(client_config={"phase": "fixed", "shrink": True})
        config = {**settings_dict(self.settings), "phase": "search", "gates": self.gates.tolist()}
        return RoundPlan(client_config=config)

    def check_report(self, report: ClientReport) -> None:
        extras = report.extras
        unknown = set(extras) - {"gates"}
        if unknown:
            raise ValueError(f"unexpected method statistics {sorted(unknown)}")
        if "gates" in extras:
            gates = np.asarray(extras["gates"], dtype=np.float64)
            if gates.shape != self.gates.shape or not np.isfinite(gates).all():
                raise ValueError(f"gates must be {len(self.gates)} finite numbers, got shape {gates.shape}")

    def merge_clients(self, update: RoundUpdate) -> np.ndarray | None:
        reported = [(r.weight, np.asarray(r.extras["gates"])) for r in update.reports if "gates" in r.extras]
        if reported:
            reported = self._bounded(reported)
            total = sum(w for w, _ in reported)
            self._gates = sum(w * g for w, g in reported).astype(np.float32) / np.float32(total)
        return None

    def _bounded(self, reported: list[tuple[float, np.ndarray]]) -> list[tuple[float, np.ndarray]]:
        """Each client's gate change g_c - g, its norm clipped to statistic-factor x the round's median.

        A client moves the averaged gates by at most n_c / sum n times that bound
        (:mod:`common.bounds`); an honest client within it is left exactly as it was.
        """
        current = self.gates.astype(np.float64)
        changes = [np.asarray(g, dtype=np.float64) - current for _, g in reported]
        scales = median_clip_scales([float(np.linalg.norm(c)) for c in changes], self.env.statistic_factor)
        return [
            (w, g if s >= 1 else current + s * c)
            for (w, g), c, s in zip(reported, changes, scales, strict=True)
        ]

    def closed_channels_mask(self) -> np.ndarray:
        """The channel mask of the current gates, projected to the budget."""
        structure = self.structure
        keep = project_to_budget(
            structure,
            self.costs,
            split_gates(self.gates.astype(np.float64), structure),
            self.settings.target_ratio,
            self.settings.threshold,
        )
        return structure.channel_mask(keep, self.env.layout.full_mask())

    def reconfigure(
        self,
        server_round: int,
        floats: np.ndarray,
        mask: np.ndarray,
        cost: CostModel,
    ) -> np.ndarray | None:
        if server_round != self.search_rounds:
            return None
        return self.closed_channels_mask() & mask

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        if client_config.get("phase") == "search":
            gates = np.asarray(client_config["gates"], dtype=np.float32)
            return GateHooks(self.structure, gates, self.settings, self.costs)
        return super().training_hooks(client_config, seed)
