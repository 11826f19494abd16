"""FedDST: federated dynamic sparse training, masks readjusted on the clients and merged by a vote.

Bibikar, Vikalo, Wang and Chen, "Federated Dynamic Sparse Training: Computing
Less, Communicating Less, Yet Learning Better", AAAI 2022. The model is sparse
from the first round and stays at the target density d; only which weights are
kept changes, RigL-style (Evci et al., ICML 2020), on the clients' own data:

* **initial mask**: every prunable layer keeps ``layer_count(d, n_l)`` of its n_l
  weights uniformly at random (layer-wise uniform; the authors' default is ERK,
  which is not implemented here), drawn from the run's seed;
* **readjustment rounds**: every ``interval`` rounds (Delta R; the authors use 10,
  15 on CIFAR-10) up to round T_end = ceil(``end-fraction`` * R) (the authors:
  R / 2), each client, after its local steps, prunes in every layer the
  k_l = floor(alpha_t * K_l) kept weights of smallest |w| (K_l: the layer's kept
  count) and regrows k_l of the positions pruned before the step with the largest
  |g|, g the sum of the round's local gradients (dense: the mask is enforced on the
  weights, not the gradients). Regrown weights start at zero, as in RigL and the
  paper. The readjustment ratio decays by a cosine, as in RigL:

      alpha_t = alpha / 2 * (1 + cos(pi * t / T_end))        (t <= T_end; 0 after)

* **the server's vote**: the clients report their masks (a ``client_masks`` round;
  a mask travels as an XOR delta against the one the client received). With
  weights n_c (the FedAvg weights, each clipped to ``statistic-factor`` times the
  round's median, :mod:`common.bounds`) the vote for position i is

      v_i = sum_c n_c m_{c,i} / sum_c n_c,

  and every layer keeps its K_l = ``layer_count(d, n_l)`` positions of largest
  v_i, ties broken by the larger aggregated magnitude |w_i|, then by position. The
  values are the strategy's per-position FedAvg over the clients that kept each
  position, so a newly grown position starts at the mean of its growers' values,
  zero. Between readjustment rounds, and after T_end, the mask is fixed and the
  clients train it as in masked FedAvg.

Bounded influence: each client's mask is checked to keep exactly K_l weights per
layer (else the reply is rejected), so a hostile client casts the same number of
votes as an honest one, of weight at most ``statistic-factor`` x the median
weight; it moves any v_i by at most its clipped weight's share of the total, and
changes the kept set only where the margin between a layer's K_l-th and
(K_l + 1)-th vote is below that share.

The authors' public code differs in one place: it keeps every position some client
kept (the union, ``--min-votes 0``) and prunes the aggregate back to the density
by magnitude; the vote above (with magnitude only as a tie-break) is this
project's specification.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..bounds import median_clip_scales
from ..layout import ModelLayout
from ..training import (
    GradientStatistic,
    LocalResult,
    LossFn,
    SgdSettings,
    TrainingHooks,
    train_locally,
    zero_pruned,
)
from .base import (
    ClientReport,
    ConfigValue,
    DensityPruning,
    DensitySettings,
    InitialData,
    InitialPruning,
    RoundPlan,
    RoundUpdate,
)
from .selection import keep_top, layer_count, random_scores

READJUST = "readjust"


def sparse_fan_in_scaled(floats: np.ndarray, mask: np.ndarray, layout: ModelLayout) -> np.ndarray:
    """The weights with every prunable layer's kept entries scaled by 1 / sqrt(d_l).

    d_l is the layer's kept fraction. A dense initialisation scaled for fan-in n
    (Kaiming / LeCun: Var w = c / n) leaves a unit of a layer that keeps a fraction
    d_l of its inputs with d_l times the variance it was meant to have, layer after
    layer (d^L over L layers: the signal vanishes and a sparse model trained from
    its start barely moves). Multiplying by 1 / sqrt(d_l) restores it, as the
    sparse initialisation of Evci et al. (RigL, ICML 2020) does with each unit's own
    sparse fan-in; here with the layer's mean fan-in.
    """
    out = floats.copy()
    for t in layout.prunable:
        kept = mask[t.offset : t.offset + t.size]
        fraction = float(np.count_nonzero(kept)) / t.size
        if 0 < fraction < 1:
            out[t.offset : t.offset + t.size] *= np.float32(1 / math.sqrt(fraction))
    return out  # the phase of a readjustment round, in the round plan's client config


@dataclass(frozen=True)
class FedDSTSettings(DensitySettings):
    PREFIX = "pruning.feddst"

    target_density: float = 0.2  # the paper's sparsity S = 0.8
    interval: int = 10  # Delta R: rounds between readjustments (the authors: 10, 15 on CIFAR-10)
    alpha: float = 0.05  # readjustment ratio before decay (the authors: 0.05 MNIST, 0.01 CIFAR)
    end_fraction: float = 0.5  # masks stop changing after round ceil(end-fraction * rounds) (R / 2)

    def validate(self) -> None:
        super().validate()
        self.require("interval", self.interval >= 1, "an integer >= 1 (rounds between readjustments)")
        self.require("alpha", 0 < self.alpha <= 1, "a fraction of each layer's kept weights in (0, 1]")
        self.require("end_fraction", 0 < self.end_fraction <= 1, "a fraction of the rounds in (0, 1]")


def end_round(settings: FedDSTSettings, num_rounds: int) -> int:
    """T_end = ceil(end-fraction * R): the round after which the mask no longer changes."""
    return max(1, math.ceil(settings.end_fraction * num_rounds))


def readjust_fraction(server_round: int, settings: FedDSTSettings, num_rounds: int) -> float:
    """alpha_t = alpha / 2 * (1 + cos(pi t / T_end)) for t <= T_end, else 0 (RigL's cosine decay)."""
    t_end = end_round(settings, num_rounds)
    if server_round > t_end:
        return 0.0
    return settings.alpha / 2 * (1 + math.cos(math.pi * server_round / t_end))


def is_readjustment_round(server_round: int, settings: FedDSTSettings, num_rounds: int) -> bool:
    """Every ``interval``-th round while alpha_t > 0."""
    return server_round % settings.interval == 0 and readjust_fraction(server_round, settings, num_rounds) > 0


def _ranked(scores: np.ndarray, candidates: np.ndarray, descending: bool) -> np.ndarray:
    """``candidates`` ordered by their score (ties by position, which is deterministic)."""
    keys = -scores[candidates] if descending else scores[candidates]
    return candidates[np.argsort(keys, kind="stable")]


def prune_and_regrow(weights: np.ndarray, grads: np.ndarray, mask: np.ndarray, fraction: float) -> np.ndarray:
    """One layer's RigL step: drop the k smallest |w| kept, grow the k largest |g| pruned.

    Parameters
    ----------
    weights, grads, mask
        One layer's flat weights, gradient and mask (True = kept).
    fraction
        alpha_t; k = min(floor(alpha_t * kept), pruned), so the kept count is unchanged.
        Regrowth picks among the positions pruned before the step only.

    Returns
    -------
    The layer's new mask (a new array).
    """
    kept, pruned = np.flatnonzero(mask), np.flatnonzero(~mask)
    k = min(int(math.floor(fraction * len(kept))), len(pruned))
    new = mask.copy()
    if k == 0:
        return new
    new[_ranked(np.abs(weights), kept, descending=False)[:k]] = False
    new[_ranked(np.abs(grads), pruned, descending=True)[:k]] = True
    return new


def readjusted_mask(
    floats: np.ndarray, grads: np.ndarray, mask: np.ndarray, layout: ModelLayout, fraction: float
) -> np.ndarray:
    """:func:`prune_and_regrow` on every prunable layer of flat ``floats``, ``grads`` and ``mask``."""
    new = mask.copy()
    for t in layout.prunable:
        new[t.slice] = prune_and_regrow(floats[t.slice], grads[t.slice], mask[t.slice], fraction)
    return new


def vote_mask(
    masks: list[np.ndarray],
    weights: np.ndarray,
    magnitudes: np.ndarray,
    layout: ModelLayout,
    density: float,
) -> np.ndarray:
    """The mask the weighted vote keeps: per layer the K_l = layer_count(d, n_l) largest v_i.

    v_i = sum_c n_c m_{c,i} / sum_c n_c; ties are broken by the larger ``magnitudes``
    (the aggregated |w_i|), then by position.
    """
    votes = sum(w * m.astype(np.float64) for w, m in zip(weights, masks, strict=True)) / float(weights.sum())
    mask = layout.full_mask()
    for t in layout.prunable:
        # lexsort's last key is the primary one; it is stable, so equal keys stay in position order
        order = np.lexsort((-magnitudes[t.slice], -votes[t.slice]))
        part = np.zeros(t.size, dtype=bool)
        part[order[: layer_count(density, t.size)]] = True
        mask[t.slice] = part
    return mask


def check_layer_counts(mask: np.ndarray, layout: ModelLayout, density: float) -> None:
    """Raise ValueError unless every prunable layer of ``mask`` keeps exactly layer_count(d, n_l)."""
    for t in layout.prunable:
        kept, expected = int(np.count_nonzero(mask[t.slice])), layer_count(density, t.size)
        if kept != expected:
            raise ValueError(f"the client's mask keeps {kept} weights of {t.name}; FedDST keeps {expected}")


class FedDSTHooks(TrainingHooks):
    """A readjustment round on a client: masked local steps summing g, then the RigL step."""

    statistic = GradientStatistic.SUM

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.gradient: np.ndarray | None = None

    def train(
        self,
        model: nn.Module,
        layout: ModelLayout,
        mask: np.ndarray,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        steps: int,
        sgd: SgdSettings,
        loss_fn: LossFn,
        statistic: GradientStatistic = GradientStatistic.NONE,
    ) -> LocalResult:
        result = train_locally(
            model, layout, mask, batches, steps, sgd, loss_fn, GradientStatistic.SUM, hooks=self
        )
        self.gradient = result.statistic
        return result

    def client_mask(self, model: nn.Module, layout: ModelLayout, mask: np.ndarray) -> np.ndarray:
        if self.gradient is None:
            raise RuntimeError("FedDST's client mask needs the round's gradient: train first")
        floats, _ = layout.flatten(model.state_dict())
        own = readjusted_mask(floats, self.gradient, mask, layout, self.fraction)
        zero_pruned(model, layout, own)  # dropped weights go to zero; grown ones are zero already
        return own


class FedDST(DensityPruning):
    """Sparse from round 1; clients readjust masks RigL-style every Delta R rounds; the server votes."""

    name = "feddst"
    Settings = FedDSTSettings
    settings: FedDSTSettings

    def initial_mask(self, floats: np.ndarray, mask: np.ndarray, data: InitialData | None) -> InitialPruning:
        layout = self.env.layout
        scores = random_scores(self.rng(0), layout.num_floats)
        new_mask = keep_top(scores, layout, self.settings.target_density, "layer")
        return InitialPruning(mask=new_mask, floats=sparse_fan_in_scaled(floats, new_mask, layout))

    def round_plan(self, server_round: int) -> RoundPlan:
        if not is_readjustment_round(server_round, self.settings, self.env.num_rounds):
            return RoundPlan()
        fraction = readjust_fraction(server_round, self.settings, self.env.num_rounds)
        return RoundPlan(client_config={"phase": READJUST, "fraction": fraction}, client_masks=True)

    def check_report(self, report: ClientReport) -> None:
        super().check_report(report)
        if report.mask is not None:
            check_layer_counts(report.mask, self.env.layout, self.settings.target_density)

    def merge_clients(self, update: RoundUpdate) -> np.ndarray | None:
        masks = [r.mask for r in update.reports if r.mask is not None]
        if not masks:
            return None
        weights = np.array([r.weight for r in update.reports if r.mask is not None], dtype=np.float64)
        weights *= median_clip_scales(weights, self.env.statistic_factor)
        magnitudes = np.abs(update.floats.astype(np.float64))
        return vote_mask(masks, weights, magnitudes, self.env.layout, self.settings.target_density)

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        if client_config.get("phase") == READJUST:
            return FedDSTHooks(float(client_config["fraction"]))  # type: ignore[arg-type]
        return TrainingHooks()
