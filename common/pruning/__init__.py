"""Pruning methods, one file each, registered by name in ``METHODS``.

To add a method: write ``common/pruning/<name>.py`` with a
:class:`~common.pruning.base.PruningMethod` subclass (and its ``Settings`` section
under ``pruning.<name>``), then add one line below.
"""

from __future__ import annotations

from .base import (
    ClientReport,
    ImportanceRequest,
    InitialData,
    InitialDataSpec,
    InitialPruning,
    MethodEnv,
    MethodSettings,
    PruningMethod,
    RoundPlan,
)
from .none import NoPruning
from .prunefl import PruneFL

METHODS: dict[str, type[PruningMethod]] = {
    NoPruning.name: NoPruning,
    PruneFL.name: PruneFL,
}

__all__ = [
    "METHODS",
    "ClientReport",
    "ImportanceRequest",
    "InitialData",
    "InitialDataSpec",
    "InitialPruning",
    "MethodEnv",
    "MethodSettings",
    "PruningMethod",
    "RoundPlan",
]
