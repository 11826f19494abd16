"""The communication log: every message's measured bytes, with its bound and dense size."""

from __future__ import annotations

import csv
import itertools
import os
import weakref
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
    """One CSV row per message, and per-round totals in memory.

    Rows are appended a round at a time: those of a round are written when the first
    message of another round is recorded, when the totals or a checkpoint's state are
    taken, on :meth:`flush`, and when the log is dropped or the process exits, unless
    a later log has taken the file (a run resumed in this process). A SIGKILL loses
    the rows of the round under way, as it loses that round's ``rounds.csv`` row; a
    resumed run cuts the file back to its checkpoint and runs those rounds again.
    Opening the file for every message cost about 2 ms a message on the 2-core
    sandbox under load, a few percent of a digits round's server time.
    """

    def __init__(self, path: Path | None, *, new_file: bool = True) -> None:
        """Start ``path`` with its header, or (``new_file=False``) append to it, for a resumed run."""
        self.path = path
        self.rounds: dict[int, RoundTraffic] = defaultdict(RoundTraffic)
        self.node_bytes: dict[tuple[int, str, int], int] = defaultdict(int)  # (round, phase, node)
        if path is not None and new_file:
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        self._rows = _Rows(path)
        self._pending_round: int | None = None
        weakref.finalize(self, self._rows.flush_if_owner)

    def flush(self) -> None:
        """Write the rows recorded so far."""
        self._rows.flush()

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
        if self.path is None:
            return
        if self._pending_round != server_round:
            self.flush()
            self._pending_round = server_round
        self._rows.pending.append(
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
        self.flush()
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
        self._rows.pending.clear()  # rows after the checkpoint: cut, as the file is below
        self._pending_round = None
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
        self.flush()  # the run's end: the file holds every row
        total = RoundTraffic()
        for traffic in self.rounds.values():
            for mine, theirs in ((total.down, traffic.down), (total.up, traffic.up)):
                mine.measured = mine.measured + theirs.measured
                mine.bound += theirs.bound
                mine.dense += theirs.dense
                mine.messages += theirs.messages
        return total


_OWNERS: dict[Path, int] = {}  # results file -> the token of the log that writes it now
_TOKENS = itertools.count()


class _Rows:
    """The rows a log has not written yet; the latest log opened on a file owns it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pending: list[tuple[object, ...]] = []
        self.token = next(_TOKENS)
        if path is not None:
            _OWNERS[path.resolve()] = self.token

    def flush(self) -> None:
        if self.path is not None and self.pending:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerows(self.pending)
        self.pending.clear()

    def flush_if_owner(self) -> None:
        """At the log's end: write what is left, unless a later log has taken the file (a run
        resumed in this process from a checkpoint, which cut the file back)."""
        if self.path is not None and _OWNERS.get(self.path.resolve()) == self.token:
            self.flush()


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to its first ``size`` bytes (rows written after a checkpoint)."""
    if not path.exists() or path.stat().st_size < size:
        raise ValueError(f"{path} holds fewer than the {size} bytes it had at the checkpoint")
    with path.open("r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
