"""Per-client round-time budgets: a sub-mask of the global mask that a slow device can afford.

A client on a slow device may not afford the global mask M within the fleet's
round budget B (``fleet.round-budget``, modelled seconds). In the spirit of
HeteroFL (Diao, Ding, Tarokh, ICLR 2021: each client trains a sub-model of the
global model sized to its capability, and the server averages every parameter
over the clients that hold it), such a client trains a *sub-mask* S of M. Its
size comes from PruneFL's round-time model (Jiang et al., TNNLS 2022, Sec. IV-B)
on the client's own profile:

    T_c(M) = T0_c + sum_l c_{c,l} |M_l|,     c_{c,l} = c_comm + E comp_{c,l}

with c_comm the seconds to move one kept value down and up, half each way (a
round's model and update messages are of about one size). A client training S
still receives all of M, so only the upload and the compute shrink with S:

    T_c(S) = T0_c + (c_comm / 2) |M| + sum_l (c_comm / 2 + E comp_{c,l}) |S_l|

and the same fraction s of every layer's kept weights is kept, the largest s
such that T_c(S) <= B:

    s = min(1, (B - T0_c - (c_comm / 2) |M|) / sum_l (c_comm / 2 + E comp_{c,l}) |M_l|)

(s = 0 when the numerator is not positive: the budget does not even pay for the
download; the client then trains one weight per layer).

The method chooses S (:meth:`common.pruning.PruningMethod.budget_submask`). For
unstructured masks, in every prunable layer the ``ceil(s |M_l|)`` kept weights of
largest magnitude form S (at least one weight of a layer that keeps any: a layer is
never cut off, so the sub-model still computes); positions outside the prunable
layers (biases, BatchNorm) are always in S. For channel masks (the structured
methods) S keeps HeteroFL's *leading channels*: of every channel group's kept
channels the first ``ceil(r k_g)``, with their coupled weights (the consumers' input
columns too), so S is a channel mask of a narrower model; its size is not linear in
r (a convolution between two narrowed groups keeps about r^2 of its weights), so r is
the largest width ratio with T_c(S(r)) <= B, found by bisection (:func:`fit_fraction`).
FedRolex (Alam et al., NeurIPS 2022) would roll the window over rounds instead,
which magnitude does not need: the kept set follows the weights.

The server averages each position over the clients that trained it
(:func:`server.aggregation.per_position_fedavg`). Only the upload shrinks: the
client still receives the global model's kept values (down bytes are those of M).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .cost_model import CostModel
from .layout import ModelLayout

# Entries of a training round's task config (lists over the round's budgeted clients)
BUDGET_PARTITIONS = "fleet.budget-partitions"
BUDGET_KEEP = "fleet.budget-keep"


def keep_fraction(cost: CostModel, kept_per_layer: np.ndarray, budget: float) -> float:
    """s of the module on ``cost``'s device; 1 without a budget (B = 0) or when M fits in it."""
    if budget <= 0 or cost.round_time(kept_per_layer) <= budget:
        return 1.0
    fixed = submask_time(cost, kept_per_layer, np.zeros_like(kept_per_layer))  # T0 + the download
    variable = submask_time(cost, kept_per_layer, kept_per_layer) - fixed  # linear in S
    return min(1.0, max(0.0, (budget - fixed) / variable))


def submask_time(cost: CostModel, kept_per_layer: np.ndarray, sub_per_layer: np.ndarray) -> float:
    """T_c(S) = T0 + (c_comm / 2) |M| + sum_l (c_comm / 2 + E comp_l) |S_l| (see the module)."""
    half = cost.comm_per_value / 2
    variable = float(np.dot(cost.coefficients() - half, sub_per_layer))
    return cost.constant + half * float(np.sum(kept_per_layer)) + variable


def fit_fraction(
    cost: CostModel,
    kept_per_layer: np.ndarray,
    sub_per_layer: Callable[[float], np.ndarray],
    budget: float,
    steps: int = 40,
) -> float:
    """The largest r in [0, 1] with T_c(S(r)) <= B, S(r) of ``sub_per_layer(r)`` kept weights per layer.

    T_c(S(r)) is non-decreasing in r, so bisection finds it (to 2^-steps); 1 without a
    budget or when M fits in it, 0 when even S(0) does not.
    """
    if budget <= 0 or cost.round_time(kept_per_layer) <= budget:
        return 1.0
    if submask_time(cost, kept_per_layer, sub_per_layer(0.0)) > budget:
        return 0.0
    low, high = 0.0, 1.0  # T(S(low)) <= B < T(S(high))
    for _ in range(steps):
        middle = (low + high) / 2
        if submask_time(cost, kept_per_layer, sub_per_layer(middle)) <= budget:
            low = middle
        else:
            high = middle
    return low


def kept_counts(kept_per_layer: np.ndarray, fraction: float) -> np.ndarray:
    """ceil(s |M_l|) per layer, at least one of a layer that keeps any, at most |M_l|."""
    counts = np.array([math.ceil(fraction * int(k)) for k in kept_per_layer], dtype=np.int64)
    return np.minimum(np.maximum(counts, (np.asarray(kept_per_layer) > 0).astype(np.int64)), kept_per_layer)


def magnitude_submask(
    layout: ModelLayout, floats: np.ndarray, mask: np.ndarray, fraction: float
) -> np.ndarray:
    """S: per prunable layer the ``kept_counts`` largest-|w| kept positions of ``mask``; else ``mask``.

    Ties in magnitude go to the earlier position (a stable sort), so S is a pure
    function of its arguments.
    """
    sub = mask.copy()
    counts = kept_counts(layout.kept_per_layer(mask), fraction)
    for tensor, count in zip(layout.prunable, counts, strict=True):
        positions = np.flatnonzero(mask[tensor.slice]) + tensor.slice.start
        order = np.argsort(-np.abs(floats[positions]), kind="stable")
        sub[positions[order[count:]]] = False
    return sub


def budget_entries(fractions: dict[int, float]) -> dict[str, list[int] | list[float]]:
    """The task-config entries telling the round's budgeted partitions their keep fraction.

    Empty without budgeted clients, so that a run without budgets sends what it always sent.
    """
    if not fractions:
        return {}
    partitions = sorted(fractions)
    return {BUDGET_PARTITIONS: partitions, BUDGET_KEEP: [float(fractions[p]) for p in partitions]}


def fraction_for(config: dict, partition_id: int) -> float | None:
    """This partition's keep fraction from a task config's budget entries (None: not budgeted).

    Raises ValueError for malformed entries.
    """
    partitions, keep = config.get(BUDGET_PARTITIONS, []), config.get(BUDGET_KEEP, [])
    if not isinstance(partitions, list) or not isinstance(keep, list) or len(partitions) != len(keep):
        raise ValueError(f"'{BUDGET_PARTITIONS}' and '{BUDGET_KEEP}' must be lists of one length")
    if partition_id not in partitions:
        return None
    fraction = keep[partitions.index(partition_id)]
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise ValueError(f"'{BUDGET_KEEP}' = {fraction!r} for partition {partition_id} must lie in [0, 1)")
    return float(fraction)
