"""Magnitude pruning, one-shot or iterative, per layer or global.

Han, Pool, Tran and Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015; the iterative baseline of PruneFL (Jiang et al.,
TNNLS 2022: layer-wise steps over the first half of training). After each update
round t of the schedule, the server keeps the weights of largest |w| of the
aggregated model:

    M_{t} = top_{d(t)} |w_t|   among the weights kept in M_{t-1}

with d(t) a :mod:`~common.pruning.schedules` schedule (a pure function of the
round), per layer or globally (:mod:`~common.pruning.selection`). A pruned weight
never returns (``torch.nn.utils.prune`` semantics). Round 0 is the initial model:
``one-shot`` with ``begin-round = 0`` prunes at initialisation; ``begin-round = R``
prunes the model trained for R rounds and fine-tunes it for the rest.

``end-round = 0`` ends an iterative schedule at half the run, as PruneFL's baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..cost_model import CostModel
from ..settings import ConfigError, key_name
from .base import DensityPruning, DensitySettings, InitialData, InitialPruning
from .schedules import SCHEDULES, DensitySchedule, Geometric, OneShot, Polynomial
from .selection import SCOPES, Scope, keep_top, magnitude_scores

ScheduleName = Literal["one-shot", "polynomial", "geometric"]


@dataclass(frozen=True)
class ScheduledSettings(DensitySettings):
    """A target density reached by a schedule of rounds (shared by schedule-driven methods)."""

    schedule: ScheduleName = "one-shot"
    begin_round: int = 0  # one-shot: the pruning round; iterative: the first pruning round
    end_round: int = 0  # iterative: the round the target is reached (0 = half the run)
    frequency: int = 1  # iterative: rounds between pruning steps
    power: float = 3.0  # polynomial: exponent (TF-MOT's default 3)

    def validate(self) -> None:
        super().validate()
        self.require("schedule", self.schedule in SCHEDULES, f"one of {list(SCHEDULES)}")
        self.require("begin_round", self.begin_round >= 0, "a round >= 0 (0 = the initial model)")
        self.require("end_round", self.end_round >= 0, "a round >= 0 (0 = half the run)")
        self.require("frequency", self.frequency >= 1, "an integer >= 1")
        self.require("power", self.power > 0, "a number > 0")

    def make_schedule(self, num_rounds: int) -> DensitySchedule:
        """The schedule of this run; ``end-round = 0`` resolves to half of ``num_rounds``."""
        if self.schedule == "one-shot":
            return OneShot(self.target_density, self.begin_round)
        end = self.end_round or max(num_rounds // 2, self.begin_round + 1)
        if end <= self.begin_round:
            raise ConfigError(
                key_name(self.PREFIX, "end_round"),
                self.end_round,
                f"a round after begin-round ({self.begin_round})",
            )
        kind = Polynomial if self.schedule == "polynomial" else Geometric
        extra = {"power": self.power} if kind is Polynomial else {}
        return kind(self.target_density, self.begin_round, end, self.frequency, **extra)


@dataclass(frozen=True)
class MagnitudeSettings(ScheduledSettings):
    PREFIX = "pruning.magnitude"

    scope: Scope = "layer"

    def validate(self) -> None:
        super().validate()
        self.require("scope", self.scope in SCOPES, f"one of {SCOPES}")


class ScheduledPruning(DensityPruning):
    """A method that prunes the server's model to its schedule's density, at the schedule's rounds.

    Round 0 is initialisation (a one-shot schedule at ``begin-round = 0`` prunes
    before training); afterwards :meth:`reconfigure` prunes after each scheduled
    round's aggregation. Subclasses say how: :meth:`prune_to`.
    """

    settings: ScheduledSettings

    @property
    def schedule(self) -> DensitySchedule:
        return self.settings.make_schedule(self.env.num_rounds)

    def prune_to(self, density: float, floats: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The mask at ``density`` for the weights ``floats``, within ``mask``."""
        raise NotImplementedError

    def _scheduled(self, server_round: int, floats: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        if not self.schedule.updates_at(server_round):
            return None
        return self.prune_to(self.schedule.density_at(server_round), floats, mask)

    def initial_mask(self, floats: np.ndarray, mask: np.ndarray, data: InitialData | None) -> InitialPruning:
        new = self._scheduled(0, floats, mask)
        return InitialPruning(mask=mask.copy() if new is None else new)

    def reconfigure(
        self,
        server_round: int,
        floats: np.ndarray,
        mask: np.ndarray,
        cost: CostModel,
    ) -> np.ndarray | None:
        return self._scheduled(server_round, floats, mask)


class MagnitudePruning(ScheduledPruning):
    """Keep the largest |w| at the schedule's density, at the schedule's rounds."""

    name = "magnitude"
    Settings = MagnitudeSettings
    settings: MagnitudeSettings

    def prune_to(self, density: float, floats: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return keep_top(magnitude_scores(floats), self.env.layout, density, self.settings.scope, mask)
