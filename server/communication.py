"""The communication log: every message's measured bytes, with its bound and dense size."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from common.wire import MessageBytes

COLUMNS = (
    "round",
    "phase",
    "direction",
    "node_id",
    "partition_id",
    "bytes",
    "values",
    "mask",
    "importance",
    "other",
    "objects",
    "bound_bytes",
    "dense_bytes",
)


_MEASURED = tuple(f.name for f in fields(MessageBytes))  # checkpointed per round and direction


@dataclass
class Traffic:
    """Bytes of a set of messages in one direction, with their bound and dense size."""

    measured: MessageBytes = field(default_factory=MessageBytes)
    bound: float = 0.0
    dense: int = 0
    messages: int = 0

    def add(self, measured: MessageBytes, bound: float, dense: int) -> None:
        self.measured = self.measured + measured
        self.bound += bound
        self.dense += dense
        self.messages += 1


@dataclass
class RoundTraffic:
    down: Traffic = field(default_factory=Traffic)
    up: Traffic = field(default_factory=Traffic)


class CommunicationLog:
    """Appends one CSV row per message and keeps per-round totals in memory."""

    def __init__(self, path: Path | None, *, new_file: bool = True) -> None:
        """Start ``path`` with its header, or (``new_file=False``) append to it, for a resumed run."""
        self.path = path
        self.rounds: dict[int, RoundTraffic] = defaultdict(RoundTraffic)
        self.node_bytes: dict[tuple[int, str, int], int] = defaultdict(int)  # (round, phase, node)
        if path is not None and new_file:
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)

    def record(
        self,
        server_round: int,
        phase: str,
        direction: str,
        node_id: int,
        partition_id: int,
        measured: MessageBytes,
        bound: float,
        dense: int,
    ) -> None:
        traffic = self.rounds[server_round]
        (traffic.down if direction == "down" else traffic.up).add(measured, bound, dense)
        self.node_bytes[(server_round, phase, node_id)] += measured.total
        if self.path is not None:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerow(
                    (
                        server_round,
                        phase,
                        direction,
                        node_id,
                        partition_id,
                        measured.total,
                        measured.values,
                        measured.mask,
                        measured.importance,
                        measured.other,
                        measured.objects,
                        round(bound, 1),
                        dense,
                    )
                )

    def bytes_of(self, server_round: int, phase: str, node_id: int) -> int:
        """Bytes down plus up of one node in one phase of a round."""
        return self.node_bytes.get((server_round, phase, node_id), 0)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Per-round totals (the per-message rows are in the CSV, up to ``csv_bytes``)."""
        rounds = sorted(self.rounds)
        counts = np.zeros((len(rounds), 2, len(_MEASURED) + 2), dtype=np.int64)
        bounds = np.zeros((len(rounds), 2), dtype=np.float64)
        for i, r in enumerate(rounds):
            for j, traffic in enumerate((self.rounds[r].down, self.rounds[r].up)):
                measured = [getattr(traffic.measured, name) for name in _MEASURED]
                counts[i, j] = [*measured, traffic.dense, traffic.messages]
                bounds[i, j] = traffic.bound
        csv_bytes = self.path.stat().st_size if self.path is not None and self.path.exists() else 0
        return {
            "rounds": np.asarray(rounds, dtype=np.int64),
            "counts": counts,
            "bounds": bounds,
            "csv_bytes": csv_bytes,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the totals and cut the CSV back to what it held at the checkpoint."""
        self.rounds.clear()
        self.node_bytes.clear()
        for r, counts, bounds in zip(state["rounds"], state["counts"], state["bounds"], strict=True):
            traffic = RoundTraffic()
            for j, part in enumerate((traffic.down, traffic.up)):
                values = [int(v) for v in counts[j]]
                part.measured = MessageBytes(*values[:-2])
                part.dense, part.messages = values[-2], values[-1]
                part.bound = float(bounds[j])
            self.rounds[int(r)] = traffic
        if self.path is not None:
            truncate(self.path, int(state["csv_bytes"]))

    def totals(self) -> RoundTraffic:
        total = RoundTraffic()
        for traffic in self.rounds.values():
            for mine, theirs in ((total.down, traffic.down), (total.up, traffic.up)):
                mine.measured = mine.measured + theirs.measured
                mine.bound += theirs.bound
                mine.dense += theirs.dense
                mine.messages += theirs.messages
        return total


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to its first ``size`` bytes (rows written after a checkpoint)."""
    if not path.exists() or path.stat().st_size < size:
        raise ValueError(f"{path} holds fewer than the {size} bytes it had at the checkpoint")
    with path.open("r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
