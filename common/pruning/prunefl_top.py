"""PruneFL's compressed importance upload: per layer, the top of a client's pruned-position importance.

Jiang et al., "Model Pruning Enables Efficient Federated Learning on Edge
Devices", IEEE TNNLS 2022, Sec. IV. The reconfiguration R(S, dtp)
(:func:`~common.pruning.reconfiguration.reconfigure_mask`) keeps, in every prunable
layer l, a protected core of the active weights (the top ``1 - dtp`` by magnitude),
then adds candidates in decreasing order of S_j / c_l while the ratio exceeds the
objective (sum S kept) / (T0 + sum_l c_l |M_l|). Three facts bound what a client
must send (with plain SGD the server rebuilds S at the kept positions itself, so
the upload covers only pruned positions):

1. The core of layer l holds at least ``n_l - floor(dtp n_l)`` weights
   (n_l = |M_l|, the active weights; ties in magnitude keep more), so

       N_core >= N_core_min = sum_l ( n_l - floor(dtp n_l) ).

2. If the new mask keeps at most N_max prunable weights, the pruned weights it
   re-adds number at most

       B = N_max - N_core_min,                                      (bound)

   with N_max = max_kept (``max-density`` x prunable weights) when a maximum
   density is set, and N_max = floor((1 + g) sum_l n_l) otherwise, g =
   ``importance-top-growth`` (PruneFL's size settles; a reconfiguration that grows
   the model by more than g breaks the bound). With both, the smaller.

3. Within one layer the cost c_l is common, so the greedy takes that layer's
   pruned candidates in decreasing order of S_j alone: the pruned weights it adds in
   layer l are among the ``min(B, p_l)`` largest S_j of the layer's p_l pruned ones,
   whatever the cost model's coefficients are.

A client therefore sends, per layer, its ``K_l = min(p_l, ceil(f B))`` largest
entries (f = ``importance-top-factor`` >= 1, slack for the sum over clients); the
rest are implied **zero**, so the server's S' is a lower bound of S everywhere:
0 <= S_j - S'_j <= sum over the clients c that did not send j of t_{c,l}, with
t_{c,l} client c's K_l-th largest entry of layer l.

When the decision is guaranteed equal. Let A be the candidates the greedy adds
from the exact S. If S'_j = S_j on A and S'_j <= S_j elsewhere, the greedy on S'
adds exactly A: the first |A| candidates in the order by S'/c are still A (a
candidate outside A only moves later), their prefix sums are the same, and the next
candidate has a ratio no larger than the exact one's, which failed (or the
``max-density`` cap, the same on both sides, stopped it). S'_j = S_j on A holds
when (a) the greedy adds at most B pruned weights (always under ``max-density``),
(b) every contributor sent every pruned position of A (always with one contributor
per reconfiguration, by 3.; with several, when each one's top-K_l covers A - the
sum of per-client top-Ks is not the top-K of the sum, and f > 1 makes a miss
rarer), (c) no contributor's share was scaled by ``federation.statistic-factor``
(the implied zeros lower a client's mass, hence possibly its scale), and (d) the
sent values are exact in their format (always with ``importance-top-values =
"float32"``). Otherwise the decision is approximate: bfloat16
rounds each sent entry by a relative 2^-8 at most, which can only swap candidates
(or a candidate and the objective) within that tolerance, and a position missed by
some contributors is undercounted by their thresholds at most.

Implied zero rather than t/2: a value above the truth could move an unsent
position ahead of A and change the decision even when (a)-(d) hold; zero never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..layout import ModelLayout
from ..settings import Section
from ..wire.sparse import SparsePlan


@dataclass(frozen=True)
class TopRule(Section):
    """The inputs of the bound B, sent as task entries ``importance-top.*`` in upload rounds.

    ``removal`` is dtp of the reconfiguration the upload serves, ``max_kept`` the
    maximum-density cap in weights (0: none); both ends compute the same
    :func:`segment_plan` from it and the mask of the round.
    """

    PREFIX = "importance-top"

    removal: float = 0.0
    growth: float = 0.5
    factor: float = 2.0
    max_kept: int = 0
    values: Literal["bfloat16", "float32"] = "bfloat16"  # float32 makes condition (d) hold

    def validate(self) -> None:
        self.require("removal", 0.0 <= self.removal < 1.0, "a number in [0, 1)")
        self.require("growth", self.growth >= 0.0, "a number >= 0")
        self.require("factor", self.factor >= 1.0, "a number >= 1")
        self.require("max_kept", self.max_kept >= 0, "a count >= 0 (0: no cap)")


def core_minimum(kept_per_layer: np.ndarray, removal: float) -> int:
    """N_core_min = sum_l (n_l - floor(dtp n_l)): the fewest weights the protected cores keep."""
    return int(sum(int(n) - int(removal * int(n)) for n in kept_per_layer))


def size_limit(kept: int, growth: float, max_kept: int) -> int:
    """N_max: ``max_kept`` when set, floor((1 + g) kept) otherwise; the smaller of both when both apply."""
    grown = math.floor((1.0 + growth) * kept)
    return min(grown, max_kept) if max_kept > 0 else grown


def addition_bound(kept_per_layer: np.ndarray, rule: TopRule) -> int:
    """B = N_max - N_core_min (>= 0): the most pruned weights one reconfiguration re-adds."""
    kept = int(np.sum(kept_per_layer))
    return max(0, size_limit(kept, rule.growth, rule.max_kept) - core_minimum(kept_per_layer, rule.removal))


def segment_plan(layout: ModelLayout, mask: np.ndarray, rule: TopRule) -> SparsePlan:
    """One segment per prunable layer (its pruned positions, in layout order), limit min(p_l, ceil(f B))."""
    kept = layout.kept_per_layer(mask)
    pruned = [t.size - int(n) for t, n in zip(layout.prunable, kept, strict=True)]
    per_layer = math.ceil(rule.factor * addition_bound(kept, rule))
    return SparsePlan(tuple(pruned), tuple(min(p, per_layer) for p in pruned), rule.values)


def top_of_segment(values: np.ndarray, limit: int) -> np.ndarray:
    """Which of ``values`` are among its ``limit`` largest (ties: the lower positions, as in the greedy)."""
    if limit >= len(values):
        return np.ones(len(values), dtype=bool)
    if limit == 0:
        return np.zeros(len(values), dtype=bool)
    threshold = np.partition(values, len(values) - limit)[len(values) - limit]
    keep = values > threshold
    ties = np.flatnonzero(values == threshold)[: limit - int(np.count_nonzero(keep))]
    keep[ties] = True
    return keep


def keep_top(vector: np.ndarray, plan: SparsePlan) -> np.ndarray:
    """``vector`` with every entry outside its segment's top ``limit`` set to zero (a copy)."""
    out = np.array(vector, dtype=np.float32)
    for (start, stop), limit in zip(plan.bounds(), plan.limits, strict=True):
        segment = out[start:stop]
        segment[~top_of_segment(segment, limit)] = 0.0
    return out
