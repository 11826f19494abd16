"""Where and how the mask before round 1 is computed, and what it cost.

A method that needs data for its initial mask (PruneFL's initial pruning) runs on
one client's data, either

* on the server, which loads that client's partition itself (simulation only:
  the server must hold the data), or
* on the designated node, through a ``train.initial_pruning`` message that carries
  the dense model, the method's settings and the cost model; the node replies
  with the kept values and the new mask.

Both paths call the same :meth:`~common.pruning.PruningMethod.initial_mask`. The
report says which ran, the density reached, the wall-clock and modelled time and
the bytes exchanged; all of it is charged to round 0 of the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
import torch
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.supercore import log

from common import keys
from common.config import AppConfig
from common.cost_model import CostModel
from common.device import resolve_device
from common.initial_data import initial_data_for
from common.pruning import InitialDataSpec, InitialPruning, PruningMethod
from common.pruning.base import settings_dict
from common.settings import Scalar
from common.task import TaskSpec
from common.wire import WireError
from common.wire.codec import decode_mask, decode_payload

from .global_model import GlobalModel
from .heartbeat import PROGRESS_INTERVAL_S, Heartbeat
from .messenger import Messenger
from .nodes import NodeBook
from .progress import RunProgress
from .replies import NO_REPLY, collect_replies
from .validation import (
    MAX_COUNT,
    Exchange,
    RejectedReply,
    finite_array,
    float_metric,
    int_metric,
    max_reply_bytes,
    required_records,
)


class InitialPruningError(RuntimeError):
    """Initial pruning could not run where the configuration asked."""


@dataclass
class InitialPruningReport:
    where: str  # "none", "server" or "client"
    partition_id: int = -1
    node_id: int = -1
    density: float = 1.0
    seconds: float = 0.0
    modelled_seconds: float = 0.0
    iterations: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    log: dict[str, Scalar | list[float]] = field(default_factory=dict)


def run_initial_pruning(
    config: AppConfig,
    method: PruningMethod,
    model: GlobalModel,
    cost: CostModel,
    task: TaskSpec,
    grid: Grid,
    nodes: NodeBook,
    messenger: Messenger,
    progress: RunProgress | None = None,
) -> InitialPruningReport:
    """Compute the initial mask where the configuration says, and adopt it (``progress`` observes)."""
    if not method.needs_initial_data():
        _adopt(model, method.initial_mask(model.floats, model.mask, None))  # weights too, if it set them
        return InitialPruningReport(where="none", density=model.density)
    spec = method.initial_data_spec()
    where, partition_id = spec.where, spec.partition_id
    started = time.monotonic()
    progress = progress or RunProgress()
    progress.initial_pruning_started(where, partition_id)
    with Heartbeat(PROGRESS_INTERVAL_S, progress_line(where, partition_id, config.federation.round_timeout)):
        if where == "server":
            num_partitions = nodes.num_partitions(default=config.simulation.num_clients)
            device = resolve_device(config.train.device)
            report = _on_server(method, model, cost, task, spec, num_partitions, device, progress)
        else:
            report = _on_client(config, method, model, cost, task, grid, nodes, messenger, spec)
    report.seconds = time.monotonic() - started
    traffic = messenger.comm.rounds[0]
    report.bytes_down, report.bytes_up = traffic.down.measured.total, traffic.up.measured.total
    if where == "client":
        report.modelled_seconds += cost.transfer_time(report.bytes_down + report.bytes_up)
    log(
        INFO,
        "initial pruning ran on the %s (partition %d): density %.4f after %s IP rounds, "
        "%.1f s wall-clock, %.1f s modelled",
        where,
        partition_id,
        model.density,
        report.log.get("rounds", "?"),
        report.seconds,
        report.modelled_seconds,
    )
    return report


def progress_line(where: str, partition_id: int, round_timeout: float) -> Callable[[float], str]:
    """The line logged while initial pruning runs, given the seconds it has run so far."""

    def line(elapsed: float) -> str:
        if where == "server":
            return f"initial pruning on the server (partition {partition_id}): running for {elapsed:.0f} s"
        return (
            f"initial pruning on the node of partition {partition_id}: waiting for its reply for "
            f"{elapsed:.0f} s (federation.round-timeout {round_timeout:.0f} s)"
        )

    return line


def _checked_reply(
    reply: Message, model: GlobalModel, messenger: Messenger
) -> tuple[np.ndarray, np.ndarray, ConfigRecord, int, float]:
    """The mask, kept values, log, iterations and modelled seconds of an initial-pruning reply.

    Raises :class:`~server.validation.RejectedReply` (see :mod:`server.validation`).
    """
    required_records(reply.content, [keys.ARRAYS], [])
    if keys.CONFIG not in reply.content.config_records:
        raise RejectedReply("missing", f"no config record {keys.CONFIG!r}")
    record = reply.content.array_records[keys.ARRAYS]
    try:
        mask = decode_mask(record, model.layout, messenger.ledger.mask)
        if mask is None:
            raise WireError("the reply carries no mask")
        payload = decode_payload(record, model.layout, mask)
    except WireError as exc:
        raise RejectedReply("bad-payload", str(exc)) from exc
    finite_array("values", payload.values)
    info = reply.content.config_records[keys.CONFIG]
    iterations = int_metric(info, "iterations", 0, MAX_COUNT)
    modelled = float_metric(info, "modelled-seconds", 0.0)
    return mask, payload.values, info, iterations, modelled


@dataclass
class IPReply:
    """A usable initial-pruning reply: its mask, kept values, log, iterations, modelled seconds."""

    mask: np.ndarray
    values: np.ndarray
    info: ConfigRecord
    iterations: int
    modelled: float


def _adopt(model: GlobalModel, result: InitialPruning) -> None:
    if result.floats is not None:
        model.floats = result.floats.astype(np.float32)
    model.set_mask(result.mask)


def _on_server(
    method: PruningMethod,
    model: GlobalModel,
    cost: CostModel,
    task: TaskSpec,
    spec: InitialDataSpec,
    num_partitions: int,
    device: torch.device,
    progress: RunProgress,
) -> InitialPruningReport:
    """Initial pruning on the data of partition ``spec.partition_id``, loaded by the server."""
    data = initial_data_for(
        task,
        num_partitions,
        spec.partition_id,
        model.floats,
        model.ints,
        spec.batches,
        spec.batch_size,
        cost,
        device,
    )
    data.on_step = progress.initial_pruning_step
    result = method.initial_mask(model.floats, model.mask, data)
    _adopt(model, result)
    return InitialPruningReport(
        where="server",
        partition_id=spec.partition_id,
        density=model.density,
        modelled_seconds=float(result.log.get("modelled-seconds", 0.0)),  # type: ignore[arg-type]
        iterations=result.iterations,
        log=result.log,
    )


def _on_client(
    config: AppConfig,
    method: PruningMethod,
    model: GlobalModel,
    cost: CostModel,
    task: TaskSpec,
    grid: Grid,
    nodes: NodeBook,
    messenger: Messenger,
    spec: InitialDataSpec,
) -> InitialPruningReport:
    node = nodes.find(spec.partition_id)  # lazily described, it is described now
    if node is None:
        raise InitialPruningError(
            f"no connected node holds partition {spec.partition_id} "
            f"({config.method.PREFIX}.ip-client); connected partitions: "
            f"{sorted(n.partition_id for n in nodes.ordered())}"
        )
    ip_config = ConfigRecord(dict(task.to_flat()))
    for key, value in method.task_entries(0, training=False).items():
        ip_config[key] = value
    # the node keeps the mask it computes under the version the server will give it
    next_version = model.mask_version + 1
    ip_config[keys.IP_MASK_VERSION] = next_version
    ip_config["method"] = config.pruning.method
    ip_config["ip-batches"] = spec.batches
    ip_config["ip-batch-size"] = spec.batch_size
    for key, value in {**settings_dict(config.method), **cost.to_config()}.items():
        ip_config[key] = value
    (message,) = messenger.model_messages([node], keys.INITIAL_PRUNING, ip_config, 0, "initial-pruning")
    replies = list(grid.send_and_receive([message], timeout=config.federation.round_timeout))
    exchange = Exchange(
        0, keys.INITIAL_PRUNING, {node.node_id: node}, [message], max_reply_bytes(model.layout)
    )
    problems: list[str] = []

    def failed(node_id: int, reason: str) -> None:
        if reason == NO_REPLY and not problems:
            raise InitialPruningError(f"node {node_id} did not answer within federation.round-timeout")
        if reason != NO_REPLY:
            raise InitialPruningError(f"node {node_id} failed initial pruning: {reason}")

    def decode(reply: Message, values_bytes: int) -> IPReply:
        return IPReply(*_checked_reply(reply, model, messenger))

    accepted = collect_replies(
        exchange,
        replies,
        messenger,
        "initial-pruning",
        decode,
        failed,
        lambda node_id, exc: problems.append(str(exc)),
    )
    if not accepted:
        raise InitialPruningError(f"node {node.node_id} sent no usable reply: {'; '.join(problems)}")
    ip = accepted[0]
    floats = model.floats.copy()
    floats[ip.mask] = ip.values
    _adopt(model, InitialPruning(mask=ip.mask, floats=floats, iterations=ip.iterations))
    # the node holds its mask as next_version; if the mask did not change, that version
    # does not exist here and the node is sent the mask with its first message
    if model.mask_version == next_version:
        messenger.ledger.record([node.node_id], next_version)
    return InitialPruningReport(
        where="client",
        partition_id=spec.partition_id,
        node_id=node.node_id,
        density=model.density,
        modelled_seconds=ip.modelled,
        iterations=ip.iterations,
        log={k: v for k, v in ip.info.items() if k not in ("iterations", "modelled-seconds")},  # type: ignore[misc]
    )
