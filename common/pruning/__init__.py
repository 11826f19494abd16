"""Pruning methods, one file each, registered by name in ``METHODS``.

To add a method: write ``common/pruning/<name>.py`` with a
:class:`~common.pruning.base.PruningMethod` subclass (and its ``Settings`` section
under ``pruning.<name>``), then add one line below.
"""

from __future__ import annotations

from .base import (
    ClientReport,
    InitialData,
    InitialDataSpec,
    InitialPruning,
    InitialPruningStep,
    MethodEnv,
    MethodSettings,
    PruningMethod,
    RoundPlan,
    RoundUpdate,
)
from .droppruning import DropPruning
from .feddst import FedDST
from .gibbs import GibbsPruning
from .l1filter import L1FilterPruning
from .magnitude import MagnitudePruning
from .none import NoPruning
from .prunefl import PruneFL
from .random import RandomPruning
from .rethinking import Rethinking
from .snip import Snip
from .tgf import TrainableGates

METHODS: dict[str, type[PruningMethod]] = {
    NoPruning.name: NoPruning,
    RandomPruning.name: RandomPruning,
    MagnitudePruning.name: MagnitudePruning,
    Snip.name: Snip,
    PruneFL.name: PruneFL,
    DropPruning.name: DropPruning,
    GibbsPruning.name: GibbsPruning,
    TrainableGates.name: TrainableGates,
    L1FilterPruning.name: L1FilterPruning,
    Rethinking.name: Rethinking,
    FedDST.name: FedDST,
}

__all__ = [
    "METHODS",
    "ClientReport",
    "InitialData",
    "InitialPruningStep",
    "InitialDataSpec",
    "InitialPruning",
    "MethodEnv",
    "MethodSettings",
    "PruningMethod",
    "RoundPlan",
    "RoundUpdate",
]
