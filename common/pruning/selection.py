"""Selecting which weights to keep, given scores: separate from scoring and from scheduling.

A score is one number per position of the flat float state (higher = more worth
keeping): ``|w|`` for magnitude pruning, ``|w * g|`` for SNIP, a random number for
random pruning. :func:`keep_top` turns scores into a mask at a density, either

* per layer (``"layer"``): each prunable tensor keeps ``max(1, round(d * n_l))``
  of its n_l weights, as ``torch.nn.utils.prune.l1_unstructured`` does per tensor;
* globally (``"global"``): the ``round(d * N)`` best of all N prunable weights,
  as ``torch.nn.utils.prune.global_unstructured`` does, so layers end at
  different densities.

Only ``eligible`` positions can be kept, so a new mask keeps the zeros of the old
one (torch's pruning semantics: masks compose). Ties are broken by position, so a
selection is deterministic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..layout import ModelLayout

Scope = Literal["layer", "global"]
SCOPES = ("layer", "global")


def layer_count(density: float, size: int) -> int:
    """Weights a layer of ``size`` keeps at ``density``: at least one."""
    return min(size, max(1, int(round(density * size))))


def _top(scores: np.ndarray, eligible: np.ndarray, count: int) -> np.ndarray:
    """Bool vector: the ``count`` highest scores among ``eligible`` (ties by position)."""
    keep = np.zeros(len(scores), dtype=bool)
    candidates = np.flatnonzero(eligible)
    if count >= len(candidates):
        keep[candidates] = True
        return keep
    order = np.argsort(-scores[candidates], kind="stable")
    keep[candidates[order[:count]]] = True
    return keep


def keep_top(
    scores: np.ndarray,
    layout: ModelLayout,
    density: float,
    scope: Scope = "layer",
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """The mask keeping the best-scored prunable weights at ``density``.

    Parameters
    ----------
    scores
        One score per position of the flat float state; only prunable positions are read.
    density
        Kept fraction of the prunable weights (per layer or overall, by ``scope``).
    eligible
        Positions that may be kept (default: all); a weight outside it stays pruned.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density {density} outside (0, 1]")
    eligible = layout.full_mask() if eligible is None else eligible
    mask = layout.full_mask()
    if scope == "layer":
        for t in layout.prunable:
            mask[t.slice] = _top(scores[t.slice], eligible[t.slice], layer_count(density, t.size))
    elif scope == "global":
        positions = layout.prunable_positions
        count = int(round(density * layout.num_prunable))
        mask[positions] = _top(scores[positions], eligible[positions], count)
    else:
        raise ValueError(f"unknown scope {scope!r}; allowed: {SCOPES}")
    return mask


def magnitude_scores(floats: np.ndarray) -> np.ndarray:
    """|w|, the magnitude criterion (Han et al., NeurIPS 2015)."""
    return np.abs(floats.astype(np.float64))


def random_scores(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uniform random scores: :func:`keep_top` then draws a uniformly random mask."""
    return rng.random(size)
