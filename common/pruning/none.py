"""Dense FedAvg: no pruning (McMahan et al., AISTATS 2017), the baseline of every comparison."""

from __future__ import annotations

from .base import PruningMethod


class NoPruning(PruningMethod):
    """Every weight kept, every round: the inherited dense defaults unchanged."""

    name = "none"
