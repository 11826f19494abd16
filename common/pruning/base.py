"""The one interface every pruning method implements.

A method is a small class with server-side and client-side hooks; the strategy
and the client call only these and carry what a method sends between its two
sides as opaque, validated records. Adding a method is one file plus one line in
``common/pruning/__init__.py`` (and its defaults in ``pyproject.toml``):

* :meth:`PruningMethod.initial_mask` - the mask before round 1 (optionally
  computed from one client's data, on whichever side holds it);
* :meth:`PruningMethod.round_plan` - what the clients do in a round (settings
  sent as ``method.<key>`` entries, whether they choose their own masks), and
  :meth:`PruningMethod.task_entries` - entries of the method's own that every
  task message carries under names the method chooses;
* :meth:`PruningMethod.training_hooks` - client-side behaviour during local steps
  (see :class:`~common.training.TrainingHooks`: a sampled or gated forward, a
  penalty, the client's own mask, a gradient statistic and the vector uploaded
  from it, extra statistics, a physically smaller model);
* :meth:`PruningMethod.upload_length` / :meth:`PruningMethod.check_report` - what
  the server accepts from a client: the length of the uploaded statistic vector,
  and whether a reply's statistics are usable;
* :meth:`PruningMethod.merge_clients` - what the server makes of a round's
  accepted replies (their own masks, uploaded vectors, extra statistics and
  updates), after aggregation;
* :meth:`PruningMethod.reconfigure` - the new global mask from the aggregate and
  the statistics the method merged;
* :meth:`PruningMethod.clients_hold_state` / :meth:`PruningMethod.state_dict` -
  what checkpoints need: whether the nodes hold statistics the server lacks after
  a round, and the method's own server-side state.

Every hook has a default that leaves the dense FedAvg behaviour unchanged, so a
method overrides only what it changes. Randomness is a pure function of the run's
seed and the round (:meth:`PruningMethod.rng`), so a method holds no RNG state and a
run is reproducible from its configuration; the statistics a method keeps between
rounds (PruneFL's importance, TGF's gate values) are its own, exposed by
:meth:`PruningMethod.state_dict` for checkpoints.

Masks are flat bool vectors over a :class:`~common.layout.ModelLayout`'s float
state, True at every non-prunable position. Each method's settings are a
:class:`~common.settings.Section` under ``pruning.<name>``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..budget import keep_fraction, kept_counts, magnitude_submask
from ..cost_model import CostModel
from ..layout import ModelLayout
from ..settings import Scalar, Section
from ..training import LossFn, SgdSettings, TrainingHooks
from ..wire.sparse import SparsePlan

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

    client_config: Mapping[str, ConfigValue] = field(default_factory=dict)
    client_masks: bool = False


@dataclass(frozen=True)
class ClientReport:
    """What one training reply tells the method: its weight, mask, update and statistics.

    ``values`` are the client's trained values at its mask (the received one unless
    ``mask`` is set), whole, as the server decoded them; ``upload`` is the statistic
    vector the client's hooks uploaded (:meth:`~common.training.TrainingHooks.upload`),
    of :meth:`PruningMethod.upload_length`, finite, or None.
    """

    partition_id: int
    weight: float
    mask: np.ndarray | None  # the client's own mask, when the plan asked for it
    extras: Mapping[str, float | list[float]]  # the reply's ``method.<key>`` metrics
    values: np.ndarray | None = None
    samples: int = 0  # samples the client processed this round
    upload: np.ndarray | None = None
    node_id: int = -1


@dataclass(frozen=True)
class RoundUpdate:
    """A round's accepted replies, after aggregation, as :meth:`PruningMethod.merge_clients` sees them.

    ``floats`` are the aggregated weights, ``mask`` the mask the round trained
    under, ``sent_values`` the kept values the clients started from (exactly as
    the server holds them) and ``lr`` the round's learning rate. ``reports`` are
    in partition order.
    """

    server_round: int
    floats: np.ndarray
    mask: np.ndarray
    sent_values: np.ndarray
    lr: float
    reports: list[ClientReport]


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
    plain_sgd: bool = True  # no momentum nor weight decay: an update is exactly -lr * sum of gradients
    aggregation: str = "mean"  # federation.aggregation: robust rules bound what updates imply too


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


@dataclass(frozen=True)
class DensitySettings(MethodSettings):
    """Settings of a method told the density it ends at: the kept fraction of prunable weights."""

    target_density: float = 0.1

    def validate(self) -> None:
        self.require("target_density", 0 < self.target_density <= 1, "a density in (0, 1]")


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

    def task_entries(self, server_round: int, training: bool) -> dict[str, ConfigValue]:
        """Entries every task message of the round carries, under the method's own names.

        ``training`` is False for messages that train nothing (describe, evaluate,
        initial pruning). The client's hooks receive them with the ``method.<key>``
        entries of :meth:`round_plan`. Empty by default.
        """
        return {}

    def upload_length(self, server_round: int, mask: np.ndarray) -> int | None:
        """Length of the statistic vector each client uploads in ``server_round`` (None: none).

        ``mask`` is the mask the round trains under. A reply with another length,
        or with a vector when None, is rejected as ``bad-payload``.
        """
        return None

    def upload_plan(self, server_round: int, mask: np.ndarray) -> SparsePlan | None:
        """Segments in which the round's statistic vector comes sparse (None: it comes whole).

        The clients' :meth:`~common.training.TrainingHooks.upload_plan` must give the
        same plan; a reply that carries more entries than a segment's limit, or the
        vector whole, is rejected as ``bad-payload``.
        """
        return None

    def check_report(self, report: ClientReport) -> None:
        """Raise ValueError if a reply's statistics are unusable (the reply is rejected).

        Called for every reply that is otherwise well-formed, before aggregation; by
        default any extra statistic is unexpected.
        """
        if report.extras:
            raise ValueError(f"unexpected method statistics {sorted(report.extras)}")

    def merge_clients(self, update: RoundUpdate) -> np.ndarray | None:
        """Merge a round's statistics; return the new global mask from them, or None to keep it.

        Called after aggregation, before :meth:`reconfigure`, and only for a round
        whose aggregate was used. The default keeps the mask, or, when the clients
        chose their own masks, takes their union (a weight survives while any client
        keeps it).
        """
        masks = [r.mask for r in update.reports if r.mask is not None]
        if not masks:
            return None
        return np.logical_or.reduce(masks)

    def reconfigure(
        self,
        server_round: int,
        floats: np.ndarray,
        mask: np.ndarray,
        cost: CostModel,
    ) -> np.ndarray | None:
        """Return a new mask after ``server_round``'s aggregation, or None to keep it.

        ``floats`` are the aggregated weights, ``mask`` the mask in force (or the one
        :meth:`merge_clients` returned); statistics the method merged are its own.
        """
        return None

    def clients_hold_state(self, server_round: int) -> bool:
        """True if after ``server_round`` the nodes hold statistics the server lacks.

        A restart would lose them (a resumed run's nodes start empty), so a
        checkpoint due after such a round waits for the next one that is not. False
        by default.
        """
        return False

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray | Scalar]:
        """The method's own server-side state for a checkpoint (arrays and scalars).

        Empty by default: a method whose decisions are functions of the round, the
        model and the mask (magnitude pruning) keeps nothing of its own.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Scalar]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")

    # -- client side ---------------------------------------------------------------
    # -- per-client round budgets (common/budget.py) ----------------------------------------
    def budget_fraction(self, cost: CostModel, mask: np.ndarray, budget: float) -> float:
        """The fraction s of ``mask`` a client on ``cost``'s device can afford in ``budget`` seconds.

        Unstructured: s = (B - T0 - (c_comm / 2) |M|) / sum_l (c_comm / 2 + E comp_l) |M_l|.
        """
        return keep_fraction(cost, self.env.layout.kept_per_layer(mask), budget)

    def budget_counts(self, mask: np.ndarray, fraction: float) -> np.ndarray:
        """Kept weights per prunable layer of the sub-mask at ``fraction`` (what a client must send)."""
        return kept_counts(self.env.layout.kept_per_layer(mask), fraction)

    def budget_submask(self, floats: np.ndarray, mask: np.ndarray, fraction: float) -> np.ndarray:
        """The sub-mask S a budgeted client trains: per layer the largest-magnitude kept weights."""
        return magnitude_submask(self.env.layout, floats, mask, fraction)

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        """Client-side hooks for one round of local training; ``seed`` is this client's, this round's."""
        return TrainingHooks()


class DensityPruning(PruningMethod):
    """Base of a method that ends at ``pruning.<name>.target-density`` by construction."""

    settings: DensitySettings

    def target_density(self) -> float | None:
        return self.settings.target_density


def settings_dict(settings: MethodSettings) -> dict[str, Scalar]:
    return settings.to_flat() if dataclasses.fields(settings) else {}
