"""Each round's row: what was measured and modelled, written to the results as the round ends.

The strategy fills a :class:`~server.results.RoundRow` with what only it knows
(clients, failures, rejections, losses, the modelled round time, accuracy);
:meth:`RoundRecorder.close` completes it as the round ends, from the
communication log (measured bytes by category, the bound, the dense size) and the
clocks (wall time, elapsed, modelled elapsed); :meth:`RoundRecorder.write` appends
it with the round's layers and phases to the results folder, tells the progress
observer, and logs the round's line. Between the two the server's evaluation of
the round may still be running (``evaluate.overlap``). It owns the rows and the
clocks, and checkpoints them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
from flwr.supercore import log

from common.layout import ModelLayout

from .communication import CommunicationLog
from .global_model import GlobalModel
from .phases import ClientPhases, PhaseClock, PhaseRow, round_phases
from .progress import RunProgress
from .results import ResultsWriter, RoundRow


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


@dataclass(frozen=True)
class ClosedRound:
    """A round's completed row with its layers and phases, as :meth:`RoundRecorder.close` took them."""

    row: RoundRow  # its accuracy and loss may still be filled in before it is written
    layout: ModelLayout
    kept_per_layer: np.ndarray
    phases: PhaseRow | None  # None for round 0 (initial pruning has no round phases)


class RoundRecorder:
    """The run's rows and clocks; :meth:`close` ends a round, :meth:`write` writes it."""

    def __init__(
        self,
        rounds: int,
        comm: CommunicationLog,
        results: ResultsWriter | None,
        progress: RunProgress | None = None,
    ) -> None:
        self.rounds = rounds
        self.comm = comm
        self.results = results
        self.progress = progress or RunProgress()
        self.rows: list[RoundRow] = []
        self.run_started = time.monotonic()
        self.round_started = time.monotonic()
        self.modelled_elapsed = 0.0

    def start_round(self) -> None:
        self.round_started = time.monotonic()

    def close(
        self,
        row: RoundRow,
        model: GlobalModel,
        clock: PhaseClock,
        client_phases: list[ClientPhases],
    ) -> ClosedRound:
        """Complete ``row`` (bytes, bound, clocks, density) as the round ends; :meth:`write` writes it.

        Everything is taken now, from the round's traffic, clocks and model; only
        the server's evaluation (accuracy, loss) may be filled in before the row is
        written.
        """
        server_round = row.round
        row.density = model.density
        traffic = self.comm.rounds[server_round]
        down, up = traffic.down, traffic.up
        row.bytes_down, row.bytes_up = down.measured.total, up.measured.total
        row.values_down, row.mask_down = down.measured.values, down.measured.mask
        # what travels down besides values and mask: the task's config (no statistic goes down)
        row.other_down = down.measured.other + down.measured.importance
        row.values_up, row.mask_up = up.measured.values, up.measured.mask
        row.importance_up, row.other_up = up.measured.importance, up.measured.other
        row.bound_down, row.bound_up = down.bound, up.bound
        row.bound_bytes = down.bound + up.bound
        row.dense_bytes = down.dense + up.dense
        row.ratio_down = down.measured.total / down.bound if down.bound else math.nan
        row.ratio_up = up.measured.total / up.bound if up.bound else math.nan
        self.modelled_elapsed += row.modelled_round_time_s
        row.modelled_elapsed_s = self.modelled_elapsed
        now = time.monotonic()
        row.wall_time_s = now - self.round_started if server_round > 0 else row.wall_time_s
        row.elapsed_s = now - self.run_started
        self.rows.append(row)
        phases = None
        if server_round > 0:
            phases = round_phases(server_round, row.wall_time_s, clock.seconds, client_phases)
        return ClosedRound(row, model.layout, model.kept_per_layer(), phases)

    def write(self, closed: ClosedRound) -> None:
        """Write a closed round's row, layers and phases, tell the observer and log the round's line."""
        row = closed.row
        if self.results is not None:
            self.results.append_round(row)
            self.results.append_layers(row.round, closed.layout, closed.kept_per_layer)
            if closed.phases is not None:
                self.results.append_phases(closed.phases)
        self.progress.round_ended(row)
        log(
            INFO,
            "[round %d/%d] accuracy %s | density %.4f | down %s up %s (bound %s, dense %s) | %.1f s",
            row.round,
            self.rounds,
            "n/a" if math.isnan(row.accuracy) else f"{row.accuracy:.4f}",
            row.density,
            format_bytes(row.bytes_down),
            format_bytes(row.bytes_up),
            format_bytes(row.bound_bytes),
            format_bytes(row.dense_bytes),
            row.wall_time_s,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "modelled_elapsed": self.modelled_elapsed,
            "elapsed_s": time.monotonic() - self.run_started,
            "rows": [dataclasses.asdict(row) for row in self.rows],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.modelled_elapsed = float(state["modelled_elapsed"])
        self.run_started = time.monotonic() - float(state["elapsed_s"])
        self.rows = [RoundRow(**row) for row in state["rows"]]
