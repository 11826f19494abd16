"""DropPruning: iterative prune-and-retrain with stochastic drop-out and drop-in.

Jia, Yao, Wang and Xiang, "DropPruning for Model Compression", arXiv 1812.02035.
At each pruning step the method stochastically deletes some unimportant weights
(*drop out*) and stochastically recovers some pruned ones (*drop in*). The paper's
exact probabilities and schedule could not be checked; this is the parametrisation
chosen here, consistent with its abstract, with every constant a setting:

* every ``interval`` rounds (a step after round t, t < the final round), per
  prunable layer: the candidates C are the ``round(q * |A|)`` alive weights (A)
  with the smallest |w|; each is pruned with probability p_out; each weight
  pruned before the step is revived with probability p_in, restarting from its
  last server value (as PruneFL's re-added weights do);
* the expected density then moves as

      d' = d - p_out q d + p_in (1 - d),       fixed point d* = p_in / (p_in + p_out q),

  so p_in is derived from the target: p_in = p_out q d* / (1 - d*), which steers
  the model to ``target-density`` in expectation, geometrically at the rate
  (1 - p_out q - p_in) per step;
* after round ``ceil(final-fraction * rounds)`` a deterministic magnitude prune
  sets every layer exactly to the target (the top |w| among all its weights,
  stale values of pruned ones included), and the remaining rounds fine-tune.

q is ``candidate-fraction``, p_out ``drop-probability``. p_in <= 1 needs
d* <= 1 / (1 + p_out q), which the settings check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cost_model import CostModel
from ..layout import ModelLayout
from .base import DensityPruning, DensitySettings
from .selection import keep_top, magnitude_scores


@dataclass(frozen=True)
class DropPruningSettings(DensitySettings):
    PREFIX = "pruning.droppruning"

    interval: int = 1  # rounds between drop steps
    candidate_fraction: float = 0.2  # q, share of a layer's alive weights that are candidates
    drop_probability: float = 0.5  # p_out, chance that a candidate is pruned
    final_fraction: float = 0.75  # share of the rounds after which the final magnitude prune runs

    @property
    def revive_probability(self) -> float:
        """p_in = p_out q d* / (1 - d*): the target is the fixed point of the expected density."""
        d = self.target_density
        if d >= 1.0:
            return 0.0
        return self.drop_probability * self.candidate_fraction * d / (1.0 - d)

    def validate(self) -> None:
        super().validate()
        self.require("interval", self.interval >= 1, "an integer >= 1")
        self.require("candidate_fraction", 0 < self.candidate_fraction <= 1, "a fraction in (0, 1]")
        self.require("drop_probability", 0 < self.drop_probability <= 1, "a probability in (0, 1]")
        self.require("final_fraction", 0 < self.final_fraction <= 1, "a fraction of the rounds in (0, 1]")
        limit = 1.0 / (1.0 + self.drop_probability * self.candidate_fraction)
        self.require(
            "target_density",
            self.target_density >= 1.0 or self.target_density <= limit,
            f"at most 1 / (1 + drop-probability * candidate-fraction) = {limit:.4f}, "
            "the highest fixed point a revival probability <= 1 reaches (or 1: no pruning)",
        )


def expected_density(density: float, q: float, p_out: float, p_in: float) -> float:
    """E[d'] = d - p_out q d + p_in (1 - d)."""
    return density - p_out * q * density + p_in * (1.0 - density)


def drop_step(
    floats: np.ndarray,
    mask: np.ndarray,
    layout: ModelLayout,
    rng: np.random.Generator,
    q: float,
    p_out: float,
    p_in: float,
) -> np.ndarray:
    """One DropPruning step on every prunable layer (see the module docstring)."""
    new = mask.copy()
    for t in layout.prunable:
        part = mask[t.slice]
        alive = np.flatnonzero(part)
        pruned = np.flatnonzero(~part)
        count = int(round(q * len(alive)))
        order = np.argsort(np.abs(floats[t.slice][alive]), kind="stable")
        candidates = alive[order[:count]]
        dropped = candidates[rng.random(len(candidates)) < p_out]
        revived = pruned[rng.random(len(pruned)) < p_in]
        layer = new[t.slice]
        layer[dropped] = False
        layer[revived] = True
        if not layer.any():  # keep a layer alive: its largest weight stays
            layer[int(np.argmax(np.abs(floats[t.slice])))] = True
        new[t.slice] = layer
    return new


class DropPruning(DensityPruning):
    """Stochastic drop-out / drop-in steps to a target density, then a final magnitude prune."""

    name = "droppruning"
    Settings = DropPruningSettings
    settings: DropPruningSettings

    @property
    def final_round(self) -> int:
        return max(1, math.ceil(self.settings.final_fraction * self.env.num_rounds))

    def reconfigure(
        self,
        server_round: int,
        floats: np.ndarray,
        mask: np.ndarray,
        cost: CostModel,
    ) -> np.ndarray | None:
        s, layout = self.settings, self.env.layout
        if server_round == self.final_round:
            return keep_top(magnitude_scores(floats), layout, s.target_density, "layer")
        if server_round > self.final_round or server_round % s.interval != 0:
            return None
        rng = self.rng(server_round)
        return drop_step(
            floats, mask, layout, rng, s.candidate_fraction, s.drop_probability, s.revive_probability
        )
