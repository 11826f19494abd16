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

# Elements per block of the running sum: its float64 accumulators (2 x 512 KiB) stay in the
# cache while every client's block is added, instead of streaming a float64 copy of each whole
# vector through memory (about 4x less memory traffic on a dense Conv-2 round).
BLOCK = 1 << 16


def weighted_average(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_c v_c * (w_c / sum w), accumulated in float64, returned as float32.

    The sum runs block by block (:data:`BLOCK` elements), each element's terms added
    in client order from 0.0: bit for bit the same as summing whole float64 vectors.
    """
    if not vectors:
        raise ValueError("cannot average zero vectors")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"aggregation weights must sum to a positive number, got {total}")
    flat = [np.asarray(vector).reshape(-1) for vector in vectors]
    scales = [weight / total for weight in weights]
    out = np.empty(flat[0].shape, dtype=np.float32)
    acc = np.empty(min(BLOCK, out.size), dtype=np.float64)
    term = np.empty_like(acc)
    for start in range(0, out.size, BLOCK):
        stop = min(start + BLOCK, out.size)
        a, t = acc[: stop - start], term[: stop - start]
        a.fill(0.0)
        for vector, scale in zip(flat, scales, strict=True):
            np.multiply(vector[start:stop], scale, out=t, dtype=np.float64)
            a += t
        out[start:stop] = a
    return out.reshape(np.shape(vectors[0]))


def masked_fedavg(
    floats: np.ndarray,
    mask: np.ndarray,
    kept_values: Sequence[np.ndarray],
    weights: Sequence[float],
    kept: np.ndarray | None = None,
) -> np.ndarray:
    """New flat weights: the weighted mean at kept positions, ``floats`` elsewhere.

    ``kept`` are the mask's kept indices when the caller has them (``np.flatnonzero(mask)``):
    writing by index is several times faster than by a boolean mask.
    """
    new = floats.copy()
    new[np.flatnonzero(mask) if kept is None else kept] = weighted_average(kept_values, weights)
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
