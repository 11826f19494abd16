"""Density schedules: pure functions from the round to the target density.

After TF Model Optimization's pruning schedules (``ConstantSparsity``,
``PolynomialDecay``), written for densities and FL rounds. A schedule is a frozen
dataclass validated on creation; :meth:`DensitySchedule.density_at` is a pure
function of the round, :meth:`DensitySchedule.updates_at` says whether the mask is
recomputed after that round (round 0 = the initial mask, before round 1), and
``get_config`` / ``from_config`` round-trip.

* ``one-shot``: density 1 before ``begin``, ``target`` from ``begin`` on; one update.
* ``polynomial`` (TF-MOT's ``PolynomialDecay``):
  d(t) = d_f + (d_i - d_f) (1 - (t - b) / (e - b)) ** power   for b <= t <= e,
  updated every ``frequency`` rounds from b, and at e.
* ``geometric``: d(t) = d_i (d_f / d_i) ** ((t - b) / (e - b)), the same update
  rounds; with even steps every update removes the same fraction of the remaining
  weights (iterative magnitude pruning as Han et al. and the lottery-ticket work run it).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar


class DensitySchedule(ABC):
    """Target density per round; subclasses are frozen dataclasses."""

    name: ClassVar[str]

    @abstractmethod
    def density_at(self, server_round: int) -> float:
        """The target density after ``server_round`` (round 0: the initial mask)."""

    @abstractmethod
    def updates_at(self, server_round: int) -> bool:
        """True if the mask is recomputed after ``server_round``."""

    def get_config(self) -> dict[str, float | int | str]:
        return {"schedule": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    @staticmethod
    def from_config(config: dict[str, float | int | str]) -> DensitySchedule:
        fields = dict(config)
        kind = SCHEDULES[str(fields.pop("schedule"))]
        return kind(**fields)  # type: ignore[arg-type]


def _check_density(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} = {value} must be a density in (0, 1]")


@dataclass(frozen=True)
class OneShot(DensitySchedule):
    name: ClassVar[str] = "one-shot"

    target: float
    begin: int = 0

    def __post_init__(self) -> None:
        _check_density("target", self.target)
        if self.begin < 0:
            raise ValueError(f"begin = {self.begin} must be a round >= 0")

    def density_at(self, server_round: int) -> float:
        return 1.0 if server_round < self.begin else self.target

    def updates_at(self, server_round: int) -> bool:
        return server_round == self.begin


@dataclass(frozen=True)
class _Ramp(DensitySchedule):
    """From ``initial`` at round ``begin`` to ``target`` at round ``end``, every ``frequency`` rounds."""

    target: float
    begin: int
    end: int
    frequency: int = 1
    initial: float = 1.0

    def __post_init__(self) -> None:
        _check_density("target", self.target)
        _check_density("initial", self.initial)
        if not 0 <= self.begin < self.end:
            raise ValueError(f"rounds begin = {self.begin}, end = {self.end} need 0 <= begin < end")
        if self.frequency < 1:
            raise ValueError(f"frequency = {self.frequency} must be >= 1")

    def progress(self, server_round: int) -> float:
        t = min(max(server_round, self.begin), self.end)
        return (t - self.begin) / (self.end - self.begin)

    def updates_at(self, server_round: int) -> bool:
        inside = self.begin <= server_round <= self.end
        return inside and ((server_round - self.begin) % self.frequency == 0 or server_round == self.end)


@dataclass(frozen=True)
class Polynomial(_Ramp):
    name: ClassVar[str] = "polynomial"

    power: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.power <= 0:
            raise ValueError(f"power = {self.power} must be > 0")

    def density_at(self, server_round: int) -> float:
        remaining = 1.0 - self.progress(server_round)
        return self.target + (self.initial - self.target) * remaining**self.power


@dataclass(frozen=True)
class Geometric(_Ramp):
    name: ClassVar[str] = "geometric"

    def density_at(self, server_round: int) -> float:
        return self.initial * (self.target / self.initial) ** self.progress(server_round)


SCHEDULES: dict[str, type[DensitySchedule]] = {
    OneShot.name: OneShot,
    Polynomial.name: Polynomial,
    Geometric.name: Geometric,
}
