"""PruneFL's mask reconfiguration R(S, dtp).

Jiang et al., "Model Pruning Enables Efficient Federated Learning on Edge Devices"
(TNNLS 2022), Sec. IV. Given an importance S_j >= 0 for every weight, the per-layer
round-time coefficients c_l and the constant T0 of the cost model, the new mask
maximises the importance kept per unit of round time

    max_M  ( sum_{j in M} S_j ) / ( T0 + sum_l c_l |M_l| )

over masks that keep, in every prunable layer, the top ``1 - dtp`` of the active
weights by magnitude (at most a ``dtp`` fraction of a layer's active weights can
go in one call). The maximiser is greedy: take the remaining candidates (the other
active weights and all pruned ones) in decreasing order of S_j / c_l and add one
while its ratio exceeds the current objective. Adding a candidate whose ratio
exceeds the objective raises the objective (a mediant), and the ratios only fall,
so the first candidate that fails ends the search: the model size comes out of
the cost model, not from a target density.

The authors run the greedy with a max-heap over layers; here the candidates are
ranked by ratio and the stopping point is found with prefix sums, which selects the
same set (up to the order of exact ties) without a Python loop over weights. Only
the head of the ranking is ever needed (the greedy stops at its first failing
candidate, or at the density cap), so the ranking is built for a head found by
``np.partition`` and widened fourfold until the stop lies inside it: O(N) per try
plus a sort of the head, against a full sort of every candidate. On Conv-2
(5.7M candidates, 2-core x86) that sort alone took 1.3-2.3 s of a reconfiguration.
"""

from __future__ import annotations

import numpy as np

from ..layout import ModelLayout


def protected_core(weights: np.ndarray, active: np.ndarray, max_removal: float) -> np.ndarray:
    """Active weights of one layer kept unconditionally: the top ``1 - dtp`` by |w|.

    The threshold is the ``int(dtp * n_active)``-th smallest magnitude (0-based)
    among the active weights; every active weight at least that large is kept. A
    layer with no active weight keeps nothing (and is not an error).
    """
    n_active = int(np.count_nonzero(active))
    if n_active == 0:
        return np.zeros_like(active)
    magnitudes = np.abs(weights[active])
    k = int(max_removal * n_active)
    threshold = np.partition(magnitudes, k)[k]
    return active & (np.abs(weights) >= threshold)


def removal_cap(server_round: float, initial: float, half_life: float) -> float:
    """dtp(t) = dtp0 * 0.5 ** (t / half_life)."""
    return initial * 0.5 ** (server_round / half_life)


def reconfigure_mask(
    weights: np.ndarray,
    mask: np.ndarray,
    importance: np.ndarray,
    layout: ModelLayout,
    coefficients: np.ndarray,
    constant: float,
    max_removal: float,
    max_kept: int | None = None,
) -> np.ndarray:
    """Return PruneFL's new mask.

    Parameters
    ----------
    weights, mask, importance
        Flat vectors over ``layout``'s float state: current weights, current mask
        (True = kept; always True at non-prunable positions) and S >= 0.
    coefficients
        c_l > 0 for every prunable tensor of ``layout``, in layout order.
    constant
        T0 of the cost model.
    max_removal
        dtp in [0, 1): the largest fraction of a layer's active weights removable.
    max_kept
        Optional cap on the number of kept prunable weights (PruneFL's maximum
        density); the protected core is kept even beyond it.
    """
    if not 0.0 <= max_removal < 1.0:
        raise ValueError(f"max_removal must lie in [0, 1), got {max_removal}")
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.shape != (len(layout.prunable),) or not np.all(coefficients > 0):
        raise ValueError(f"need one positive cost coefficient per prunable layer, got {coefficients}")
    importance = np.asarray(importance, dtype=np.float64)

    new_mask = mask.copy()
    numerator = sum(float(importance[t.slice].sum()) for t in layout.parameters if not t.prunable)
    denominator = float(constant)
    cand_importance, cand_cost, cand_position = [], [], []
    for t, c in zip(layout.prunable, coefficients, strict=True):
        core = protected_core(weights[t.slice], mask[t.slice], max_removal)
        new_mask[t.slice] = core
        numerator += float(importance[t.slice][core].sum())
        denominator += c * int(np.count_nonzero(core))
        others = np.flatnonzero(~core)
        cand_importance.append(importance[t.slice][others])
        cand_cost.append(np.full(len(others), c))
        cand_position.append(others + t.offset)

    if not cand_position:
        return new_mask
    s = np.concatenate(cand_importance)
    c = np.concatenate(cand_cost)
    positions = np.concatenate(cand_position)
    key = -(s / c)
    limit = len(s)
    if max_kept is not None:
        n_core = layout.num_kept(new_mask)
        limit = min(limit, max(0, max_kept - n_core))
    length = min(len(s), HEAD_START)
    while True:
        head = ranked_head(key, length)
        n_added = first_failing(s[head], c[head], numerator, denominator)
        if n_added is not None or len(head) >= limit:
            break
        length = min(len(s), 4 * length)
    n_added = min(len(head) if n_added is None else n_added, limit)
    new_mask[positions[head[:n_added]]] = True
    return new_mask


HEAD_START = 1 << 16
"""How many candidates the first try ranks (then 4x, 16x, ... until the greedy stops)."""


def ranked_head(key: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` or more entries of ``np.argsort(key, kind="stable")``.

    Every key up to the ``length``-th smallest is taken (ties at the boundary
    included, so the head may be longer), in ascending index order, then sorted
    stably: equal keys keep their index order exactly as in the full stable sort,
    so the head is a prefix of it.
    """
    if length >= len(key):
        return np.argsort(key, kind="stable")
    boundary = np.partition(key, length - 1)[length - 1]
    chosen = np.flatnonzero(key <= boundary)
    return chosen[np.argsort(key[chosen], kind="stable")]


def first_failing(s: np.ndarray, c: np.ndarray, numerator: float, denominator: float) -> int | None:
    """Index of the first ranked candidate that does not raise the objective, or None.

    Candidate k is added iff s_k / c_k > (num + S_<k) / (den + C_<k); with nothing
    kept and T0 = 0 the objective is undefined and any positive S is a gain. The
    prefix sums of a head equal those of the full ranking (np.cumsum adds in order).
    """
    kept_before = numerator + np.concatenate(([0.0], np.cumsum(s)[:-1]))
    cost_before = denominator + np.concatenate(([0.0], np.cumsum(c)[:-1]))
    gains = (s * cost_before > kept_before * c) | ((cost_before == 0) & (s > 0))
    failing = np.flatnonzero(~gains)
    return int(failing[0]) if len(failing) else None
