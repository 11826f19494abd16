"""FedAvg over masked models: PruneFL's server as a Flower strategy.

``PruningFedAvg`` subclasses Flower's ``FedAvg`` and overrides its four hooks;
Flower's ``Strategy.start`` owns the round loop. Per round:

1. ``configure_train`` samples nodes reproducibly and sends each the kept values
   (plus the mask if its copy is stale) and the round's task;
2. ``aggregate_train`` decodes and checks every reply (outliers and replays
   included), aggregates the kept values (masked FedAvg, or a robust rule of
   :mod:`server.robust`), skips a round whose aggregate is poisoned, accumulates
   the importance statistic, each client's share bounded (:mod:`common.bounds`),
   and lets the pruning method reconfigure the mask;
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
from common.bounds import median_clip_scales
from common.config import AppConfig
from common.cost_model import CostModel
from common.pruning import ClientReport, ImportanceRequest, PruningMethod, RoundPlan
from common.task import TaskSpec
from common.training import Evaluation
from common.wire import WireError
from common.wire.codec import decode_mask, decode_payload

from . import validation
from .checkpoint import CheckpointPlanner, CheckpointSchedule, load_rng_state, rng_state, write_checkpoint
from .communication import CommunicationLog
from .evaluation import CentralEvaluator
from .global_model import GlobalModel
from .importance import ImportanceAccumulator
from .messenger import Messenger
from .nodes import NodeBook, NodeInfo
from .phases import ClientPhases, round_phases
from .progress import RunProgress
from .results import ResultsWriter, RoundRow
from .robust import aggregate_counters, aggregate_masked, robust_average
from .validation import Exchange, RejectedReply

STALE_MASK = "stale-mask"  # prefix of a client's error reason when it lacks the mask
NO_REPLY = "no reply to this round's message within federation.round-timeout"


@dataclass
class TrainReply:
    node: NodeInfo
    values: np.ndarray
    counters: np.ndarray
    importance: np.ndarray | None
    samples: int
    weight: float
    loss: float
    values_bytes: int = 0  # measured bytes of the reply's values
    mask: np.ndarray | None = None  # the client's own mask, when the round's plan asks for it
    extras: dict[str, float | list[float]] = field(default_factory=dict)  # method.<key> metrics
    phases: ClientPhases | None = None  # the client's own phase timings, when it reports them


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
            # configure_evaluate below owns evaluate.client-fraction; FedAvg's own fraction is
            # never read, and 0.0 would only make it warn about a setting the user did not make
            fraction_evaluate=config.evaluate.client_fraction or 1.0,
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
        # the kept values when the round's models were sent: with a lossy value format the
        # clients reply with their update, which is added to these exact values
        self.sent_values = np.zeros(0, dtype=np.float32)
        self.sent_evaluate: dict[int, NodeInfo] = {}
        self.round_started = time.monotonic()
        self.run_started = time.monotonic()
        self.modelled_elapsed = 0.0
        self.grid: Grid | None = None
        self.max_reply_bytes = validation.max_reply_bytes(model.layout)
        self.exchanges: dict[str, Exchange] = {}
        self.replays = validation.ReplayGuard()
        self.model_norm = 0.0  # ||kept values|| when the round's models were sent
        self.clients_hold_importance = False  # True after a round in which clients only accumulated
        self.checkpoints = CheckpointPlanner(
            CheckpointSchedule(config.output.checkpoint_every, config.federation.rounds)
        )
        self.clock = messenger.clock  # the server's phases (server/phases.py), reset every round
        self.client_phases: list[ClientPhases] = []
        self.progress = RunProgress()  # told of every round's row

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
            config[f"method.{key}"] = value
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
        self.clock.reset()
        self.client_phases = []
        with self.clock.phase("setup"):
            self.refresh_nodes(grid)
        fed = self.config.federation
        sampled = self.nodes.sample(server_round, fed.clients_per_round, fed.seed)
        self.plan = self.method.round_plan(server_round)
        self.sent = {node.node_id: node for node in sampled}
        self.row.clients = len(sampled)
        self.sent_values = self.model.kept_values()
        self.model_norm = float(np.linalg.norm(self.sent_values.astype(np.float64)))
        log(INFO, "round %d: training on %d clients", server_round, len(sampled))
        with self.clock.phase("encode"):
            messages = self.messenger.model_messages(
                sampled, keys.TRAIN, self.task_config(server_round, self.plan), server_round, "train"
            )
        self.exchanges["train"] = Exchange(
            server_round, keys.TRAIN, self.sent, messages, self.max_reply_bytes
        )
        return messages

    def _importance_positions(self) -> np.ndarray:
        layout = self.model.layout
        if self.config.train.momentum == 0 and self.config.train.weight_decay == 0:
            return layout.pruned_positions(self.model.mask)
        return layout.parameter_positions

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
        expects_upload = self.plan.importance is ImportanceRequest.UPLOAD
        metrics = content.metric_records[keys.METRICS]
        prefix = keys.METHOD_PREFIX
        extras = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        try:
            client_mask = decode_mask(record, self.model.layout)
            if client_mask is not None and not self.plan.client_masks:
                raise WireError("a client may not change the mask")
            if client_mask is None and self.plan.client_masks:
                raise WireError("this round's clients must reply with their own mask")
            wire = self.config.wire
            payload = decode_payload(
                record,
                self.model.layout,
                self.model.mask if client_mask is None else client_mask,
                importance_length=len(self._importance_positions()) if expects_upload else None,
                reference=self.sent_values if client_mask is None and wire.format().lossy_values else None,
                expected=wire.format(),
            )
        except WireError as exc:
            raise RejectedReply("bad-payload", str(exc)) from exc
        try:
            self.method.check_report(extras)  # type: ignore[arg-type]
        except ValueError as exc:
            raise RejectedReply("bad-metric", str(exc)) from exc
        validation.finite_array("values", payload.values)
        if payload.importance is not None:
            validation.finite_array("importance", payload.importance, nonnegative=True)
        start = self.sent_values if client_mask is None else self.model.floats[client_mask]
        validation.bounded_update(
            payload.values, start, self.model_norm, self.config.federation.outlier_factor
        )
        return TrainReply(
            node,
            payload.values,
            payload.counters,
            payload.importance,
            samples,
            weight,
            loss,
            mask=client_mask,
            extras=extras,
            phases=validation.client_phases(metrics),
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[TrainReply] = []
        exchange = self.exchanges["train"]
        for reply in replies:
            node_id = exchange.sender(reply)
            with self.clock.phase("decode"):
                measured = self.messenger.log_reply(reply, server_round, "train", node_id)
                try:
                    exchange.accept_origin(reply, measured.total)
                    if reply.has_error():
                        self._failed(server_round, "train", node_id, reply.error.reason)
                        continue
                    accepted.append(self.decode_train_reply(reply))
                    accepted[-1].values_bytes = measured.values
                except RejectedReply as exc:
                    self._reject(server_round, "train", node_id, exc)
        self.client_phases = [r.phases for r in accepted if r.phases is not None]
        for node_id in sorted(exchange.missing()):
            self._failed(server_round, "train", node_id, NO_REPLY)
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
            self.nodes.mark_stale([node_id])

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
        if self.plan.client_masks:
            masks = [r.mask for r in accepted]
            floats = robust_average(model.floats, masks, values, weights, **rule)  # type: ignore[arg-type]
        else:
            floats = aggregate_masked(model.floats, model.mask, values, weights, **rule)  # type: ignore[arg-type]
        ints = aggregate_counters([r.counters for r in accepted], weights, fed.aggregation)
        for r in accepted:
            r.node.mask_version = model.mask_version
        poisoned = self._poisoned(floats)
        if poisoned:
            log(
                WARNING,
                "round %d: the aggregate %s; the round is skipped and the model stays as it was",
                server_round,
                poisoned,
            )
            return False
        self._accumulate_importance(server_round, accepted)
        model.floats, model.ints = floats, ints
        return True

    def _poisoned(self, floats: np.ndarray) -> str:
        """Why the aggregate ``floats`` must not be used ("" when it may be)."""
        if not np.isfinite(floats).all():
            return f"holds {int(np.count_nonzero(~np.isfinite(floats)))} NaN or Inf values"
        step = float(np.linalg.norm(floats.astype(np.float64) - self.model.floats))
        factor = self.config.federation.outlier_factor
        if step > factor * self.model_norm:
            return (
                f"moves the model by {step:.4g}, more than federation.outlier-factor = {factor:g} "
                f"times its norm {self.model_norm:.4g}"
            )
        return ""

    def _accumulate_importance(self, server_round: int, accepted: list[TrainReply]) -> None:
        """Add the round's importance contributions, each client's bounded by the round's median.

        Lossy formats: a reply is sent + the client's update (w_c - w_start), w_start the
        rounded values it received, so the rebuilt importance n ((w_c - w_start) / lr)^2 is
        the client's own movement, and the average update lands on the exact float32 copy
        (sub-ulp progress is kept across rounds instead of being rounded away).

        Each client's uploaded importance is bounded (:func:`common.bounds.median_clip_scales`):
        its sum over positions is at most ``federation.statistic-factor`` times the round's
        median sum, so one client weighs at most as much as that many honest ones. The part
        rebuilt from a client's update follows the aggregation rule: under ``mean`` the
        update is used whole and so is its rebuilt importance (honest updates' squared norms
        differ by over 50x between clients of one round, so a median bound would change
        honest runs); under the robust rules it is bounded the same way as uploads.
        """
        if self.plan.importance is ImportanceRequest.OFF:
            return
        model, start_values = self.model, self.sent_values
        lr = self.config.train.lr_at(server_round)
        plain = self.config.train.momentum == 0 and self.config.train.weight_decay == 0
        positions = self._importance_positions()
        rebuilt = [
            self.importance.rebuild(model.mask, start_values, r.values, r.samples, lr)
            if plain and r.mask is None
            else None
            for r in accepted
        ]
        uploaded = [r.importance for r in accepted]
        rebuilt_scales = [1.0] * len(accepted)
        if self.config.federation.aggregation != "mean":
            rebuilt_scales = self._statistic_scales(server_round, "rebuilt importance", accepted, rebuilt)
        upload_scales = self._statistic_scales(server_round, "uploaded importance", accepted, uploaded)
        for part, scale, upload, upload_scale in zip(
            rebuilt, rebuilt_scales, uploaded, upload_scales, strict=True
        ):
            if part is not None:
                self.importance.add_rebuilt(model.mask, part * scale if scale < 1 else part)
            if upload is not None:
                self.importance.add_upload(
                    positions, upload.astype(np.float64) * upload_scale if upload_scale < 1 else upload
                )

    def _statistic_scales(
        self,
        server_round: int,
        what: str,
        accepted: list[TrainReply],
        parts: list[np.ndarray | None],
    ) -> list[float]:
        """Each reply's scale for its ``part`` (1.0 where it has none), logged where below 1."""
        present = [i for i, part in enumerate(parts) if part is not None]
        sizes = [float(np.sum(parts[i], dtype=np.float64)) for i in present]  # type: ignore[arg-type]
        factor = self.config.federation.statistic_factor
        scales = [1.0] * len(parts)
        for i, scale in zip(present, median_clip_scales(sizes, factor), strict=True):
            scales[i] = float(scale)
            if scale < 1:
                log(
                    WARNING,
                    "round %d: %s of node %d scaled by %.3g to federation.statistic-factor = %g "
                    "times the round's median",
                    server_round,
                    what,
                    accepted[i].node.node_id,
                    scale,
                    factor,
                )
        return scales

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
        plus that client's measured bytes (down and up) over the link. c_comm comes
        from the value bytes of the replies that were accepted, so that a rejected
        or missing reply does not move the cost model (nor, through it, the mask).
        """
        compute = self.cost.compute_time(self.model.kept_per_layer())
        per_node = [self.comm.bytes_of(server_round, "train", node_id) for node_id in self.sent]
        transfer = max((self.cost.transfer_time(b) for b in per_node), default=0.0)
        self.row.modelled_round_time_s = compute + transfer
        if accepted:
            down = self.comm.rounds[server_round].down
            bytes_per_client = down.measured.values / down.messages + float(
                np.mean([r.values_bytes for r in accepted])
            )
            kept = int(np.count_nonzero(self.model.mask))
            self.cost = self.cost.with_bytes_per_value(bytes_per_client / kept)

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
            targets, keys.EVALUATE, self.task_config(server_round, RoundPlan()), server_round, "evaluate"
        )
        self.exchanges["evaluate"] = Exchange(
            server_round, keys.EVALUATE, self.sent_evaluate, messages, self.max_reply_bytes
        )
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        losses, accuracies, sizes = [], [], []
        exchange = self.exchanges["evaluate"]
        for reply in replies:
            node_id = exchange.sender(reply)
            measured = self.messenger.log_reply(reply, server_round, "evaluate", node_id)
            try:
                exchange.accept_origin(reply, measured.total)
                if reply.has_error():
                    self._failed(server_round, "evaluate", node_id, reply.error.reason)
                    continue
                validation.required_records(reply.content, [], [keys.METRICS])
                checked = validation.evaluate_metrics(
                    reply.content.metric_records[keys.METRICS],
                    test_size=self.sent_evaluate[node_id].test_size,
                    current_mask_version=self.model.mask_version,
                )
            except RejectedReply as exc:
                self._reject(server_round, "evaluate", node_id, exc)
                continue
            self.sent_evaluate[node_id].mask_version = self.model.mask_version
            if checked.samples > 0:  # a node without test data has nothing to contribute
                losses.append(checked.loss)
                accuracies.append(checked.accuracy)
                sizes.append(checked.samples)
        for node_id in sorted(exchange.missing()):
            self._failed(server_round, "evaluate", node_id, NO_REPLY)
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
            with self.clock.phase("evaluate"):
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
            self.results.append_layers(server_round, self.model.layout, self.model.kept_per_layer())
            if server_round > 0:
                phases = round_phases(server_round, row.wall_time_s, self.clock.seconds, self.client_phases)
                self.results.append_phases(phases)
        self._checkpoint_if_due(server_round)
        self.progress.round_ended(row)
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

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint_if_due(self, server_round: int) -> None:
        """Write a checkpoint when one is due and no client holds state the server lacks.

        Under full participation PruneFL's clients keep their importance sums between
        reconfigurations (``ACCUMULATE`` rounds); a restart would lose them, so a
        checkpoint waits for the next round in which they upload and clear them.
        """
        request = self.plan.importance
        if request is ImportanceRequest.ACCUMULATE:
            self.clients_hold_importance = True
        elif request is ImportanceRequest.UPLOAD:
            self.clients_hold_importance = False
        if self.results is None or not self.checkpoints.due(server_round, self.clients_hold_importance):
            return
        folder = write_checkpoint(self.results.folder, server_round, self.state_dict(server_round))
        log(INFO, "round %d: checkpoint written to %s", server_round, folder)

    def state_dict(self, server_round: int) -> dict:
        """Everything needed to continue after ``server_round``, as arrays and scalars."""
        rows = [dataclasses.asdict(row) for row in self.rows]
        return {
            "round": server_round,
            "config": self.config.to_flat(),
            "layout": self.model.layout.fingerprint,
            "model": self.model.state_dict(),
            "importance": self.importance.state_dict(),
            "communication": self.comm.state_dict(),
            "results": self.results.state_dict() if self.results is not None else {},
            "cost": {"bytes_per_value": self.cost.bytes_per_value},
            "method": self.method.state_dict(),
            "strategy": {
                "modelled_elapsed": self.modelled_elapsed,
                "elapsed_s": time.monotonic() - self.run_started,
                "clients_hold_importance": self.clients_hold_importance,
                "rows": rows,
            },
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the results files are truncated by the caller)."""
        self.model.load_state_dict(state["model"])
        self.importance.load_state_dict(state["importance"])
        self.comm.load_state_dict(state["communication"])
        self.cost = self.cost.with_bytes_per_value(float(state["cost"]["bytes_per_value"]))
        self.method.load_state_dict(state["method"])
        mine = state["strategy"]
        self.modelled_elapsed = float(mine["modelled_elapsed"])
        self.run_started = time.monotonic() - float(mine["elapsed_s"])
        self.clients_hold_importance = bool(mine["clients_hold_importance"])
        self.rows = [RoundRow(**row) for row in mine["rows"]]
        load_rng_state(state["rng"])
