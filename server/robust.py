"""Robust aggregation of masked replies: clipped mean, trimmed mean, median.

Each rule takes the same inputs as masked FedAvg (:mod:`server.aggregation`): the
model's flat floats, each reply's mask (the global mask, or the client's own one
when clients choose their masks), the values at that mask, and the FedAvg weights
n_c. A position j is aggregated over the clients that kept it,
C_j = {c : j in M_c}; a position no client kept keeps its value. With every
client on the global mask, C_j is every client at every kept position.

``mean``
    The sample-weighted mean, w_j <- sum_{c in C_j} n_c w_{c,j} / sum_{c in C_j} n_c:
    McMahan et al.'s FedAvg (AISTATS 2017), masked as in PruneFL (Jiang et al.,
    TNNLS 2022). One client can move it arbitrarily far.
``clip``
    Norm clipping of updates: with Delta_c = w_c - w_start (over c's mask) and
    m = median_c ||Delta_c||_2, each update is scaled to at most kappa * m,

        Delta_c <- Delta_c * min(1, kappa * m / ||Delta_c||),

    then averaged as ``mean`` (the "norm bounding" defence of Sun et al., "Can You
    Really Backdoor Federated Learning?", 2019, with the bound taken from the
    round's median as in Karimireddy et al.'s centred clipping, ICML 2021). A
    client moves the aggregate by at most n_c kappa m / sum n.
``trimmed-mean``
    Coordinate-wise trimmed mean (Yin et al., "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018): per position, the
    values of C_j are sorted and a share beta of their weight is cut at each end;
    the rest is averaged by weight. With equal weights and beta |C_j| an integer
    this is Yin et al.'s beta-trimmed mean; an element straddling a cut counts
    with the part of its weight inside. While fewer than a share beta of C_j's
    weight is hostile, the result lies within the range of the honest values.
``median``
    Coordinate-wise median (Yin et al., 2018), by weight: the value at which the
    sorted weights of C_j reach half their sum (the mean of the two middle values
    when a cut falls exactly between them, the ordinary median for equal weights).
    While hostile clients hold under half of C_j's weight, it lies within the
    range of the honest values.

Flower's ``FedTrimmedAvg`` and ``FedMedian`` apply the same statistics to whole
arrays of every reply; here the statistics run over the clients that kept each
position, so they compose with pruning masks and partial coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from common.bounds import median_clip_scales

from .aggregation import average_counters, masked_fedavg, per_position_fedavg

Rule = Literal["mean", "clip", "trimmed-mean", "median"]
RULES: tuple[Rule, ...] = ("mean", "clip", "trimmed-mean", "median")


def _stacked(
    floats: np.ndarray, masks: Sequence[np.ndarray], values: Sequence[np.ndarray], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Values (clients x positions, float64) and weights (0 where a client did not keep j)."""
    stacked = np.zeros((len(values), floats.size), dtype=np.float64)
    weight = np.zeros_like(stacked)
    for row, (mask, vals, w) in enumerate(zip(masks, values, weights, strict=True)):
        stacked[row, mask] = vals
        weight[row, mask] = w
    return stacked, weight


def weighted_trimmed_mean(values: np.ndarray, weights: np.ndarray, beta: float) -> np.ndarray:
    """Per column: cut a share ``beta`` of the column's weight at each end, average the rest.

    ``values`` and ``weights`` are (clients x positions); a zero weight leaves a
    client out of that column. Element i of a sorted column, with cumulative weight
    c_i = w_1 + ... + w_i and total W, counts with weight
    e_i = max(0, min(c_i, (1 - beta) W) - max(c_i - w_i, beta W)).
    Columns without weight give NaN (the caller keeps the old value there).
    """
    order = np.argsort(values, axis=0, kind="stable")
    v = np.take_along_axis(values, order, axis=0)
    w = np.take_along_axis(weights, order, axis=0)
    cum = np.cumsum(w, axis=0)
    total = cum[-1]
    low, high = beta * total, (1 - beta) * total
    kept = np.clip(np.minimum(cum, high) - np.maximum(cum - w, low), 0.0, None)
    mass = kept.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (kept * v).sum(axis=0) / mass


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column: the value where the sorted cumulative weight reaches half the total.

    When it reaches exactly half at element i, the mean of elements i and the next
    one with weight (the ordinary median of an even count of equal weights).
    Columns without weight give NaN.
    """
    order = np.argsort(values, axis=0, kind="stable")
    v = np.take_along_axis(values, order, axis=0)
    w = np.take_along_axis(weights, order, axis=0)
    cum = np.cumsum(w, axis=0)
    half = cum[-1] / 2
    lower = np.argmax(cum >= half, axis=0)  # first element reaching half the weight
    upper = np.argmax(cum > half, axis=0)  # first element past it
    columns = np.arange(values.shape[1])
    out = (v[lower, columns] + v[upper, columns]) / 2
    out[cum[-1] <= 0] = np.nan
    return out


def robust_average(
    floats: np.ndarray,
    masks: Sequence[np.ndarray],
    values: Sequence[np.ndarray],
    weights: Sequence[float],
    rule: Rule,
    *,
    clip_factor: float = 2.0,
    trim_fraction: float = 0.2,
) -> np.ndarray:
    """New flat weights under ``rule``; positions no client kept keep ``floats``.

    ``masks[c]`` is client c's mask over the flat floats and ``values[c]`` its
    values there. ``mean`` is :func:`~server.aggregation.per_position_fedavg`.
    """
    if not values:
        raise ValueError("cannot aggregate zero replies")
    if rule == "mean":
        return per_position_fedavg(floats, masks, values, weights)
    if rule == "clip":
        updates = [v.astype(np.float64) - floats[m] for m, v in zip(masks, values, strict=True)]
        scales = median_clip_scales([float(np.linalg.norm(u)) for u in updates], clip_factor)
        clipped = [
            (floats[m] + s * u).astype(np.float32) for m, u, s in zip(masks, updates, scales, strict=True)
        ]
        return per_position_fedavg(floats, masks, clipped, weights)
    stacked, weight = _stacked(floats, masks, values, weights)
    if rule == "trimmed-mean":
        out = weighted_trimmed_mean(stacked, weight, trim_fraction)
    elif rule == "median":
        out = weighted_median(stacked, weight)
    else:
        raise ValueError(f"unknown aggregation rule {rule!r}; allowed: {list(RULES)}")
    new = floats.copy()
    covered = np.isfinite(out)
    new[covered] = out[covered].astype(np.float32)
    return new


def aggregate_masked(
    floats: np.ndarray,
    mask: np.ndarray,
    values: Sequence[np.ndarray],
    weights: Sequence[float],
    rule: Rule,
    *,
    clip_factor: float = 2.0,
    trim_fraction: float = 0.2,
    kept: np.ndarray | None = None,
) -> np.ndarray:
    """Every reply on the global ``mask``: ``mean`` is exactly :func:`masked_fedavg`.

    ``kept`` are the mask's kept indices, when the caller has them cached.
    """
    kept = np.flatnonzero(mask) if kept is None else kept
    if rule == "mean":
        return masked_fedavg(floats, mask, values, weights, kept)
    compact = robust_average(
        floats[kept],
        [np.ones(len(kept), dtype=bool)] * len(values),
        values,
        weights,
        rule,
        clip_factor=clip_factor,
        trim_fraction=trim_fraction,
    )
    new = floats.copy()
    new[kept] = compact
    return new


def aggregate_counters(counters: Sequence[np.ndarray], weights: Sequence[float], rule: Rule) -> np.ndarray:
    """Integer buffers: the weighted mean under ``mean``, else the weighted median, rounded."""
    if rule == "mean" or not counters or counters[0].size == 0:
        return average_counters(counters, weights)
    stacked = np.stack([c.astype(np.float64) for c in counters])
    weight = np.repeat(np.asarray(weights, dtype=np.float64)[:, None], stacked.shape[1], axis=1)
    return np.rint(weighted_median(stacked, weight)).astype(np.int64)
