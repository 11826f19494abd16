"""Where a round's wall time goes: the server's own phases, and the clients'.

The server's phases are timed here with :class:`PhaseClock` (exclusive time: a
phase started inside another pauses the outer one, so the phases of a round add
up to at most its wall time). The clients time their own phases and report them
in the training reply's metrics (``phase.*``, checked by
:func:`server.validation.client_phases`): preparing (parsing the task, loading
the node's data, building the model), decoding the model, local training and
encoding the reply, with the wall-clock instants their training started and
ended. :func:`round_phases` turns both into one row of ``phases.csv``.

Local training's share of a round is the length of the *union* of the clients'
training intervals (the wall time during which at least one client was
training), which needs the clients' clocks to agree with the server's: true in
simulation (one machine), only approximately on real devices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import TypeVar

SERVER_PHASES = ("setup", "encode", "accounting", "decode", "aggregate", "reconfigure", "evaluate")
WAITING = "waiting"  # for replies (:meth:`PhaseClock.waiting`): timed, but no phase of phases.csv

T = TypeVar("T")
_END = object()  # what PhaseClock.waiting's iterator gives when it is exhausted


@dataclass(frozen=True)
class ClientPhases:
    """One client's reported phase durations (seconds) and training interval (Unix time)."""

    prepare_s: float
    decode_s: float
    train_s: float
    encode_s: float
    total_s: float
    train_start: float
    train_end: float


class PhaseClock:
    """Accumulates exclusive wall seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[tuple[str, float]] = []

    def reset(self) -> None:
        self.seconds = {}

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name``; an enclosing phase is paused meanwhile."""
        now = time.perf_counter()
        if self._stack:
            outer, since = self._stack[-1]
            self._add(outer, now - since)
        self._stack.append((name, now))
        try:
            yield
        finally:
            end = time.perf_counter()
            _, since = self._stack.pop()
            self._add(name, end - since)
            if self._stack:
                outer, _ = self._stack[-1]
                self._stack[-1] = (outer, end)

    def waiting(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, the time spent getting each one (waiting for a reply to arrive) timed as
        :data:`WAITING`, so that it pauses the phase that consumes them.

        Replies arrive one by one (:class:`server.arrivals.ArrivingReplies`) and are decoded
        in between: the ``decode`` phase counts the decoding only.
        """
        iterator = iter(items)
        while True:
            with self.phase(WAITING):
                item = next(iterator, _END)
            if item is _END:
                return
            yield item  # type: ignore[misc]


def union_length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length covered by the closed intervals ``[start, end]`` (overlaps counted once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


@dataclass
class PhaseRow:
    """One line of ``phases.csv``: seconds per phase of one round."""

    round: int
    wall_s: float = 0.0
    clients: int = 0
    server_setup_s: float = 0.0
    server_encode_s: float = 0.0
    server_accounting_s: float = 0.0
    server_decode_s: float = 0.0
    server_aggregate_s: float = 0.0
    server_reconfigure_s: float = 0.0
    server_evaluate_s: float = 0.0
    client_prepare_s: float = 0.0  # summed over the round's accepted clients
    client_decode_s: float = 0.0
    client_train_s: float = 0.0
    client_encode_s: float = 0.0
    client_total_s: float = 0.0  # each client's whole handler, summed
    training_wall_s: float = 0.0  # union of the clients' training intervals

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def formatted(self) -> list[str]:
        return [f"{v:.6g}" if isinstance(v, float) else str(v) for v in asdict(self).values()]

    @property
    def server_s(self) -> float:
        return sum(getattr(self, f"server_{name}_s") for name in SERVER_PHASES)


def round_phases(
    server_round: int, wall_s: float, server: dict[str, float], clients: Sequence[ClientPhases]
) -> PhaseRow:
    """The row of ``server_round`` from the server's clock and the clients' reports."""
    row = PhaseRow(round=server_round, wall_s=wall_s, clients=len(clients))
    for name in SERVER_PHASES:
        setattr(row, f"server_{name}_s", server.get(name, 0.0))
    row.client_prepare_s = sum(c.prepare_s for c in clients)
    row.client_decode_s = sum(c.decode_s for c in clients)
    row.client_train_s = sum(c.train_s for c in clients)
    row.client_encode_s = sum(c.encode_s for c in clients)
    row.client_total_s = sum(c.total_s for c in clients)
    row.training_wall_s = min(wall_s, union_length([(c.train_start, c.train_end) for c in clients]))
    return row
