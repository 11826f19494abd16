"""FedAvg over masked models with a pluggable pruning method, as a Flower strategy.

``PruningFedAvg`` implements Flower's ``Strategy`` hooks; Flower's
``Strategy.start`` owns the round loop. Per round:

1. ``configure_train`` samples nodes reproducibly and sends each the kept values
   (plus the mask if its copy is stale), the round's task and the method's own
   task entries;
2. ``aggregate_train`` checks and decodes every reply once (outliers, replays and
   the method's own checks included), aggregates the kept values (masked FedAvg,
   or a robust rule of :mod:`server.robust`), skips a round whose aggregate is
   poisoned, hands the accepted replies to the method to merge its statistics,
   and lets it reconfigure the mask;
3. ``configure_evaluate`` / ``aggregate_evaluate`` run optional federated
   evaluation on a share of the clients;
4. :meth:`PruningFedAvg.end_round`, passed to ``start`` as ``evaluate_fn``,
   evaluates the global model on the server's test set (in the background while
   the next round trains, with ``evaluate.overlap``), has the round recorded
   (:mod:`server.recorder`) and checkpoints when due.

What a method sends between its client and server sides (task entries, an
uploaded vector, ``method.<key>`` metrics) passes through here unread. Every
message's bytes are measured on the way (see :mod:`server.messenger`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from common import keys
from common.budget import budget_entries
from common.config import AppConfig
from common.pruning import ClientReport, PruningMethod, RoundPlan, RoundUpdate
from common.pruning.base import ConfigValue
from common.task import TaskSpec
from common.training import Evaluation
from common.wire import WireError
from common.wire.codec import decode_mask, decode_payload, mask_base_version

from . import validation
from .checkpoint import CheckpointPlanner, CheckpointSchedule, load_rng_state, rng_state, write_checkpoint
from .communication import CommunicationLog
from .evaluation import CentralEvaluator
from .fleet import Fleet, RoundTime
from .global_model import GlobalModel
from .messenger import Messenger
from .nodes import NodeBook, NodeInfo
from .phases import ClientPhases
from .progress import RunProgress
from .recorder import ClosedRound, RoundRecorder
from .replies import collect_replies
from .results import ResultsWriter, RoundRow
from .robust import aggregate_counters, aggregate_masked, robust_average
from .validation import Exchange, RejectedReply

STALE_MASK = "stale-mask"  # prefix of a client's error reason when it lacks the mask
Decoded = TypeVar("Decoded")


@dataclass
class TrainReply:
    node: NodeInfo
    values: np.ndarray
    counters: np.ndarray
    upload: np.ndarray | None  # the method's statistic vector
    samples: int
    weight: float
    loss: float
    values_bytes: int = 0  # measured bytes of the reply's values
    update_norm: float = 0.0  # ||w_c - w_start||_2 over the values the client trained
    mask: np.ndarray | None = None  # the client's own mask (the plan asks for it) or its sub-mask
    # a client under a round budget (common/budget.py): ``mask`` is the sub-mask it trained, and
    # the method sees its values on the global mask, the untrained positions at the values sent
    method_values: np.ndarray | None = None
    extras: dict[str, float | list[float]] = field(default_factory=dict)  # method.<key> metrics
    phases: ClientPhases | None = None  # the client's own phase timings, when it reports them

    def report(self) -> ClientReport:
        """What the method sees of this reply."""
        budgeted = self.method_values is not None
        return ClientReport(
            self.node.partition_id,
            self.weight,
            None if budgeted else self.mask,
            self.extras,
            values=self.method_values if budgeted else self.values,
            samples=self.samples,
            upload=self.upload,
            node_id=self.node.node_id,
        )


@dataclass(frozen=True)
class PendingRound:
    """A round that ended but whose row is not written yet: its evaluation may still be running."""

    closed: ClosedRound
    evaluation: Future[Evaluation] | None  # None: the round is not evaluated on the server
    checkpoint: bool  # a checkpoint is due after it (then its evaluation did not run in the background)


class PruningFedAvg(Strategy):
    """Masked FedAvg with a pluggable pruning method (PruneFL by default)."""

    def __init__(
        self,
        config: AppConfig,
        model: GlobalModel,
        method: PruningMethod,
        fleet: Fleet,
        nodes: NodeBook,
        messenger: Messenger,
        comm: CommunicationLog,
        results: ResultsWriter | None,
        evaluator: CentralEvaluator | None,
        task_defaults: TaskSpec,
    ) -> None:
        self.config = config
        self.model = model
        self.method = method
        self.fleet = fleet
        # the reference device's model (cost.profile) with the measured bytes per value, for the method
        self.cost = fleet.reference
        self.nodes = nodes
        self.messenger = messenger
        self.comm = comm
        self.results = results
        self.evaluator = evaluator
        self.task_defaults = task_defaults
        self.recorder = RoundRecorder(config.federation.rounds, comm, results)
        self.row = RoundRow(round=0)
        self.plan = RoundPlan()
        self.sent: dict[int, NodeInfo] = {}
        # node id -> kept weights per layer of the sub-mask it trains this round (common/budget.py)
        self.budgeted: dict[int, np.ndarray] = {}
        # the kept values when the round's models were sent: with a lossy value format the
        # clients reply with their update, which is added to these exact values
        self.sent_values = np.zeros(0, dtype=np.float32)
        self.sent_evaluate: dict[int, NodeInfo] = {}
        self.grid: Grid | None = None
        self.max_reply_bytes = validation.max_reply_bytes(model.layout)
        self.exchanges: dict[str, Exchange] = {}
        self.replays = validation.ReplayGuard()
        self.model_norm = 0.0  # ||kept values|| when the round's models were sent
        self.clients_hold_state = False  # True after a round that left method statistics on the nodes
        self.checkpoints = CheckpointPlanner(
            CheckpointSchedule(config.output.checkpoint_every, config.federation.rounds)
        )
        self.clock = messenger.clock  # the server's phases (server/phases.py), reset every round
        self.client_phases: list[ClientPhases] = []
        self.pending: PendingRound | None = None  # a closed round whose row is not written yet

    @property
    def progress(self) -> RunProgress:
        """Told of every round's row."""
        return self.recorder.progress

    @progress.setter
    def progress(self, progress: RunProgress) -> None:
        self.recorder.progress = progress

    @property
    def rows(self) -> list[RoundRow]:
        return self.recorder.rows

    @property
    def modelled_elapsed(self) -> float:
        return self.recorder.modelled_elapsed

    # -- logging ---------------------------------------------------------------------
    def summary(self) -> None:
        c = self.config
        log(INFO, "\t├──> Pruning: %s, initial density %.3f", c.pruning.method, self.model.density)
        log(INFO, "\t├──> Model: %s, %d parameters", c.model.name, self.model.layout.num_parameters)
        log(
            INFO,
            "\t└──> Clients per round: %s (min %d)",
            c.federation.clients_per_round or "all",
            c.federation.min_clients,
        )

    # -- messages ----------------------------------------------------------------------
    def task_config(
        self, server_round: int, plan: RoundPlan, training: bool, budgets: dict[int, float] | None = None
    ) -> ConfigRecord:
        """The round's task for every sampled client, with the method's entries and the budgets'."""
        train = self.config.train
        spec = dataclasses.replace(
            self.task_defaults,
            server_round=server_round,
            lr=train.lr_at(server_round),
            mask_version=self.model.mask_version,
        )
        entries = {**self.method.task_entries(server_round, training), **budget_entries(budgets or {})}
        return task_record(spec, entries, plan)  # type: ignore[arg-type]

    def refresh_nodes(self, grid: Grid) -> None:
        config = task_record(self.task_defaults, self.method.task_entries(0, False))
        self.messenger.describe_new_nodes(grid, config, self.config.federation.round_timeout)

    # -- training -----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.grid = grid
        self.recorder.start_round()
        self.row = RoundRow(round=server_round)
        self.clock.reset()
        self.client_phases = []
        with self.clock.phase("setup"):
            self.refresh_nodes(grid)
        fed = self.config.federation
        sampled = self.nodes.sample(server_round, fed.clients_per_round, fed.seed)
        self.plan = self.method.round_plan(server_round)
        self.sent = {node.node_id: node for node in sampled}
        budgets = self._budgets(server_round, sampled)
        self.row.clients = len(sampled)
        self.sent_values = self.model.kept_values()
        self.model_norm = float(np.linalg.norm(self.sent_values.astype(np.float64)))
        log(INFO, "round %d: training on %d clients", server_round, len(sampled))
        with self.clock.phase("encode"):
            messages = self.messenger.model_messages(
                sampled,
                keys.TRAIN,
                self.task_config(server_round, self.plan, True, budgets),
                server_round,
                "train",
            )
        self.exchanges["train"] = Exchange(
            server_round, keys.TRAIN, self.sent, messages, self.max_reply_bytes
        )
        return messages

    def _budgets(self, server_round: int, sampled: list[NodeInfo]) -> dict[int, float]:
        """Keep fractions of the sampled clients that cannot afford the global mask (by partition).

        ``fleet.round-budget`` (:mod:`common.budget`); none in a round whose clients choose
        their own masks. Fills ``budgeted`` with the kept weights each such client trains.
        What a client moves besides its values (the mask, a method's statistic, the
        config) does not shrink with its sub-mask: its time over
        the client's own link, at the previous round's measured bytes per message, comes
        off the budget first (:meth:`_fixed_bytes`).
        """
        self.budgeted = {}
        budget = self.config.fleet.round_budget
        if budget <= 0 or self.plan.client_masks:
            return {}
        mask, fractions, fixed = self.model.mask, {}, self._fixed_bytes(server_round - 1)
        by_profile: dict[str, tuple[float, np.ndarray]] = {}  # one fit per device profile a round
        for node in sampled:
            profile = self.fleet.profile_of(node)
            if profile not in by_profile:
                cost = self.fleet.cost_of(node).with_bytes_per_value(self.cost.bytes_per_value)
                available = budget - cost.transfer_time(fixed)
                fraction = self.method.budget_fraction(cost, mask, available) if available > 0 else 0.0
                counts = self.method.budget_counts(mask, fraction) if fraction < 1 else np.empty(0)
                by_profile[profile] = (fraction, counts)
            fraction, counts = by_profile[profile]
            if fraction < 1:
                fractions[node.partition_id] = fraction
                self.budgeted[node.node_id] = counts
        return fractions

    def _fixed_bytes(self, server_round: int) -> float:
        """Bytes per client of ``server_round`` besides the values, down and up (0 before any round)."""
        traffic = self.comm.rounds.get(server_round)
        if server_round < 1 or traffic is None:
            return 0.0
        return sum(
            (t.measured.total - t.measured.values) / t.messages
            for t in (traffic.down, traffic.up)
            if t.messages
        )

    def _check_submask(self, node: NodeInfo, client_mask: np.ndarray) -> None:
        """A budgeted client's mask: inside the global mask, with the kept weights per layer it was told.

        A decoded mask keeps every non-prunable position (the wire carries the prunable
        tensors only, :func:`common.wire.masks.decode_mask`), so only those are checked.
        """
        layout, mask = self.model.layout, self.model.mask
        if np.any(client_mask & ~mask):
            raise WireError("a budgeted client's mask keeps positions the global mask prunes")
        counts = layout.kept_per_layer(client_mask)
        if not np.array_equal(counts, self.budgeted[node.node_id]):
            raise WireError(
                f"a budgeted client's mask keeps {counts.tolist()} weights per layer, "
                f"not the {self.budgeted[node.node_id].tolist()} of its budget"
            )

    def decode_train_reply(self, reply: Message) -> TrainReply:
        """Check one training reply's content (see :mod:`server.validation`); raise RejectedReply.

        The reply's origin (asked, once, this round, size) is checked before.
        """
        node = self.sent[reply.metadata.src_node_id]
        content = reply.content
        validation.required_records(content, [keys.ARRAYS], [keys.METRICS])
        self.replays.check(node.node_id, content.array_records[keys.ARRAYS])
        train = self.config.train
        checked = validation.train_metrics(
            content.metric_records[keys.METRICS],
            local_steps=train.local_steps,
            batch_size=train.batch_size,
            weighting=train.weighting,
            train_size=node.train_size,
            current_mask_version=self.model.mask_version,
        )
        samples, weight, loss = checked.samples, checked.weight, checked.loss
        record = content.array_records[keys.ARRAYS]
        metrics = content.metric_records[keys.METRICS]
        prefix = keys.METHOD_PREFIX
        extras = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        budgeted = node.node_id in self.budgeted
        try:
            client_mask = self._client_mask(record)
            if client_mask is not None and not self.plan.client_masks and not budgeted:
                raise WireError("a client may not change the mask")
            if client_mask is None and (self.plan.client_masks or budgeted):
                raise WireError("this round's clients must reply with their own mask")
            if client_mask is not None and budgeted:
                self._check_submask(node, client_mask)
            wire = self.config.wire
            payload = decode_payload(
                record,
                self.model.layout,
                self.model.mask if client_mask is None else client_mask,
                statistic_length=self.method.upload_length(self.row.round, self.model.mask),
                statistic_plan=self.method.upload_plan(self.row.round, self.model.mask),
                reference=self.sent_values if client_mask is None and wire.format().lossy_values else None,
                expected=wire.format(),
            )
        except WireError as exc:
            raise RejectedReply("bad-payload", str(exc)) from exc
        validation.finite_array("values", payload.values)
        if payload.statistic is not None:
            validation.finite_array("statistic", payload.statistic)
        start = self.sent_values if client_mask is None else self.model.floats[client_mask]
        update_norm = validation.bounded_update(
            payload.values, start, self.model_norm, self.config.federation.outlier_factor
        )
        method_values = None
        if budgeted and client_mask is not None:
            trained = self.model.floats.copy()  # the values sent where the client did not train
            trained[client_mask] = payload.values
            method_values = trained[self.model.mask]
        decoded = TrainReply(
            node,
            payload.values,
            payload.counters,
            payload.statistic,
            samples,
            weight,
            loss,
            mask=client_mask,
            extras=extras,
            phases=validation.client_phases(metrics),
            update_norm=update_norm,
            method_values=method_values,
        )
        try:
            self.method.check_report(decoded.report())
        except ValueError as exc:
            raise RejectedReply("bad-metric", str(exc)) from exc
        return decoded

    def _client_mask(self, record: ArrayRecord) -> np.ndarray | None:
        """The client's own mask in a training reply (None: it carries none), resolved against its base.

        The mask section names the version it is a delta against: the one the node
        holds (this round's, which its metrics named) or 0. The base comes from the
        messenger's :class:`~server.mask_ledger.MaskLedger`; a base the server does
        not know for that node is a :class:`WireError` (a ``bad-payload`` rejection).
        """
        named = mask_base_version(record)
        if named is None:
            return None
        try:
            base = self.messenger.ledger.reply_base(named, self.model.mask_version)
        except LookupError as exc:
            raise WireError(str(exc)) from exc
        return decode_mask(record, self.model.layout, lambda version: base if version == named else None)

    def _collect(
        self,
        server_round: int,
        phase: str,
        replies: Iterable[Message],
        decode: Callable[[Message, int], Decoded],
    ) -> list[Decoded]:
        """The phase's replies through the one accept loop (:func:`server.replies.collect_replies`)."""
        return collect_replies(
            self.exchanges[phase],
            self.clock.waiting(replies),  # arriving one by one: the waits are no phase's time
            self.messenger,
            phase,
            decode,
            lambda node_id, reason: self._failed(server_round, phase, node_id, reason),
            lambda node_id, exc: self._reject(server_round, phase, node_id, exc),
        )

    def _decode_train(self, reply: Message, values_bytes: int) -> TrainReply:
        decoded = self.decode_train_reply(reply)
        decoded.values_bytes = values_bytes
        return decoded

    def _without_outliers(self, server_round: int, accepted: list[TrainReply]) -> list[TrainReply]:
        """The replies whose update norm is at most ``federation.outlier-median-factor`` x the median's.

        ||w_c - w_start||_2 > F * median_c' ||w_c' - w_start||_2 is no local training of
        the round's kind: such a reply is rejected as ``outlier``, like one against the
        model's norm. With two replies the ratio cannot exceed 2, so the check needs
        three or more; a client moves the aggregate by at most its weight's share of
        F times the median update. F = 0 turns it off.
        """
        factor = self.config.federation.outlier_median_factor
        norms = [r.update_norm for r in accepted]
        kept = []
        for r, outlier in zip(accepted, validation.median_outliers(norms, factor), strict=True):
            if outlier:
                detail = (
                    f"update norm {r.update_norm:.4g} is more than federation.outlier-median-factor = "
                    f"{factor:g} times the round's median {float(np.median(norms)):.4g}"
                )
                self._reject(server_round, "train", r.node.node_id, RejectedReply("outlier", detail))
            else:
                kept.append(r)
        return kept

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        with self.clock.phase("decode"):
            accepted = self._collect(server_round, "train", replies, self._decode_train)
            accepted = self._without_outliers(server_round, accepted)
        self.client_phases = [r.phases for r in accepted if r.phases is not None]
        self._update_round_time(server_round, accepted)
        if len(accepted) < self.config.federation.min_clients:
            log(
                WARNING,
                "round %d: %d usable replies, fewer than federation.min-clients = %d; "
                "the model is left unchanged",
                server_round,
                len(accepted),
                self.config.federation.min_clients,
            )
            return None, None
        accepted.sort(key=lambda r: (r.node.partition_id, r.node.node_id))
        with self.clock.phase("aggregate"):
            if not self._aggregate(server_round, accepted):
                return None, None
        with self.clock.phase("reconfigure"):
            self._reconfigure(server_round, accepted)
        self.row.train_loss = float(
            np.average([r.loss for r in accepted], weights=[r.weight for r in accepted])
        )
        metrics = MetricRecord({"train-loss": self.row.train_loss, "density": self.model.density})
        with self.clock.phase("aggregate"):  # Flower's copy of the model, for evaluate_fn
            arrays = self.model.to_arrayrecord()
        return arrays, metrics

    def _failed(self, server_round: int, phase: str, node_id: int, reason: str) -> None:
        """Count a node that answered with an error or not at all; the round goes on."""
        if phase == "train":
            self.row.failures += 1
        else:
            self.row.evaluate_failures += 1
        log(WARNING, "round %d: %s on node %d failed: %s", server_round, phase, node_id, reason)
        if reason.startswith(STALE_MASK):
            self.messenger.ledger.forget([node_id])

    def _reject(self, server_round: int, phase: str, node_id: int, exc: RejectedReply) -> None:
        """Count and log a reply that is dropped (see :mod:`server.validation`)."""
        if phase == "train":
            self.row.rejected += 1
        else:
            self.row.evaluate_rejected += 1
        log(WARNING, "round %d: %s reply of node %d rejected: %s", server_round, phase, node_id, exc)

    def _aggregate(self, server_round: int, accepted: list[TrainReply]) -> bool:
        """Aggregate the replies into the model; False (model untouched) for a poisoned aggregate."""
        model, weights = self.model, [r.weight for r in accepted]
        fed = self.config.federation
        values = [r.values for r in accepted]
        rule = dict(rule=fed.aggregation, clip_factor=fed.clip_factor, trim_fraction=fed.trim_fraction)
        if self.plan.client_masks or any(r.method_values is not None for r in accepted):
            masks = [r.mask if r.mask is not None else model.mask for r in accepted]
            floats = robust_average(model.floats, masks, values, weights, **rule)  # type: ignore[arg-type]
        else:
            floats = aggregate_masked(
                model.floats,
                model.mask,
                values,
                weights,
                kept=model.kept_positions(),
                **rule,  # type: ignore[arg-type]
            )
        ints = aggregate_counters([r.counters for r in accepted], weights, fed.aggregation)
        self.messenger.ledger.record((r.node.node_id for r in accepted), model.mask_version)
        poisoned = self._poisoned(floats)
        if poisoned:
            log(
                WARNING,
                "round %d: the aggregate %s; the round is skipped and the model stays as it was",
                server_round,
                poisoned,
            )
            return False
        model.floats, model.ints = floats, ints
        return True

    def _poisoned(self, floats: np.ndarray) -> str:
        """Why the aggregate ``floats`` must not be used ("" when it may be)."""
        if not np.isfinite(floats).all():
            return f"holds {int(np.count_nonzero(~np.isfinite(floats)))} NaN or Inf values"
        with np.errstate(over="ignore"):  # float32: a threshold, not a figure; overflow reads as inf
            step = float(np.linalg.norm(floats - self.model.floats))
        factor = self.config.federation.outlier_factor
        if step > factor * self.model_norm:
            return (
                f"moves the model by {step:.4g}, more than federation.outlier-factor = {factor:g} "
                f"times its norm {self.model_norm:.4g}"
            )
        return ""

    def _reconfigure(self, server_round: int, accepted: list[TrainReply]) -> None:
        """Let the method merge the round's statistics and choose the next mask."""
        update = RoundUpdate(
            server_round,
            self.model.floats,
            self.model.mask,
            self.sent_values,
            self.config.train.lr_at(server_round),
            [r.report() for r in accepted],
        )
        merged = self.method.merge_clients(update)
        reconfigured = self.method.reconfigure(
            server_round,
            self.model.floats,
            self.model.mask if merged is None else merged,
            self.cost,
        )
        new_mask = reconfigured if reconfigured is not None else merged
        if new_mask is None:
            return
        before = self.model.density
        if self.model.set_mask(new_mask):
            self.row.reconfigured = 1
            log(
                INFO,
                "round %d: mask reconfigured, density %.4f -> %.4f (version %d)",
                server_round,
                before,
                self.model.density,
                self.model.mask_version,
            )

    def _update_round_time(self, server_round: int, accepted: list[TrainReply]) -> None:
        """PruneFL's modelled round time, and c_comm from the bytes measured this round.

        The round lasts as long as its slowest sampled client, the straggler
        (:mod:`server.fleet`): E modelled local iterations on that client's own
        profile under the mask it trained, plus its measured bytes (down and up)
        over its own link. c_comm comes from the value bytes of the replies that
        were accepted, so that a rejected or missing reply does not move the cost
        model (nor, through it, the mask).
        """
        kept = self.model.kept_per_layer()
        timing = RoundTime(
            tuple(
                self.fleet.client_time(
                    node, self.budgeted.get(node_id, kept), self.comm.bytes_of(server_round, "train", node_id)
                )
                for node_id, node in self.sent.items()
            )
        )
        self.row.modelled_round_time_s = timing.seconds
        self.row.record_straggler(timing)
        if accepted:
            down = self.comm.rounds[server_round].down
            kept = int(np.count_nonzero(self.model.mask))
            bytes_per_client = down.measured.values / down.messages + float(
                np.mean([self._values_bytes_at_mask(r, kept) for r in accepted])
            )
            self.cost = self.cost.with_bytes_per_value(bytes_per_client / kept)

    @staticmethod
    def _values_bytes_at_mask(reply: TrainReply, kept: int) -> float:
        """A reply's value bytes, scaled to the global mask's ``kept`` values for a budgeted client."""
        if reply.method_values is None or not len(reply.values):
            return float(reply.values_bytes)
        return reply.values_bytes * kept / len(reply.values)

    # -- federated evaluation --------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        fraction = self.config.evaluate.client_fraction
        self.sent_evaluate = {}
        self.exchanges["evaluate"] = Exchange(server_round, keys.EVALUATE, {}, [], self.max_reply_bytes)
        if fraction == 0 or server_round % self.config.evaluate.every != 0:
            return []
        count = max(1, math.ceil(fraction * len(self.nodes)))
        targets = self.nodes.sample(server_round, count, self.config.federation.seed, stream=1)
        self.sent_evaluate = {n.node_id: n for n in targets}
        messages = self.messenger.model_messages(
            targets,
            keys.EVALUATE,
            self.task_config(server_round, RoundPlan(), False),
            server_round,
            "evaluate",
        )
        self.exchanges["evaluate"] = Exchange(
            server_round, keys.EVALUATE, self.sent_evaluate, messages, self.max_reply_bytes
        )
        return messages

    def _decode_evaluate(self, reply: Message, values_bytes: int) -> validation.EvaluateMetrics:
        validation.required_records(reply.content, [], [keys.METRICS])
        node = self.sent_evaluate[reply.metadata.src_node_id]
        checked = validation.evaluate_metrics(
            reply.content.metric_records[keys.METRICS],
            test_size=node.test_size,
            current_mask_version=self.model.mask_version,
        )
        self.messenger.ledger.record([node.node_id], self.model.mask_version)
        return checked

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        accepted = self._collect(server_round, "evaluate", replies, self._decode_evaluate)
        # a node without test data has nothing to contribute
        evaluated = [checked for checked in accepted if checked.samples > 0]
        if not evaluated:
            return None
        sizes = [checked.samples for checked in evaluated]
        result = MetricRecord(
            {
                "client-loss": float(np.average([c.loss for c in evaluated], weights=sizes)),
                "client-accuracy": float(np.average([c.accuracy for c in evaluated], weights=sizes)),
            }
        )
        if self.evaluator is None:
            self.row.loss = float(result["client-loss"])  # type: ignore[arg-type]
            self.row.accuracy = float(result["client-accuracy"])  # type: ignore[arg-type]
        return result

    # -- end of round ------------------------------------------------------------------------
    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Close the round: its server-side evaluation, its row and its checkpoint; Flower calls it last.

        The row is completed now (bytes, clocks, density). With ``evaluate.overlap``
        the evaluation then runs in the background while the next round trains, and
        the row is written when the next round ends (:meth:`finish_round`, which
        waits for the evaluation if it is still running, on that round's clock). The
        last round, and a round with a checkpoint due, wait for their own evaluation,
        so every checkpoint is written as its round ends, as without overlap.
        """
        self.finish_round()
        row = self.row if server_round == self.row.round else RoundRow(round=server_round)
        checkpoint = self._checkpoint_due(server_round)
        last = server_round == self.config.federation.rounds
        evaluation = None
        if self.evaluator is not None and (server_round % self.config.evaluate.every == 0 or last):
            background = self.config.evaluate.overlap and not (last or checkpoint)
            with self.clock.phase("evaluate"):  # all of it, or copying the model to evaluate
                evaluation = self.evaluator.start(self.model, background=background)
        closed = self.recorder.close(row, self.model, self.clock, self.client_phases)
        self.pending = PendingRound(closed, evaluation, checkpoint)
        if evaluation is not None and not evaluation.done():
            return None  # written by the next round's end_round
        return self.finish_round()

    def finish_round(self) -> MetricRecord | None:
        """Write the closed round's row with its evaluation, and its checkpoint if one is due."""
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        result = None
        if pending.evaluation is not None:
            with self.clock.phase("evaluate"):  # waiting for it, if it is still running
                evaluation: Evaluation = pending.evaluation.result()
            row = pending.closed.row
            row.accuracy, row.loss = evaluation.accuracy, evaluation.loss
            result = MetricRecord({"accuracy": evaluation.accuracy, "loss": evaluation.loss})
        self.recorder.write(pending.closed)
        if pending.checkpoint and self.results is not None:  # the round's own end: nothing changed since
            server_round = pending.closed.row.round
            folder = write_checkpoint(self.results.folder, server_round, self.state_dict(server_round))
            log(INFO, "round %d: checkpoint written to %s", server_round, folder)
        return result

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint_due(self, server_round: int) -> bool:
        """Whether a checkpoint is due after this round, and no node holds statistics the server lacks.

        A method may leave statistics on the nodes between rounds (PruneFL's sums
        under full participation: :meth:`~common.pruning.PruningMethod.clients_hold_state`);
        a restart would lose them, so a checkpoint waits for the next round after
        which the nodes hold none.
        """
        if server_round > 0:
            self.clients_hold_state = self.method.clients_hold_state(server_round)
        return self.results is not None and self.checkpoints.due(server_round, self.clients_hold_state)

    def state_dict(self, server_round: int) -> dict:
        """Everything needed to continue after ``server_round``, as arrays and scalars."""
        return {
            "round": server_round,
            "config": self.config.to_flat(),
            "layout": self.model.layout.fingerprint,
            "model": self.model.state_dict(),
            "communication": self.comm.state_dict(),
            "results": self.results.state_dict() if self.results is not None else {},
            "cost": {"bytes_per_value": self.cost.bytes_per_value},
            "method": self.method.state_dict(),
            "strategy": self.recorder.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the results files are truncated by the caller)."""
        self.model.load_state_dict(state["model"])
        self.comm.load_state_dict(state["communication"])
        self.cost = self.cost.with_bytes_per_value(float(state["cost"]["bytes_per_value"]))
        self.method.load_state_dict(state["method"])
        self.recorder.load_state_dict(state["strategy"])
        load_rng_state(state["rng"])


def task_record(
    spec: TaskSpec, method_entries: dict[str, ConfigValue], plan: RoundPlan | None = None
) -> ConfigRecord:
    """A task message's config: the task, the method's own entries, its plan's ``method.<key>`` entries."""
    config = ConfigRecord(dict(spec.to_flat()))
    for key, value in method_entries.items():
        config[key] = value
    for key, value in (plan.client_config if plan is not None else {}).items():
        config[f"{keys.METHOD_PREFIX}{key}"] = value
    return config
