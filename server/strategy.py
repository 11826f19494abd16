"""FedAvg over masked models: PruneFL's server as a Flower strategy.

``PruningFedAvg`` subclasses Flower's ``FedAvg`` and overrides its four hooks;
Flower's ``Strategy.start`` owns the round loop. Per round:

1. ``configure_train`` samples nodes reproducibly and sends each the kept values
   (plus the mask if its copy is stale) and the round's task;
2. ``aggregate_train`` decodes and checks every reply, averages the kept values
   (masked FedAvg), accumulates the importance statistic and lets the pruning
   method reconfigure the mask;
3. ``configure_evaluate`` / ``aggregate_evaluate`` run optional federated
   evaluation on a share of the clients;
4. :meth:`PruningFedAvg.end_round`, passed to ``start`` as ``evaluate_fn``,
   evaluates the global model on the server's test set and writes the round's row.

Every message's bytes are measured on the way (see :mod:`server.messenger`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from common import keys
from common.config import AppConfig
from common.cost_model import CostModel
from common.pruning import ClientReport, ImportanceRequest, PruningMethod, RoundPlan
from common.task import TaskSpec
from common.training import Evaluation
from common.wire import WireError
from common.wire.codec import decode_mask, decode_payload

from .aggregation import average_counters, masked_fedavg, per_position_fedavg
from .communication import CommunicationLog
from .evaluation import CentralEvaluator
from .global_model import GlobalModel
from .importance import ImportanceAccumulator
from .messenger import Messenger
from .nodes import NodeBook, NodeInfo
from .results import ResultsWriter, RoundRow

STALE_MASK = "stale-mask"  # prefix of a client's error reason when it lacks the mask


@dataclass
class TrainReply:
    node: NodeInfo
    values: np.ndarray
    counters: np.ndarray
    importance: np.ndarray | None
    samples: int
    weight: float
    loss: float
    mask: np.ndarray | None = None  # the client's own mask, when the round's plan asks for it
    extras: dict[str, float | list[float]] = field(default_factory=dict)  # method.<key> metrics


class RejectedReply(ValueError):
    """A reply that cannot be aggregated; the message says why."""


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


class PruningFedAvg(FedAvg):
    """Masked FedAvg with a pluggable pruning method (PruneFL by default)."""

    def __init__(
        self,
        config: AppConfig,
        model: GlobalModel,
        method: PruningMethod,
        cost: CostModel,
        nodes: NodeBook,
        messenger: Messenger,
        comm: CommunicationLog,
        results: ResultsWriter | None,
        evaluator: CentralEvaluator | None,
        task_defaults: TaskSpec,
    ) -> None:
        fed = config.federation
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=config.evaluate.client_fraction,
            min_train_nodes=fed.min_clients,
            min_evaluate_nodes=1 if config.evaluate.client_fraction > 0 else 0,
            min_available_nodes=fed.min_clients,
            weighted_by_key=keys.NUM_EXAMPLES,
            arrayrecord_key=keys.ARRAYS,
            configrecord_key=keys.CONFIG,
        )
        self.config = config
        self.model = model
        self.method = method
        self.cost = cost
        self.nodes = nodes
        self.messenger = messenger
        self.comm = comm
        self.results = results
        self.evaluator = evaluator
        self.task_defaults = task_defaults
        self.importance = ImportanceAccumulator(model.layout)
        self.rows: list[RoundRow] = []
        self.row = RoundRow(round=0)
        self.plan = RoundPlan()
        self.sent: dict[int, NodeInfo] = {}
        self.sent_evaluate: dict[int, NodeInfo] = {}
        self.round_started = time.monotonic()
        self.run_started = time.monotonic()
        self.modelled_elapsed = 0.0
        self.grid: Grid | None = None

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
    def task_config(self, server_round: int, plan: RoundPlan) -> ConfigRecord:
        """The round's task for every sampled client."""
        train = self.config.train
        spec = dataclasses.replace(
            self.task_defaults,
            server_round=server_round,
            lr=train.lr_at(server_round),
            importance=plan.importance.value,
            mask_version=self.model.mask_version,
        )
        config = ConfigRecord(dict(spec.to_flat()))
        for key, value in plan.client_config.items():
            config[f"{keys.METHOD_PREFIX}{key}"] = value
        return config

    def refresh_nodes(self, grid: Grid) -> None:
        self.messenger.describe_new_nodes(
            grid, ConfigRecord(dict(self.task_defaults.to_flat())), self.config.federation.round_timeout
        )

    # -- training -----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.grid = grid
        self.round_started = time.monotonic()
        self.row = RoundRow(round=server_round)
        self.refresh_nodes(grid)
        fed = self.config.federation
        sampled = self.nodes.sample(server_round, fed.clients_per_round, fed.seed)
        self.plan = self.method.round_plan(server_round)
        self.sent = {node.node_id: node for node in sampled}
        self.row.clients = len(sampled)
        log(INFO, "round %d: training on %d clients", server_round, len(sampled))
        return self.messenger.model_messages(
            sampled, keys.TRAIN, self.task_config(server_round, self.plan), server_round, "train"
        )

    def _importance_positions(self) -> np.ndarray:
        layout = self.model.layout
        if self.config.train.momentum == 0 and self.config.train.weight_decay == 0:
            return layout.pruned_positions(self.model.mask)
        return layout.parameter_positions

    def decode_train_reply(self, reply: Message) -> TrainReply:
        """Check one training reply against what was sent; raise RejectedReply if unusable."""
        node_id = reply.metadata.src_node_id
        node = self.sent.get(node_id)
        if node is None:
            raise RejectedReply(f"node {node_id} was not asked to train this round")
        content = reply.content
        if keys.ARRAYS not in content.array_records or keys.METRICS not in content.metric_records:
            raise RejectedReply("reply lacks its arrays or metrics record")
        metrics = content.metric_records[keys.METRICS]
        try:
            samples = int(metrics[keys.SAMPLES_PROCESSED])
            weight = float(metrics[keys.NUM_EXAMPLES])
            loss = float(metrics[keys.TRAIN_LOSS])
            version = int(metrics[keys.MASK_VERSION])
        except (KeyError, TypeError, ValueError) as exc:
            raise RejectedReply(f"metrics record incomplete or malformed: {exc!r}") from exc
        if version != self.model.mask_version:
            raise RejectedReply(f"trained under mask version {version}, not {self.model.mask_version}")
        if not (samples > 0 and math.isfinite(weight) and weight > 0):
            raise RejectedReply(f"samples-processed {samples} / num-examples {weight} must be positive")
        record = content.array_records[keys.ARRAYS]
        expects_upload = self.plan.importance is ImportanceRequest.UPLOAD
        prefix = keys.METHOD_PREFIX
        extras = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        try:
            client_mask = decode_mask(record, self.model.layout)
            if client_mask is not None and not self.plan.client_masks:
                raise WireError("a client may not change the mask")
            if client_mask is None and self.plan.client_masks:
                raise WireError("this round's clients must reply with their own mask")
            payload = decode_payload(
                record,
                self.model.layout,
                self.model.mask if client_mask is None else client_mask,
                importance_length=len(self._importance_positions()) if expects_upload else None,
            )
            self.method.check_report(extras)  # type: ignore[arg-type]
        except (WireError, ValueError) as exc:
            raise RejectedReply(str(exc)) from exc
        if not np.isfinite(payload.values).all():
            raise RejectedReply("values contain NaN or Inf")
        if payload.importance is not None and not (
            np.isfinite(payload.importance).all() and (payload.importance >= 0).all()
        ):
            raise RejectedReply("importance must be finite and non-negative")
        return TrainReply(
            node,
            payload.values,
            payload.counters,
            payload.importance,
            samples,
            weight,
            loss,
            client_mask,
            extras,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[TrainReply] = []
        answered: set[int] = set()
        for reply in replies:
            node_id = reply.metadata.src_node_id
            answered.add(node_id)
            self.messenger.log(reply, server_round, "train", "up", node_id)
            if reply.has_error():
                self.row.failures += 1
                log(WARNING, "round %d: node %d failed: %s", server_round, node_id, reply.error.reason)
                if reply.error.reason.startswith(STALE_MASK):
                    self.nodes.mark_stale([node_id])
                continue
            try:
                accepted.append(self.decode_train_reply(reply))
            except RejectedReply as exc:
                self.row.rejected += 1
                log(WARNING, "round %d: reply of node %d rejected: %s", server_round, node_id, exc)
        self.row.failures += len(set(self.sent) - answered)
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
        self._aggregate(server_round, accepted)
        self._reconfigure(server_round, accepted)
        self.row.train_loss = float(
            np.average([r.loss for r in accepted], weights=[r.weight for r in accepted])
        )
        metrics = MetricRecord({"train-loss": self.row.train_loss, "density": self.model.density})
        return self.model.to_arrayrecord(), metrics

    def _aggregate(self, server_round: int, accepted: list[TrainReply]) -> None:
        model, weights = self.model, [r.weight for r in accepted]
        start_values = model.kept_values()
        if self.plan.importance is not ImportanceRequest.OFF:
            lr = self.config.train.lr_at(server_round)
            plain = self.config.train.momentum == 0 and self.config.train.weight_decay == 0
            positions = self._importance_positions()
            for r in accepted:
                if plain:
                    self.importance.add_from_update(model.mask, start_values, r.values, r.samples, lr)
                if r.importance is not None:
                    self.importance.add_upload(positions, r.importance)
        if self.plan.client_masks:
            masks = [r.mask for r in accepted]
            model.floats = per_position_fedavg(model.floats, masks, [r.values for r in accepted], weights)
        else:
            model.floats = masked_fedavg(model.floats, model.mask, [r.values for r in accepted], weights)
        model.ints = average_counters([r.counters for r in accepted], weights)
        for r in accepted:
            r.node.mask_version = model.mask_version

    def _reconfigure(self, server_round: int, accepted: list[TrainReply]) -> None:
        uses_importance = self.plan.importance is not ImportanceRequest.OFF
        reports = [ClientReport(r.node.partition_id, r.weight, r.mask, r.extras) for r in accepted]
        merged = self.method.merge_clients(server_round, self.model.floats, self.model.mask, reports)
        reconfigured = self.method.reconfigure(
            server_round,
            self.model.floats,
            self.model.mask if merged is None else merged,
            self.importance.values if uses_importance else None,
            self.cost,
        )
        new_mask = reconfigured if reconfigured is not None else merged
        if new_mask is None:
            return
        self.importance.take()
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

        The round lasts as long as its slowest client: E modelled local iterations
        plus that client's measured bytes (down and up) over the link.
        """
        compute = self.cost.compute_time(self.model.kept_per_layer())
        per_node = [self.comm.bytes_of(server_round, "train", node_id) for node_id in self.sent]
        transfer = max((self.cost.transfer_time(b) for b in per_node), default=0.0)
        self.row.modelled_round_time_s = compute + transfer
        if accepted:
            values = self.comm.rounds[server_round]
            bytes_per_client = (values.down.measured.values + values.up.measured.values) / len(self.sent)
            kept = int(np.count_nonzero(self.model.mask))
            self.cost = self.cost.with_bytes_per_value(bytes_per_client / kept)

    # -- federated evaluation --------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        fraction = self.config.evaluate.client_fraction
        if fraction == 0 or server_round % self.config.evaluate.every != 0:
            return []
        count = max(1, math.ceil(fraction * len(self.nodes)))
        targets = self.nodes.sample(server_round, count, self.config.federation.seed, stream=1)
        self.sent_evaluate = {n.node_id: n for n in targets}
        return self.messenger.model_messages(
            targets, keys.EVALUATE, self.task_config(server_round, RoundPlan()), server_round, "evaluate"
        )

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        losses, accuracies, sizes = [], [], []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            self.messenger.log(reply, server_round, "evaluate", "up", node_id)
            if reply.has_error():
                log(
                    WARNING,
                    "round %d: evaluation on node %d failed: %s",
                    server_round,
                    node_id,
                    reply.error.reason,
                )
                if reply.error.reason.startswith(STALE_MASK):
                    self.nodes.mark_stale([node_id])
                continue
            try:
                metrics = reply.content.metric_records[keys.METRICS]
                n = int(metrics[keys.NUM_EXAMPLES])
                loss, accuracy = float(metrics[keys.EVAL_LOSS]), float(metrics[keys.EVAL_ACCURACY])
            except (KeyError, TypeError, ValueError) as exc:
                log(WARNING, "round %d: evaluation reply of node %d rejected: %r", server_round, node_id, exc)
                continue
            if n > 0 and math.isfinite(loss) and 0 <= accuracy <= 1:
                losses.append(loss)
                accuracies.append(accuracy)
                sizes.append(n)
                if node_id in self.sent_evaluate:
                    self.sent_evaluate[node_id].mask_version = self.model.mask_version
        if not sizes:
            return None
        result = MetricRecord(
            {
                "client-loss": float(np.average(losses, weights=sizes)),
                "client-accuracy": float(np.average(accuracies, weights=sizes)),
            }
        )
        if self.evaluator is None:
            self.row.loss = float(result["client-loss"])  # type: ignore[arg-type]
            self.row.accuracy = float(result["client-accuracy"])  # type: ignore[arg-type]
        return result

    # -- end of round ------------------------------------------------------------------------
    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Server-side evaluation and the round's row; Flower calls it last in each round."""
        row = self.row if server_round == self.row.round else RoundRow(round=server_round)
        result = None
        last = server_round == self.config.federation.rounds
        if self.evaluator is not None and (server_round % self.config.evaluate.every == 0 or last):
            evaluation: Evaluation = self.evaluator(self.model)
            row.accuracy, row.loss = evaluation.accuracy, evaluation.loss
            result = MetricRecord({"accuracy": evaluation.accuracy, "loss": evaluation.loss})
        row.density = self.model.density
        traffic = self.comm.rounds[server_round]
        down, up = traffic.down, traffic.up
        row.bytes_down, row.bytes_up = down.measured.total, up.measured.total
        row.values_down, row.mask_down, row.other_down = (
            down.measured.values,
            down.measured.mask,
            down.measured.other + down.measured.importance,
        )
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
        if self.results is not None:
            self.results.append_round(row)
        log(
            INFO,
            "[round %d/%d] accuracy %s | density %.4f | down %s up %s (bound %s, dense %s) | %.1f s",
            server_round,
            self.config.federation.rounds,
            "n/a" if math.isnan(row.accuracy) else f"{row.accuracy:.4f}",
            row.density,
            format_bytes(row.bytes_down),
            format_bytes(row.bytes_up),
            format_bytes(row.bound_bytes),
            format_bytes(row.dense_bytes),
            row.wall_time_s,
        )
        return result
