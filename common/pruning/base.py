"""The one interface every pruning method implements.

A method is a small class with server-side and client-side hooks; the strategy
and the client call only these, so adding a method is one file plus one line in
``common/pruning/__init__.py``:

* :meth:`PruningMethod.initial_mask` - the mask before round 1 (optionally
  computed from one client's data, on whichever side holds it);
* :meth:`PruningMethod.round_plan` - what the clients do in a round (whether they
  compute an importance statistic and upload it, method-specific settings);
* :meth:`PruningMethod.training_hooks` - client-side behaviour during local steps;
* :meth:`PruningMethod.reconfigure` - the new global mask from the aggregate.

Masks are flat bool vectors over a :class:`~common.layout.ModelLayout`'s float
state, True at every non-prunable position. Each method's settings are a
:class:`~common.settings.Section` under ``pruning.<name>``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from collections.abc import Mapping
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


@dataclass(frozen=True)
class RoundPlan:
    """What a method asks of the clients in one round."""

    importance: ImportanceRequest = ImportanceRequest.OFF
    client_config: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodEnv:
    """Run facts a method may read, identical on the server and the clients."""

    layout: ModelLayout
    num_rounds: int
    local_steps: int
    full_participation: bool
    seed: int


@dataclass(frozen=True)
class InitialDataSpec:
    """Where initial pruning runs and on how much of which client's data."""

    where: str = "server"  # "server" (simulation: the server loads the data) or "client"
    partition_id: int = 0
    batches: int = 10
    batch_size: int = 20


@dataclass
class InitialData:
    """What initial pruning works on: a model and fixed batches of one client's data."""

    model: nn.Module
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    sgd: SgdSettings
    loss_fn: LossFn
    num_classes: int
    cost: CostModel


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

        None by default: a method whose decisions are functions of the round, the
        model, the mask and the importance (PruneFL) keeps nothing of its own.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Scalar]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")

    # -- client side ---------------------------------------------------------------
    def training_hooks(self, client_config: Mapping[str, Scalar]) -> TrainingHooks:
        """Client-side hooks for one round of local training."""
        return TrainingHooks()


def settings_for(method: type[PruningMethod], flat: Mapping[str, object]) -> MethodSettings:
    """Parse ``method``'s settings from flat keys (its defaults where absent)."""
    return method.Settings.from_flat(flat)


def settings_dict(settings: MethodSettings) -> dict[str, Scalar]:
    return settings.to_flat() if dataclasses.fields(settings) else {}
