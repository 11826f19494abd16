"""The base of methods that prune whole channels (filters) rather than single weights.

Such a method works on the model's channel structure: which output channels of
which layers are coupled (a convolution, its BatchNorm, the next layer's inputs),
traced once from Torch-Pruning's dependency graph (:mod:`common.pruning.channels`),
as Torch-Pruning's pruners own their graph. Once a method's channel mask is fixed,
its clients train the physically smaller model (:class:`~common.pruning.shrink.ShrinkingHooks`)
whenever the round's plan says ``shrink``. L1-norm filter pruning, trainable gates
and Rethinking's retraining build on it; Gibbs pruning, structured only in its
``filter`` mode, traces the same structure itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property

import numpy as np

from ..budget import fit_fraction
from ..cost_model import CostModel
from ..training import TrainingHooks
from .base import ConfigValue, PruningMethod
from .channels import ChannelStructure, structure_for
from .shrink import ShrinkingHooks


def leading_channels(structure: ChannelStructure, mask: np.ndarray, ratio: float) -> np.ndarray:
    """HeteroFL's sub-model of width ``ratio`` as a channel mask inside ``mask``.

    Diao, Ding and Tarokh (HeteroFL, ICLR 2021) give a client of capability r the first
    ceil(r C_l) channels of every hidden layer. Here, of every channel group's k_g kept
    channels the first ceil(r k_g) (at least one of a group that keeps any) stay, with
    every weight coupled to them (:meth:`ChannelStructure.channel_mask`: the group's
    output rows and its consumers' input columns); a group ``mask`` already removed
    stays removed.
    """
    keep = []
    for removed in structure.removed(mask):
        kept = np.flatnonzero(~removed)
        count = min(len(kept), max(1 if len(kept) else 0, math.ceil(ratio * len(kept))))
        chosen = np.zeros(len(removed), dtype=bool)
        chosen[kept[:count]] = True
        keep.append(chosen)
    return structure.channel_mask(keep, mask)


class StructuredPruning(PruningMethod):
    """A method over the model's channel structure; clients shrink the model when told to."""

    @cached_property
    def structure(self) -> ChannelStructure:
        """The coupled channel groups of the run's model (traced once per architecture)."""
        env = self.env
        return structure_for(env.model, env.num_classes, tuple(env.input_shape))

    # -- per-client round budgets: leading channels (common/budget.py) ---------------------------
    def budget_fraction(self, cost: CostModel, mask: np.ndarray, budget: float) -> float:
        """The largest width ratio r with T_c(S(r)) <= B, S(r) = :func:`leading_channels`."""
        layout = self.env.layout
        return fit_fraction(
            cost,
            layout.kept_per_layer(mask),
            lambda r: layout.kept_per_layer(leading_channels(self.structure, mask, r)),
            budget,
        )

    def budget_counts(self, mask: np.ndarray, fraction: float) -> np.ndarray:
        return self.env.layout.kept_per_layer(leading_channels(self.structure, mask, fraction))

    def budget_submask(self, floats: np.ndarray, mask: np.ndarray, fraction: float) -> np.ndarray:
        """S = the leading channels of width ``fraction`` (the weights do not choose them)."""
        return leading_channels(self.structure, mask, fraction)

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        """Train the physically smaller model when the round's plan says ``shrink``."""
        return ShrinkingHooks(self.structure) if client_config.get("shrink") else TrainingHooks()
