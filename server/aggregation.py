"""Masked FedAvg.

PruneFL's server (Jiang et al., TNNLS 2022) averages the clients' weights over
the kept positions only, weighting client c by n_c:

    w_j <- sum_c n_c w_{c,j} / sum_c n_c     for kept j
    w_j <- w_j                               for pruned j (the stale value stays)

Non-prunable tensors, BatchNorm buffers included, are averaged the same way.
With every position kept this is McMahan et al.'s FedAvg, and equals Flower's
``FedAvg`` on the same replies.

When clients choose their own masks (Gibbs pruning), each position is averaged
over the clients that kept it, C_j = {c : j in M_c}:

    w_j <- sum_{c in C_j} n_c w_{c,j} / sum_{c in C_j} n_c      (C_j not empty)
    w_j <- w_j                                                 (no client kept j)

which equals the masked average above when every M_c is the global mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_average(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_c v_c * (w_c / sum w), accumulated in float64, returned as float32."""
    if not vectors:
        raise ValueError("cannot average zero vectors")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"aggregation weights must sum to a positive number, got {total}")
    out = np.zeros(vectors[0].shape, dtype=np.float64)
    for vector, weight in zip(vectors, weights, strict=True):
        out += vector.astype(np.float64) * (weight / total)
    return out.astype(np.float32)


def masked_fedavg(
    floats: np.ndarray,
    mask: np.ndarray,
    kept_values: Sequence[np.ndarray],
    weights: Sequence[float],
) -> np.ndarray:
    """New flat weights: the weighted mean at kept positions, ``floats`` elsewhere."""
    new = floats.copy()
    new[mask] = weighted_average(kept_values, weights)
    return new


def average_counters(counters: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Integer buffers (BatchNorm's ``num_batches_tracked``): weighted mean, rounded."""
    if not counters or counters[0].size == 0:
        return counters[0].copy() if counters else np.zeros(0, dtype=np.int64)
    return np.rint(weighted_average([c.astype(np.float64) for c in counters], weights)).astype(np.int64)


def per_position_fedavg(
    floats: np.ndarray,
    masks: Sequence[np.ndarray],
    kept_values: Sequence[np.ndarray],
    weights: Sequence[float],
) -> np.ndarray:
    """New flat weights: each position averaged over the clients whose mask keeps it."""
    if not masks:
        raise ValueError("cannot average zero replies")
    if any(w <= 0 for w in weights):
        raise ValueError(f"aggregation weights must be positive, got {list(weights)}")
    numerator = np.zeros(floats.shape, dtype=np.float64)
    denominator = np.zeros(floats.shape, dtype=np.float64)
    for mask, values, weight in zip(masks, kept_values, weights, strict=True):
        numerator[mask] += values.astype(np.float64) * weight
        denominator[mask] += weight
    new = floats.copy()
    kept = denominator > 0
    new[kept] = (numerator[kept] / denominator[kept]).astype(np.float32)
    return new
