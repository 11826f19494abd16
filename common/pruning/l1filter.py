"""L1-norm filter pruning: whole channels by the L1 norm of their filters.

Li, Kadav, Durdanovic, Samet and Graf, "Pruning Filters for Efficient ConvNets",
ICLR 2017; the structured baseline of Liu et al. (ICLR 2019). At the schedule's
rounds (:mod:`~common.pruning.schedules`, one-shot by default), every channel group
(:mod:`~common.pruning.channels`) keeps the ``round(d(t) * channels)`` channels of
largest score

    s_c = sum of |w| over the filters that produce channel c

(one filter for a plain convolution, as in Li et al.; all the tied filters of a
residual group), and the channel mask zeroes their filters and the input columns
that read them. A removed channel never returns. Clients then train the
physically smaller model (:mod:`~common.pruning.shrink`). ``target-density`` is
the kept share of each group's channels; the output layer is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layout import ModelLayout
from .base import RoundPlan
from .channels import ChannelStructure
from .magnitude import ScheduledPruning, ScheduledSettings
from .selection import layer_count
from .structured import StructuredPruning


@dataclass(frozen=True)
class L1FilterSettings(ScheduledSettings):
    PREFIX = "pruning.l1-filter"

    target_density: float = 0.5  # kept share of each group's channels


def channel_scores(floats: np.ndarray, layout: ModelLayout, structure: ChannelStructure) -> list[np.ndarray]:
    """s_c = sum |w| over the output filters of channel c, per group."""
    specs = {t.name: t for t in layout.prunable}
    scores = []
    for group in structure.groups:
        score = np.zeros(group.channels)
        for s in group.weights:
            if s.dim == 0:
                spec = specs[s.name]
                rows = np.abs(floats[spec.slice].reshape(spec.shape[0], -1).astype(np.float64))
                np.add.at(score, s.root, rows[s.index].sum(1))
        scores.append(score)
    return scores


def keep_channels(scores: list[np.ndarray], alive: list[np.ndarray], density: float) -> list[np.ndarray]:
    """Per group, the ``round(density * channels)`` best-scored channels among the alive ones."""
    keep = []
    for score, ok in zip(scores, alive, strict=True):
        kept = np.zeros(len(score), dtype=bool)
        candidates = np.flatnonzero(ok)
        order = candidates[np.argsort(-score[candidates], kind="stable")]
        kept[order[: layer_count(density, len(score))]] = True
        keep.append(kept)
    return keep


class L1FilterPruning(StructuredPruning, ScheduledPruning):
    """Structured pruning of the channels with the smallest filter L1 norms."""

    name = "l1-filter"
    Settings = L1FilterSettings
    settings: L1FilterSettings

    def target_density(self) -> None:
        return None  # target-density is the share of channels kept, not of weights

    def prune_to(self, density: float, floats: np.ndarray, mask: np.ndarray) -> np.ndarray:
        structure, layout = self.structure, self.env.layout
        effective = np.where(mask, floats, np.float32(0))
        alive = [~removed for removed in structure.removed(mask)]
        keep = keep_channels(channel_scores(effective, layout, structure), alive, density)
        return structure.channel_mask(keep, mask)

    def round_plan(self, server_round: int) -> RoundPlan:
        return RoundPlan(client_config={"shrink": True})
