"""The rounds after a checkpoint, run through Flower's own round loop.

Flower's ``Strategy.start`` numbers rounds from 1 and evaluates the initial model
as round 0. To continue a run after round r without a copy of that loop,
:class:`ResumedStrategy` wraps the run's strategy and shifts every round number
by r: ``start(num_rounds=N - r)`` then drives rounds r+1..N of the inner
strategy, and the initial evaluation (round r's row, already in ``rounds.csv``)
is skipped. Flower's own progress lines ("[ROUND k/n]") count the remaining
rounds; fedprune's round lines give the true round numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from .strategy import PruningFedAvg


class ResumedStrategy(Strategy):
    """``inner`` with rounds numbered from ``done + 1``."""

    def __init__(self, inner: PruningFedAvg, done: int) -> None:
        self.inner = inner
        self.done = done

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> Resumed after round %d of %d (checkpoint)",
            self.done,
            self.inner.config.federation.rounds,
        )
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.done, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.done, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.done, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.done, replies)

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The inner strategy's ``end_round``; nothing for Flower's initial evaluation."""
        if server_round == 0:
            return None
        return self.inner.end_round(server_round + self.done, arrays)
