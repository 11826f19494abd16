"""The one interface every pruning method implements.

A method is a small class with server-side and client-side hooks; the strategy
and the client call only these, so adding a method is one file plus one line in
``common/pruning/__init__.py``:

* :meth:`PruningMethod.initial_mask` - the mask before round 1 (optionally
  computed from one client's data, on whichever side holds it);
* :meth:`PruningMethod.round_plan` - what the clients do in a round (whether they
  compute an importance statistic and upload it, method-specific settings);
* :meth:`PruningMethod.training_hooks` - client-side behaviour during local steps
  (see :class:`~common.training.TrainingHooks`: a sampled or gated forward, a
  penalty, the client's own mask, extra statistics, a physically smaller model);
* :meth:`PruningMethod.check_report` / :meth:`PruningMethod.merge_clients` - what
  the server makes of the clients' own masks and extra statistics, when a round's
  plan asks for them (``RoundPlan.client_masks``);
* :meth:`PruningMethod.reconfigure` - the new global mask from the aggregate.

Every hook has a default that leaves the dense FedAvg behaviour unchanged, so a
method overrides only what it changes. Randomness is a pure function of the run's
seed and the round (:meth:`PruningMethod.rng`), so a method holds no RNG state and a
run is reproducible from its configuration; state a method does keep between rounds
(TGF's gate values) is exposed by :meth:`PruningMethod.state_dict` for checkpoints.

Masks are flat bool vectors over a :class:`~common.layout.ModelLayout`'s float
state, True at every non-prunable position. Each method's settings are a
:class:`~common.settings.Section` under ``pruning.<name>``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..cost_model import CostModel
from ..layout import ModelLayout
from ..settings import Scalar, Section
from ..training import LossFn, SgdSettings, TrainingHooks


class ImportanceRequest(Enum):
    """What a client does with the importance statistic in a round."""

    OFF = "off"  # no statistic is computed
    ACCUMULATE = "accumulate"  # add it to the node's accumulator, upload nothing
    UPLOAD = "upload"  # add it and upload the accumulator, which is then cleared


ConfigValue = Scalar | list[float] | list[int]


@dataclass(frozen=True)
class RoundPlan:
    """What a method asks of the clients in one round.

    ``client_config`` travels in the task message as ``method.<key>`` entries and
    reaches :meth:`PruningMethod.training_hooks`. With ``client_masks`` the clients
    reply with their own mask and the values at it (the strategy then averages each
    position over the clients that kept it and asks :meth:`PruningMethod.merge_clients`
    for the new global mask).
    """

    importance: ImportanceRequest = ImportanceRequest.OFF
    client_config: Mapping[str, ConfigValue] = field(default_factory=dict)
    client_masks: bool = False


@dataclass(frozen=True)
class ClientReport:
    """What one accepted training reply tells the method: its mask, weight and statistics."""

    partition_id: int
    weight: float
    mask: np.ndarray | None  # the client's own mask, when the plan asked for it
    extras: Mapping[str, float | list[float]]  # the reply's ``method.<key>`` metrics


@dataclass(frozen=True)
class MethodEnv:
    """Run facts a method may read, identical on the server and the clients.

    ``model``, ``num_classes`` and ``input_shape`` let a method rebuild the
    architecture (to trace its channel structure or count its FLOPs).
    """

    layout: ModelLayout
    num_rounds: int
    local_steps: int
    full_participation: bool
    seed: int
    model: str = ""
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()
    batch_size: int = 1
    statistic_factor: float = 10.0  # federation.statistic-factor: bound on one client's statistic


@dataclass(frozen=True)
class InitialDataSpec:
    """Where initial pruning runs and on how much of which client's data."""

    where: str = "server"  # "server" (simulation: the server loads the data) or "client"
    partition_id: int = 0
    batches: int = 10
    batch_size: int = 20


@dataclass(frozen=True)
class InitialPruningStep:
    """Where an iterative initial pruning stands after one of its rounds (for progress displays).

    ``accuracy`` is the training accuracy on the fixed batches last measured, before
    IP round ``measured_at``; ``gate_passed`` says whether it has reached the accuracy
    from which on the mask is reconfigured (and accuracy no longer measured).
    """

    ip_round: int
    max_rounds: int
    density: float
    accuracy: float
    measured_at: int
    gate_passed: bool
    reconfigurations: int


@dataclass
class InitialData:
    """What initial pruning works on: a model and fixed batches of one client's data.

    ``on_step``, when set, is told after every round of an iterative initial pruning
    where it stands; it only observes.
    """

    model: nn.Module
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    sgd: SgdSettings
    loss_fn: LossFn
    num_classes: int
    cost: CostModel
    on_step: Callable[[InitialPruningStep], None] | None = None


@dataclass
class InitialPruning:
    """The outcome of :meth:`PruningMethod.initial_mask`.

    ``floats`` holds the model's weights afterwards when the method trained it
    (PruneFL's initial pruning does), else None; ``iterations`` counts the local
    SGD steps it ran, for the modelled time; ``log`` is free-form, for the results.
    """

    mask: np.ndarray
    floats: np.ndarray | None = None
    iterations: int = 0
    log: dict[str, Scalar | list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSettings(Section):
    """Base of a method's settings; a method with none uses it as is."""


class PruningMethod(ABC):
    """Base class: dense behaviour everywhere, so a method overrides only what it changes."""

    name: ClassVar[str]
    Settings: ClassVar[type[MethodSettings]] = MethodSettings

    def __init__(self, settings: MethodSettings, env: MethodEnv) -> None:
        self.settings = settings
        self.env = env

    @classmethod
    def settings_keys(cls) -> list[str]:
        return cls.Settings.keys() if cls.Settings is not MethodSettings else []

    def rng(self, server_round: int, stream: int = 0) -> np.random.Generator:
        """A generator that depends only on the run's seed, the round and ``stream``."""
        return np.random.default_rng([self.env.seed, server_round, stream, 0x5EED])

    def target_density(self) -> float | None:
        """The density of prunable weights the method ends at by construction, if any."""
        return None

    def planned_rounds(self, configured: int) -> int:
        """Rounds the run should last; a method with a compute budget may change it."""
        return configured

    # -- server side ---------------------------------------------------------------
    def needs_initial_data(self) -> bool:
        """True if :meth:`initial_mask` needs ``InitialData`` (one client's batches)."""
        return False

    def initial_data_spec(self) -> InitialDataSpec:
        """Where initial pruning runs and on which data, when it needs data."""
        return InitialDataSpec()

    def initial_mask(self, floats: np.ndarray, mask: np.ndarray, data: InitialData | None) -> InitialPruning:
        """The mask before round 1; by default the dense one."""
        return InitialPruning(mask=mask.copy())

    def round_plan(self, server_round: int) -> RoundPlan:
        """What the clients do in ``server_round``; by default plain masked training."""
        return RoundPlan()

    def check_report(self, extras: Mapping[str, float | list[float]]) -> None:
        """Raise ValueError if a reply's extra statistics are unusable (the reply is rejected)."""
        if extras:
            raise ValueError(f"unexpected method statistics {sorted(extras)}")

    def merge_clients(
        self, server_round: int, floats: np.ndarray, mask: np.ndarray, reports: list[ClientReport]
    ) -> np.ndarray | None:
        """The new global mask from the clients' own masks and statistics, or None to keep it.

        Called after aggregation, before :meth:`reconfigure`; ``floats`` are the
        aggregated weights. The default keeps the mask, or, when the clients chose
        their own masks, takes their union (a weight survives while any client keeps it).
        """
        masks = [r.mask for r in reports if r.mask is not None]
        if not masks:
            return None
        return np.logical_or.reduce(masks)

    def reconfigure(
        self,
        server_round: int,
        floats: np.ndarray,
        mask: np.ndarray,
        importance: np.ndarray | None,
        cost: CostModel,
    ) -> np.ndarray | None:
        """Return a new mask after ``server_round``'s aggregation, or None to keep it."""
        return None

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray | Scalar]:
        """The method's own server-side state for a checkpoint (arrays and scalars).

        Empty by default: a method whose decisions are functions of the round, the
        model, the mask and the importance (PruneFL) keeps nothing of its own.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Scalar]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")

    # -- client side ---------------------------------------------------------------
    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        """Client-side hooks for one round of local training; ``seed`` is this client's, this round's."""
        return TrainingHooks()


def settings_dict(settings: MethodSettings) -> dict[str, Scalar]:
    return settings.to_flat() if dataclasses.fields(settings) else {}
