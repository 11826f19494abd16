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

from collections.abc import Mapping
from functools import cached_property

from ..training import TrainingHooks
from .base import ConfigValue, PruningMethod
from .channels import ChannelStructure, structure_for
from .shrink import ShrinkingHooks


class StructuredPruning(PruningMethod):
    """A method over the model's channel structure; clients shrink the model when told to."""

    @cached_property
    def structure(self) -> ChannelStructure:
        """The coupled channel groups of the run's model (traced once per architecture)."""
        env = self.env
        return structure_for(env.model, env.num_classes, tuple(env.input_shape))

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        """Train the physically smaller model when the round's plan says ``shrink``."""
        return ShrinkingHooks(self.structure) if client_config.get("shrink") else TrainingHooks()
