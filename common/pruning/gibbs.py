"""Gibbs pruning in federated learning: masks sampled on the clients, beta annealed over rounds.

Labach and Valaee, "Structured Pruning of Neural Networks with Gibbs
Distributions", arXiv 2006.04981. During training every forward pass multiplies
each prunable weight by a mask drawn from p(x) proportional to exp(-beta H(x))
(:mod:`~common.pruning.gibbs_sampling`): unstructured, kernel-wise (spins of a
k x k kernel coupled, c = ``kernel-coupling``) or filter-wise (spins of a whole
filter coupled, c = ``filter-coupling``). Small beta acts like dropout; large
beta is magnitude pruning to the target. At test time the mask is deterministic:
the units (weights, kernels, filters) of largest sum of w^2, at the target.

In FL (our adaptation; the paper trains centrally):

* the annealing clock is the round: beta(t) rises log-uniformly from
  ``beta-start`` to ``beta-end`` over the first ``anneal-fraction`` of the rounds
  (the paper: 1 to 1e4 over 64% of training for unstructured and kernel-wise,
  10^-2.5 to 1 for filter-wise; set those in the filter preset), and the server
  sends beta with each round's task;
* in a sampling round, clients train with a fresh mask at every forward pass,
  weights outside the global mask included (they arrive as zeros and may grow
  back), then report their deterministic mask and the values at it; the server
  averages each position over the clients that kept it, and the new global mask
  is the union of the clients' masks (``merge = "union"``) or the positions kept
  by at least half of the aggregation weight (``"majority"``);
* after the last sampling round the server sets the deterministic mask of the
  aggregated model at the target; with ``fix-after-anneal`` that happens when the
  annealing ends and the remaining rounds train that fixed mask (filter-wise: the
  channel mask, on a physically smaller model), otherwise at the last round.

Filter-wise, the final mask removes whole channels through their channel groups
(:mod:`~common.pruning.channels`), scoring a channel by the sum of w^2 of all the
filters that produce it; the output layer is left dense (its rows are the classes),
so the final mask is a pure channel mask. Kernel-wise applies to convolutions;
linear layers are pruned per weight.
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
from ..layout import ModelLayout
from ..training import TrainingHooks
from .base import (
    ConfigValue,
    DensityPruning,
    DensitySettings,
    RoundPlan,
    RoundUpdate,
    settings_dict,
)
from .channels import ChannelStructure, structure_for
from .gibbs_sampling import MODES, Mode, deterministic_mask, sample_mask, unit_size
from .selection import layer_count
from .shrink import ShrinkingHooks


@dataclass(frozen=True)
class GibbsSettings(DensitySettings):
    PREFIX = "pruning.gibbs"

    mode: Mode = "unstructured"
    beta_start: float = 1.0  # the paper: 1 (unstructured, kernel), 10^-2.5 (filter)
    beta_end: float = 10000.0  # the paper: 1e4 (unstructured, kernel), 1 (filter)
    anneal_fraction: float = 0.64  # share of the rounds over which beta rises (0.64)
    kernel_coupling: float = 0.01  # c of kernel-wise pruning (0.01)
    filter_coupling: float = 1.0  # c of filter-wise pruning (1.0)
    normalize: bool = True  # divide w^2 by the layer's mean w^2 (false: the paper's raw w^2)
    mcmc_steps: int = 50  # sweeps of the chain for units too large to enumerate (50)
    exact_max: int = 9  # enumerate the 2^n states of units of at most this many weights
    merge: Literal["union", "majority"] = "union"
    fix_after_anneal: bool = True

    def validate(self) -> None:
        super().validate()
        self.require("mode", self.mode in MODES, f"one of {MODES}")
        self.require("beta_start", self.beta_start > 0, "a number > 0")
        self.require("beta_end", self.beta_end >= self.beta_start, "a number >= beta-start")
        self.require("anneal_fraction", 0 < self.anneal_fraction <= 1, "a fraction of the rounds in (0, 1]")
        self.require("kernel_coupling", self.kernel_coupling >= 0, "a number >= 0")
        self.require("filter_coupling", self.filter_coupling >= 0, "a number >= 0")
        self.require("mcmc_steps", self.mcmc_steps >= 1, "an integer >= 1")
        self.require("exact_max", 0 <= self.exact_max <= 12, "an integer in [0, 12] (2^12 states per unit)")

    @property
    def coupling(self) -> float:
        return {"unstructured": 0.0, "kernel": self.kernel_coupling, "filter": self.filter_coupling}[
            self.mode
        ]


def beta_at(server_round: int, settings: GibbsSettings, num_rounds: int) -> float:
    """beta(t): log-uniform from beta-start (round 1) to beta-end (last annealing round), then flat."""
    anneal = annealing_rounds(settings, num_rounds)
    if anneal <= 1:
        return settings.beta_end
    progress = min(max(server_round - 1, 0) / (anneal - 1), 1.0)
    return settings.beta_start * (settings.beta_end / settings.beta_start) ** progress


def annealing_rounds(settings: GibbsSettings, num_rounds: int) -> int:
    return max(1, math.ceil(settings.anneal_fraction * num_rounds))


def output_layers(structure: ChannelStructure | None) -> frozenset[str]:
    return frozenset() if structure is None else structure.outputs


class GibbsHooks(TrainingHooks):
    """A client's sampling round: a fresh mask per forward pass, the deterministic mask at the end."""

    enforce_mask = False

    def __init__(
        self,
        layout: ModelLayout,
        settings: GibbsSettings,
        beta: float,
        seed: int,
        outputs: frozenset[str],
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.beta = beta
        self.generator = torch.Generator().manual_seed(seed)
        self.units = {
            t.name: unit_size(t.shape, settings.mode, t.name in outputs)
            for t in layout.prunable
            if not (settings.mode == "filter" and t.name in outputs)  # filter-wise: classes stay
        }

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        s = self.settings
        params = dict(model.named_parameters())
        masked = {}
        for name, n in self.units.items():
            weight = params[name]
            mask = sample_mask(
                weight,
                n,
                s.target_density,
                self.beta,
                s.coupling,
                s.normalize,
                self.generator,
                s.mcmc_steps,
                s.exact_max,
            )
            masked[name] = weight * mask
        return torch.func.functional_call(model, masked, (inputs,))

    def client_mask(self, model: nn.Module, layout: ModelLayout, mask: np.ndarray) -> np.ndarray:
        params = dict(model.named_parameters())
        own = layout.full_mask()
        with torch.no_grad():
            for name, n in self.units.items():
                keep = deterministic_mask(params[name], n, self.settings.target_density)
                params[name].mul_(keep.to(params[name].device, params[name].dtype))
                spec = next(t for t in layout.prunable if t.name == name)
                own[spec.slice] = keep.reshape(-1).numpy()
        return own


def final_mask(
    floats: np.ndarray,
    layout: ModelLayout,
    settings: GibbsSettings,
    structure: ChannelStructure | None,
) -> np.ndarray:
    """The deterministic mask of the aggregated model at the target (filter-wise: a channel mask)."""
    mask = layout.full_mask()
    outputs = output_layers(structure)
    grouped: set[str] = set()
    if settings.mode == "filter" and structure is not None:
        keep = []
        for group in structure.groups:
            score = np.zeros(group.channels)
            for s in group.weights:
                if s.dim == 0:
                    spec = next(t for t in layout.prunable if t.name == s.name)
                    rows = floats[spec.slice].reshape(spec.shape[0], -1).astype(np.float64) ** 2
                    np.add.at(score, s.root, rows[s.index].sum(1))
                    grouped.add(s.name)
            order = np.argsort(-score, kind="stable")
            kept = np.zeros(group.channels, dtype=bool)
            kept[order[: layer_count(settings.target_density, group.channels)]] = True
            keep.append(kept)
        mask = structure.channel_mask(keep, mask)
    for t in layout.prunable:
        if t.name in grouped or (settings.mode == "filter" and t.name in outputs):
            continue
        n = unit_size(t.shape, settings.mode, t.name in outputs)
        weight = torch.from_numpy(floats[t.slice].reshape(t.shape).copy())
        mask[t.slice] &= deterministic_mask(weight, n, settings.target_density).reshape(-1).numpy()
    return mask


class GibbsPruning(DensityPruning):
    """Gibbs pruning with round-annealed beta, client-side sampling and a deterministic final mask."""

    name = "gibbs"
    Settings = GibbsSettings
    settings: GibbsSettings

    def target_density(self) -> float | None:
        return None if self.settings.mode == "filter" else self.settings.target_density

    @property
    def structure(self) -> ChannelStructure | None:
        env = self.env
        if self.settings.mode != "filter" or not env.model:
            return None
        return structure_for(env.model, env.num_classes, tuple(env.input_shape))

    @property
    def last_sampling_round(self) -> int:
        rounds = self.env.num_rounds
        return annealing_rounds(self.settings, rounds) if self.settings.fix_after_anneal else rounds

    def round_plan(self, server_round: int) -> RoundPlan:
        if server_round > self.last_sampling_round:
            return RoundPlan(client_config={"phase": "fixed", "shrink": self.settings.mode == "filter"})
        beta = beta_at(server_round, self.settings, self.env.num_rounds)
        config = {**settings_dict(self.settings), "phase": "sample", "beta": beta}
        return RoundPlan(client_config=config, client_masks=True)

    def merge_clients(self, update: RoundUpdate) -> np.ndarray | None:
        reports = update.reports
        masks = [r.mask for r in reports if r.mask is not None]
        if not masks:
            return None
        if self.settings.merge == "union":
            return np.logical_or.reduce(self._bounded(masks))
        weights = np.array([r.weight for r in reports if r.mask is not None])
        votes = sum(w * m.astype(np.float64) for w, m in zip(weights, masks, strict=True))
        return votes >= 0.5 * weights.sum()

    def _bounded(self, masks: list[np.ndarray]) -> list[np.ndarray]:
        """The masks a union may take: those keeping at most statistic-factor x the median count.

        A union lets one client keep every position; with this bound no client adds
        more than ``factor`` times the median client's kept count (:mod:`common.bounds`).
        A mask above it is left out of the union (its values were still averaged).
        """
        counts = [int(np.count_nonzero(m)) for m in masks]
        scales = median_clip_scales(counts, self.env.statistic_factor)
        kept = [m for m, s in zip(masks, scales, strict=True) if s >= 1]
        return kept or masks

    def reconfigure(
        self,
        server_round: int,
        floats: np.ndarray,
        mask: np.ndarray,
        cost: CostModel,
    ) -> np.ndarray | None:
        if server_round != self.last_sampling_round:
            return None
        effective = np.where(mask, floats, np.float32(0))
        return final_mask(effective, self.env.layout, self.settings, self.structure)

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        if client_config.get("phase") == "sample":
            beta = float(client_config["beta"])  # type: ignore[arg-type]
            outputs = output_layers(self.structure)
            return GibbsHooks(self.env.layout, self.settings, beta, seed, outputs)
        if client_config.get("shrink") and self.structure is not None:
            return ShrinkingHooks(self.structure)
        return TrainingHooks()
