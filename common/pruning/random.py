"""Random pruning: a uniformly random mask at a given density, fixed for the run.

The control every comparison needs (Liu et al., ICLR 2019; Frankle and Carbin,
ICLR 2019): if a method's mask does no better than a random one at the same
density, its criterion adds nothing. The mask is drawn once, before round 1, from
the run's seed; per layer (every prunable tensor at ``target-density``) or globally
(a uniform subset of all prunable weights, so layer densities vary around it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import DensityPruning, DensitySettings, InitialData, InitialPruning
from .selection import SCOPES, Scope, keep_top, random_scores


@dataclass(frozen=True)
class RandomSettings(DensitySettings):
    PREFIX = "pruning.random"

    scope: Scope = "layer"  # "layer": every tensor at the density; "global": over all weights

    def validate(self) -> None:
        super().validate()
        self.require("scope", self.scope in SCOPES, f"one of {SCOPES}")


class RandomPruning(DensityPruning):
    """A fixed, uniformly random mask drawn before round 1."""

    name = "random"
    Settings = RandomSettings
    settings: RandomSettings

    def initial_mask(self, floats: np.ndarray, mask: np.ndarray, data: InitialData | None) -> InitialPruning:
        layout = self.env.layout
        scores = random_scores(self.rng(0), layout.num_floats)
        new = keep_top(scores, layout, self.settings.target_density, self.settings.scope, eligible=mask)
        return InitialPruning(mask=new)
