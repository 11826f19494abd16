"""What a run tells whoever shows its progress (``fedprune simulate``'s live view, the bench).

The ServerApp calls a :class:`RunProgress` at four moments; every method here does
nothing, so an observer overrides only what it shows. Observers only observe: the
run's results never depend on them. Library code does not print; a display is an
observer that does.
"""

from __future__ import annotations

from common.pruning import InitialPruningStep

from .results import RoundRow


class RunProgress:
    """Observer of one run; subclass and override what you show."""

    def run_started(self, rounds: int, resumed_after: int | None) -> None:
        """The run will end after round ``rounds``; ``resumed_after`` is the checkpoint's round, if any."""

    def initial_pruning_started(self, where: str, partition_id: int) -> None:
        """Initial pruning on one client's data starts, on the ``"server"`` or a ``"client"``."""

    def initial_pruning_step(self, step: InitialPruningStep) -> None:
        """One round of an iterative initial pruning (PruneFL's) ended; run on the server only."""

    def round_ended(self, row: RoundRow) -> None:
        """Round ``row.round`` ended and its row was written (round 0: after initial pruning)."""
