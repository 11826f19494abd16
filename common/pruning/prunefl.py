"""PruneFL: initial pruning on one client, then adaptive pruning during FedAvg.

Jiang, Wang, Valls, Ko, Lee, Leung, Tassiulas, "Model Pruning Enables Efficient
Federated Learning on Edge Devices", IEEE TNNLS 2022 (arXiv 1909.12326).

* **Initial pruning (IP)**: on ``ip-batches`` fixed batches of one client's data,
  one IP round is one pass over them with a masked forward, accumulating
  S = sum_t g_t ** 2. Once training accuracy on those batches reaches
  ``ip-accuracy-factor / num_classes`` (checked every ``ip-eval-interval`` rounds),
  the mask is reconfigured every ``ip-reconfig-interval`` rounds with the constant
  removal cap dtp0; IP stops when |d_t / d_{t-1} - 1| <= ``ip-stability`` for
  ``ip-stable-count`` reconfigurations in a row, or after ``ip-max-rounds``.
* **FL stage**: clients keep S_c += n_c * (sum_t g_t) ** 2 and the server
  reconfigures every ΔR = ``reconfig-interval`` rounds on the aggregated weights
  with S = sum_c S_c and dtp(t) = dtp0 * 0.5 ** (t / half-life).

Both stages call :func:`~common.pruning.reconfiguration.reconfigure_mask`. The
FL stage's statistic, what clients compute and upload and how the server merges
it, is in :mod:`common.pruning.prunefl_importance`: with every client in every
round, clients accumulate S_c locally and upload it only in reconfiguration
rounds, as the authors do; with client sampling, each participant uploads its
statistic in the round it trains, so that no per-client accumulator of model size
outlives a round.

The upload is exact by default (``importance-upload = "exact"``: every pruned
position, in ``wire.importance``'s format). ``"top"`` sends per layer only the
``min(p_l, ceil(f B))`` largest entries (:mod:`common.pruning.prunefl_top`: B
bounds the pruned weights one reconfiguration can re-add), as Golomb-coded index
gaps + bfloat16, the rest implied zero; the greedy's decision is then the same
under the conditions stated there and approximate otherwise, so ``exact`` stays
the default (``docs/methods.md`` has the measured agreement).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from ..cost_model import CostModel
from ..layout import ModelLayout
from ..settings import Scalar
from ..training import GradientStatistic, TrainingHooks, masked_accuracy, train_locally
from ..wire.sparse import SparsePlan
from .base import (
    ClientReport,
    ConfigValue,
    InitialData,
    InitialDataSpec,
    InitialPruning,
    InitialPruningStep,
    MethodEnv,
    MethodSettings,
    PruningMethod,
    RoundUpdate,
)
from .prunefl_importance import (
    ImportanceAccumulator,
    Request,
    client_hooks,
    statistic_positions,
    task_entries,
)
from .prunefl_top import TopRule, segment_plan
from .reconfiguration import reconfigure_mask, removal_cap


@dataclass(frozen=True)
class PruneFLSettings(MethodSettings):
    """PruneFL's settings; the authors' FEMNIST values are in the comments."""

    PREFIX = "pruning.prunefl"

    reconfig_interval: int = 10  # ΔR, rounds between reconfigurations (50)
    max_removal: float = 0.3  # dtp0, largest fraction of a layer's weights removed per call (0.3)
    removal_half_life: float = 10000.0  # rounds for dtp to halve (10000)
    max_density: float = 1.0  # optional cap on the kept fraction (none)
    initial_pruning: Literal["server", "client", "off"] = "server"
    ip_client: int = 0  # partition id whose data initial pruning uses
    ip_batches: int = 10  # fixed batches (10)
    ip_batch_size: int = 20  # samples per batch (20)
    ip_max_rounds: int = 1000  # (1000)
    ip_reconfig_interval: int = 50  # (50)
    ip_eval_interval: int = 10  # (10)
    ip_accuracy_factor: float = 1.5  # start once accuracy >= factor / classes (1.5)
    ip_stability: float = 0.1  # relative density change counted as stable (0.1)
    ip_stable_count: int = 5  # stable reconfigurations in a row to stop (5)
    importance_upload: Literal["exact", "top"] = "exact"  # all pruned positions, or each layer's top
    importance_top_growth: float = 0.5  # g: top's bound assumes the model grows by at most this fraction
    importance_top_factor: float = 2.0  # f >= 1: each client sends f times the bound per layer
    importance_top_values: Literal["bfloat16", "float32"] = "bfloat16"  # the sent entries' format

    def validate(self) -> None:
        for name in (
            "reconfig_interval",
            "ip_batches",
            "ip_batch_size",
            "ip_max_rounds",
            "ip_reconfig_interval",
            "ip_eval_interval",
            "ip_stable_count",
        ):
            self.require(name, getattr(self, name) >= 1, "an integer >= 1")
        self.require("max_removal", 0.0 <= self.max_removal < 1.0, "a number in [0, 1)")
        self.require("removal_half_life", self.removal_half_life > 0, "a number > 0 (rounds)")
        self.require("max_density", 0.0 < self.max_density <= 1.0, "a density in (0, 1]")
        self.require("ip_client", self.ip_client >= 0, "a partition id >= 0")
        self.require("ip_accuracy_factor", self.ip_accuracy_factor >= 0, "a number >= 0")
        self.require("ip_stability", self.ip_stability >= 0, "a number >= 0")
        self.require("importance_top_growth", self.importance_top_growth >= 0, "a number >= 0")
        self.require("importance_top_factor", self.importance_top_factor >= 1, "a number >= 1")


class PruneFL(PruningMethod):
    """Adaptive pruning with PruneFL's importance-per-time greedy.

    The server side owns the importance sum S (an
    :class:`~common.pruning.prunefl_importance.ImportanceAccumulator`), merged from
    every accepted reply and taken by each reconfiguration.
    """

    name = "prunefl"
    Settings = PruneFLSettings
    settings: PruneFLSettings

    def __init__(self, settings: PruneFLSettings, env: MethodEnv) -> None:
        super().__init__(settings, env)
        if settings.importance_upload == "top" and not env.plain_sgd:
            raise ValueError(
                "pruning.prunefl.importance-upload = 'top' needs plain SGD (train.momentum = 0 and "
                "train.weight-decay = 0): otherwise the kept positions' importance travels too and must "
                "be exact; use 'exact'"
            )

    @cached_property
    def importance(self) -> ImportanceAccumulator:
        """S over the model, allocated when first merged, read or restored (not on the clients)."""
        return ImportanceAccumulator(self.env.layout)

    def needs_initial_data(self) -> bool:
        return self.settings.initial_pruning != "off"

    def initial_data_spec(self) -> InitialDataSpec:
        s = self.settings
        return InitialDataSpec(s.initial_pruning, s.ip_client, s.ip_batches, s.ip_batch_size)

    def _max_kept(self, layout: ModelLayout) -> int | None:
        if self.settings.max_density >= 1.0:
            return None
        return int(self.settings.max_density * layout.num_prunable)

    def is_reconfiguration_round(self, server_round: int) -> bool:
        return server_round % self.settings.reconfig_interval == 0

    def request(self, server_round: int) -> Request:
        """What the round's clients do with S_c: keep it on the node, or upload their sum."""
        if self.env.full_participation and not self.is_reconfiguration_round(server_round):
            return "accumulate"
        return "upload"

    # -- the statistic: task entries, uploads, merging, checkpoints -----------------------------
    def next_reconfiguration(self, server_round: int) -> int:
        """The first reconfiguration round >= ``server_round`` (the one its uploads serve)."""
        interval = self.settings.reconfig_interval
        return math.ceil(server_round / interval) * interval

    def top_rule(self, server_round: int) -> TopRule | None:
        """The ``top`` upload's bound inputs for an upload round, None for the exact upload."""
        s = self.settings
        if s.importance_upload != "top" or self.request(server_round) != "upload":
            return None
        dtp = removal_cap(self.next_reconfiguration(server_round), s.max_removal, s.removal_half_life)
        max_kept = self._max_kept(self.env.layout)
        return TopRule(
            dtp, s.importance_top_growth, s.importance_top_factor, max_kept or 0, s.importance_top_values
        )

    def task_entries(self, server_round: int, training: bool) -> dict[str, ConfigValue]:
        if not training:
            return task_entries("off", self.env.plain_sgd)
        return task_entries(self.request(server_round), self.env.plain_sgd, self.top_rule(server_round))

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        return client_hooks(client_config)

    def upload_length(self, server_round: int, mask: np.ndarray) -> int | None:
        if self.request(server_round) != "upload":
            return None
        return len(statistic_positions(self.env.layout, mask, self.env.plain_sgd))

    def upload_plan(self, server_round: int, mask: np.ndarray) -> SparsePlan | None:
        rule = self.top_rule(server_round)
        return None if rule is None else segment_plan(self.env.layout, mask, rule)

    def check_report(self, report: ClientReport) -> None:
        super().check_report(report)
        if report.upload is not None and bool((report.upload < 0).any()):
            raise ValueError("the uploaded importance holds negative values; n * G ** 2 is >= 0")

    def merge_clients(self, update: RoundUpdate) -> np.ndarray | None:
        env = self.env
        self.importance.merge(update, env.plain_sgd, env.aggregation != "mean", env.statistic_factor)
        return None

    def clients_hold_state(self, server_round: int) -> bool:
        return self.request(server_round) == "accumulate"

    def state_dict(self) -> dict[str, np.ndarray | Scalar]:
        """The server's importance sum S (the clients' sums are never checkpointed)."""
        state = self.importance.state_dict()
        return {"importance": state["values"], "contributions": state["contributions"]}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Scalar]) -> None:
        if set(state) != {"importance", "contributions"}:
            raise ValueError(f"a PruneFL checkpoint holds its importance sum, not {sorted(state)}")
        self.importance.load_state_dict(
            {"values": state["importance"], "contributions": state["contributions"]}
        )

    # -- reconfiguration -------------------------------------------------------------------------
    def reconfigure(
        self,
        server_round: int,
        floats: np.ndarray,
        mask: np.ndarray,
        cost: CostModel,
    ) -> np.ndarray | None:
        if not self.is_reconfiguration_round(server_round):
            return None
        dtp = removal_cap(server_round, self.settings.max_removal, self.settings.removal_half_life)
        return reconfigure_mask(
            floats,
            mask,
            self.importance.take(),
            self.env.layout,
            cost.coefficients(),
            cost.constant,
            dtp,
            self._max_kept(self.env.layout),
        )

    def initial_mask(self, floats: np.ndarray, mask: np.ndarray, data: InitialData | None) -> InitialPruning:
        if self.settings.initial_pruning == "off":
            return InitialPruning(mask=mask.copy())
        if data is None:
            raise ValueError("PruneFL's initial pruning needs one client's batches")
        return run_initial_pruning(
            self.settings, self.env.layout, mask, data, self._max_kept(self.env.layout)
        )


def run_initial_pruning(
    settings: PruneFLSettings,
    layout: ModelLayout,
    mask: np.ndarray,
    data: InitialData,
    max_kept: int | None,
) -> InitialPruning:
    """PruneFL's initial pruning stage on fixed batches (see the module docstring)."""
    model, s = data.model, settings
    coefficients, constant = data.cost.coefficients(), data.cost.constant
    target_accuracy = s.ip_accuracy_factor / data.num_classes
    importance = np.zeros(layout.num_floats, dtype=np.float64)
    densities = [layout.density(mask)]
    start_round: int | None = None
    stable: list[bool] = []
    stop_reason = "max-rounds"
    ip_round = 0
    modelled_seconds = 0.0
    accuracy, measured_at = float("nan"), 0
    for ip_round in range(1, s.ip_max_rounds + 1):
        if start_round is None and (ip_round - 1) % s.ip_eval_interval == 0:
            accuracy, measured_at = masked_accuracy(model, layout, mask, data.batches), ip_round
            if accuracy >= target_accuracy:
                start_round = ip_round
        result = train_locally(
            model,
            layout,
            mask,
            iter(data.batches),
            len(data.batches),
            data.sgd,
            data.loss_fn,
            GradientStatistic.SUM_OF_SQUARES,
            masked_forward=True,
        )
        assert result.statistic is not None
        importance += result.statistic
        modelled_seconds += data.cost.compute_time(layout.kept_per_layer(mask), len(data.batches))
        if start_round is not None and (ip_round - start_round) % s.ip_reconfig_interval == 0:
            floats = layout.flatten(model.state_dict())[0]
            mask = reconfigure_mask(
                floats, mask, importance, layout, coefficients, constant, s.max_removal, max_kept
            )
            importance[:] = 0.0
            density = layout.density(mask)
            if densities[-1] > 0:
                stable.append(abs(density / densities[-1] - 1.0) <= s.ip_stability)
            densities.append(density)
            if len(stable) >= s.ip_stable_count and all(stable[-s.ip_stable_count :]):
                stop_reason = "stable"
        if data.on_step is not None:
            gate_passed = start_round is not None
            data.on_step(
                InitialPruningStep(
                    ip_round,
                    s.ip_max_rounds,
                    densities[-1],
                    accuracy,
                    measured_at,
                    gate_passed,
                    len(densities) - 1,
                )
            )
        if stop_reason == "stable":
            break
    floats = layout.flatten(model.state_dict())[0]
    return InitialPruning(
        mask=mask,
        floats=floats,
        iterations=ip_round * len(data.batches),
        log={
            "rounds": ip_round,
            "reconfigurations": len(densities) - 1,
            "started-at-round": start_round if start_round is not None else -1,
            "stop-reason": stop_reason if start_round is not None else "accuracy-gate-not-reached",
            "densities": densities,
            "modelled-seconds": modelled_seconds,
        },
    )
