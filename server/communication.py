"""The communication log: every message's measured bytes, with its bound and dense size."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from common.wire import MessageBytes

PHASES = ("setup", "initial-pruning", "train", "evaluate")
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

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rounds: dict[int, RoundTraffic] = defaultdict(RoundTraffic)
        self.node_bytes: dict[tuple[int, str, int], int] = defaultdict(int)  # (round, phase, node)
        if path is not None:
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

    def totals(self) -> RoundTraffic:
        total = RoundTraffic()
        for traffic in self.rounds.values():
            for mine, theirs in ((total.down, traffic.down), (total.up, traffic.up)):
                mine.measured = mine.measured + theirs.measured
                mine.bound += theirs.bound
                mine.dense += theirs.dense
                mine.messages += theirs.messages
        return total
