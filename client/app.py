"""The ClientApp: one handler per message type.

=============================  ================================================
message type                   what the node does
=============================  ================================================
``query.describe``             reports its partition id, data sizes,
                               samples per class and the device profile it
                               names (node config ``profile``), if any
``train``                      trains E steps under the mask (or under its
                               sub-mask within the round's budget), replies
                               with the kept values (and the method's
                               statistics)
``train.initial_pruning``      runs the method's initial pruning on its data,
                               replies with the kept values and the new mask
``evaluate``                   evaluates the model on its held-out split
=============================  ================================================

Every setting of a round arrives in the message (see :class:`common.task.TaskSpec`);
the SuperNode's ``--node-config`` gives ``partition-id``, ``num-partitions`` and
optionally ``data-dir``, ``device`` and ``profile`` (the device profile the node
reports in its description, for the server's modelled round time). A message
the node cannot use gets an error reply that says why; the node itself never
crashes on one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from common import keys
from common.allocator import keep_freed_memory
from common.budget import BUDGET_KEEP, BUDGET_PARTITIONS, fraction_for
from common.cost_model import CostModel
from common.data import DATASETS, ClientSplit, DatasetSource, label_histogram
from common.device import resolve_device
from common.initial_data import initial_data_for
from common.layout import ModelLayout
from common.models import MODELS, build_model
from common.pruning import METHODS, MethodEnv, PruningMethod
from common.settings import ConfigError
from common.task import TaskSpec, client_data
from common.training import SgdSettings, evaluate, load_flat, make_loss
from common.wire import WireError, codec
from common.wire.codec import ModelPayload, decode_payload, encode_payload

from .node_state import NodeState, StaleMaskError

THREADS_ENV = "FEDPRUNE_CLIENT_THREADS"
# The device this node trains on: its --node-config device=..., else this variable
# (fedprune simulate sets it from train.device), else auto (common/device.py).
DEVICE_ENV = "FEDPRUNE_CLIENT_DEVICE"
ERROR_CODE = 1
logger = logging.getLogger("fedprune.client")

app = ClientApp()


class BadMessage(ValueError):
    """A message this node cannot act on."""


@dataclass
class Job:
    """Everything a handler needs, built from one message and the node's context."""

    spec: TaskSpec
    partition_id: int
    num_partitions: int
    data: ClientSplit
    source: DatasetSource
    model: nn.Module
    layout: ModelLayout
    state: NodeState
    device: torch.device  # the model's; a handler moves the data it uses there once


def _node_int(context: Context, key: str) -> int:
    value = context.node_config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage(f"node config '{key}' = {value!r} must be an integer (set it with --node-config)")
    return value


def node_device(context: Context) -> torch.device:
    """Where this node trains: node config ``device``, else ``$FEDPRUNE_CLIENT_DEVICE``, else auto."""
    configured = context.node_config.get(keys.NODE_DEVICE)
    if configured is not None:
        return resolve_device(str(configured), keys.NODE_DEVICE, what="node config")
    from_env = os.environ.get(DEVICE_ENV)
    if from_env:
        return resolve_device(from_env, DEVICE_ENV, what="environment variable")
    return resolve_device("auto")


def _configure_process() -> None:
    """This process's torch threads (``$FEDPRUNE_CLIENT_THREADS``) and allocator (:mod:`common.allocator`)."""
    keep_freed_memory()
    threads = os.environ.get(THREADS_ENV)
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


_built = threading.local()


def _thread_model(name: str, source: DatasetSource, device: torch.device) -> tuple[nn.Module, ModelLayout]:
    """This thread's model of that architecture and its layout, built once and reused by every later message.

    Building Conv-2 (6.6M weights, initialised) costs tens of milliseconds a message,
    and its layout's position vectors as much again; a handler overwrites every
    parameter and buffer of the model it is given (:func:`load_model`: a strict
    ``load_state_dict``) before using it, and handlers of one thread run one at a time,
    so a model per thread and architecture is never shared by two handlers at once.
    Methods that change a model's shape work on copies
    (:func:`common.pruning.shrink.shrink_model`).
    """
    key = (name, source.num_classes, tuple(source.input_shape), str(device))
    if getattr(_built, "key", None) != key:  # one architecture at a time: a process serves one run
        model = build_model(name, source.num_classes, source.input_shape).to(device)
        _built.model, _built.layout = model, ModelLayout.from_model(model)
        _built.key = key
    return _built.model, _built.layout


def prepare(message: Message, context: Context) -> Job:
    """Parse the task, load this node's data and build the model."""
    _configure_process()
    if keys.CONFIG not in message.content.config_records:
        raise BadMessage("the message has no config record")
    spec = TaskSpec.from_message_config(message.content.config_records[keys.CONFIG])
    if spec.dataset not in DATASETS:
        raise BadMessage(f"unknown dataset {spec.dataset!r}")
    if spec.model not in MODELS:
        raise BadMessage(f"unknown model {spec.model!r}; this node knows {sorted(MODELS)}")
    partition_id = _node_int(context, keys.NODE_PARTITION_ID)
    num_partitions = _node_int(context, keys.NODE_NUM_PARTITIONS)
    if not 0 <= partition_id < num_partitions:
        raise BadMessage(
            f"node config '{keys.NODE_PARTITION_ID}' = {partition_id} must lie in "
            f"[0, {keys.NODE_NUM_PARTITIONS} = {num_partitions})"
        )
    data_dir = context.node_config.get(keys.NODE_DATA_DIR) or spec.data_dir
    source = DATASETS[spec.dataset]
    data = client_data(spec, Path(str(data_dir)) if data_dir else None, num_partitions, partition_id)
    device = node_device(context)
    model, layout = _thread_model(spec.model, source, device)
    if spec.layout and spec.layout != layout.fingerprint:
        raise BadMessage(
            f"model layout {spec.layout} differs from this node's {layout.fingerprint} "
            f"for model {spec.model!r}: server and node run different code"
        )
    state = NodeState(context, layout)
    return Job(spec, partition_id, num_partitions, data, source, model, layout, state, device)


@dataclass(frozen=True)
class Received:
    """The model a message carried: its mask, the mask's kept indices, the kept values, all floats."""

    mask: np.ndarray
    kept: np.ndarray | None  # np.flatnonzero(mask), faster to gather by than the mask; None: all kept
    values: np.ndarray
    floats: np.ndarray  # the model's flat floats as loaded: ``values`` at kept positions, 0 elsewhere

    def gather(self, floats: np.ndarray) -> np.ndarray:
        """``floats[mask]``: the values at the kept positions (``floats`` itself when all are kept)."""
        return floats if self.kept is None else floats.take(self.kept)


def load_model(job: Job, record: ArrayRecord) -> Received:
    """Decode the model into ``job.model``; return what was received."""
    mask = job.state.resolve_mask(record, job.spec.mask_version)
    received, counters = _thread_received(record, job.layout, mask)
    load_flat(job.model, job.layout, received.floats, counters)
    return received


_last_received = threading.local()


def _thread_received(
    record: ArrayRecord, layout: ModelLayout, mask: np.ndarray
) -> tuple[Received, np.ndarray]:
    """The model ``record`` carries under ``mask``, decoded and checked, and its integer buffers.

    This thread's last result is reused when the record's value and counter sections
    are, byte for byte, those it decoded last and the mask is the same. In a
    simulation one Ray worker serves many clients in turn and a round sends each of
    them the same model: a dense Conv-2 broadcast took about 35 ms to decompress,
    unshuffle and check each time, the comparison about 2 ms (bytes compared, not a
    name or a digest, so a different model is never taken for the last). A
    deployment's node, sent one model a round, pays only the comparison. The arrays
    of a result are read-only: the handlers that share them never write to them.
    """
    sections = tuple(record[name].data if name in record else b"" for name in (codec.VALUES, codec.COUNTERS))
    last = getattr(_last_received, "entry", None)
    if last is not None and last[0] == sections and np.array_equal(last[1].mask, mask):
        return last[1], last[2]
    _last_received.entry = None  # the last one's buffers are not kept while this one is decoded
    payload = decode_payload(record, layout, mask)
    if not np.isfinite(payload.values).all():
        raise BadMessage("the model's values contain NaN or Inf")
    if mask.all():  # dense: the values are the model's floats as they are
        kept, floats = None, payload.values
    else:
        kept, floats = np.flatnonzero(mask), np.zeros(layout.num_floats, dtype=np.float32)
        floats[kept] = payload.values
    for array in (mask, kept, payload.values, floats, payload.counters):
        if array is not None:
            array.flags.writeable = False
    received = Received(mask, kept, payload.values, floats)
    _last_received.entry = (sections, received, payload.counters)
    return received, payload.counters


def _arrays(message: Message) -> ArrayRecord:
    if keys.ARRAYS not in message.content.array_records:
        raise BadMessage("the message carries no model")
    return message.content.array_records[keys.ARRAYS]


def _batch_seed(spec: TaskSpec, partition_id: int) -> int:
    return int(np.random.SeedSequence([spec.seed, spec.server_round, partition_id]).generate_state(1)[0])


def _handled(handler: Callable[[Message, Context], RecordDict]) -> Callable[[Message, Context], Message]:
    """Run ``handler``; turn any failure into an error reply that says what went wrong."""

    def wrapper(message: Message, context: Context) -> Message:
        try:
            return Message(handler(message, context), reply_to=message)
        except StaleMaskError as exc:
            reason = f"stale-mask: {exc}"
        except (BadMessage, ConfigError, WireError) as exc:
            reason = f"bad message: {exc}"
        except Exception as exc:  # noqa: BLE001 - a node must answer, whatever happened
            logger.exception("handler %s failed", handler.__name__)
            reason = f"{type(exc).__name__}: {exc}"
        return Message(Error(code=ERROR_CODE, reason=reason), reply_to=message)

    wrapper.__name__ = handler.__name__
    return wrapper


def node_profile(context: Context) -> str:
    """The device profile this node names (node config ``profile``), "" when it names none."""
    value = context.node_config.get(keys.NODE_PROFILE, "")
    if not isinstance(value, str):
        raise BadMessage(f"node config '{keys.NODE_PROFILE}' = {value!r} must be a profile name")
    return value


@app.query("describe")
@_handled
def describe(message: Message, context: Context) -> RecordDict:
    job = prepare(message, context)
    profile = node_profile(context)
    return RecordDict(
        {
            **({keys.CONFIG: ConfigRecord({keys.PROFILE: profile})} if profile else {}),
            keys.METRICS: MetricRecord(
                {
                    keys.PARTITION_ID: job.partition_id,
                    keys.NUM_PARTITIONS: job.num_partitions,
                    keys.TRAIN_SIZE: len(job.data.train),
                    keys.TEST_SIZE: len(job.data.test),
                    keys.TRAIN_LABELS: label_histogram(job.data.train, job.source.num_classes),
                    keys.TEST_LABELS: label_histogram(job.data.test, job.source.num_classes),
                }
            ),
        }
    )


def method_config(config: ConfigRecord) -> dict:
    """What the method's client hooks read: its ``method.<key>`` entries, unprefixed, and its task entries.

    Task entries (:meth:`~common.pruning.PruningMethod.task_entries`) travel under
    the method's own names among the task's; a ``method.<key>`` entry wins.
    """
    prefixed = {
        k.removeprefix(keys.METHOD_PREFIX): v for k, v in config.items() if k.startswith(keys.METHOD_PREFIX)
    }
    task = set(TaskSpec.keys()) | {BUDGET_PARTITIONS, BUDGET_KEEP}
    own = {k: v for k, v in config.items() if k not in task and not k.startswith(keys.METHOD_PREFIX)}
    return {**own, **prefixed}


def _config_int(config: ConfigRecord, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadMessage(f"config '{key}' = {value!r} must be an integer >= 1")
    return value


def _method(job: Job, config: ConfigRecord, client_config: dict | None = None) -> PruningMethod:
    """The task's method; its settings come from the message (a round plan may send them)."""
    name = str(config.get("method", job.spec.method))
    if name not in METHODS:
        raise BadMessage(f"unknown pruning method {name!r}")
    method_class = METHODS[name]
    env = MethodEnv(
        job.layout,
        num_rounds=0,
        local_steps=job.spec.local_steps,
        full_participation=False,
        seed=job.spec.seed,
        model=job.spec.model,
        num_classes=job.source.num_classes,
        input_shape=job.source.input_shape,
        batch_size=job.spec.batch_size,
        plain_sgd=job.spec.momentum == 0 and job.spec.weight_decay == 0,
    )
    return method_class(method_class.Settings.from_flat({**config, **(client_config or {})}), env)


def budget_mask(
    config: ConfigRecord, partition_id: int, method: PruningMethod, received: Received
) -> np.ndarray | None:
    """The sub-mask this node trains under the round's budget (common/budget.py), None without one.

    The method chooses it (:meth:`~common.pruning.PruningMethod.budget_submask`).
    """
    try:
        fraction = fraction_for(dict(config), partition_id)
    except ValueError as exc:
        raise BadMessage(str(exc)) from exc
    if fraction is None:
        return None
    return method.budget_submask(received.floats, received.mask, fraction)


@app.train()
@_handled
def train(message: Message, context: Context) -> RecordDict:
    started = time.monotonic()
    job = prepare(message, context)
    spec, layout = job.spec, job.layout
    prepared = time.monotonic()
    received = load_model(job, _arrays(message))
    mask = received.mask
    decoded, train_start = time.monotonic(), time.time()
    config = message.content.config_records[keys.CONFIG]
    client_config = method_config(config)
    seed = _batch_seed(spec, job.partition_id)
    method = _method(job, config, client_config)
    hooks = method.training_hooks(client_config, seed + 1)
    trained_mask = budget_mask(config, job.partition_id, method, received)
    result = hooks.train(
        job.model,
        layout,
        mask if trained_mask is None else trained_mask,
        job.data.train.on(job.device).batches(spec.batch_size, seed),
        spec.local_steps,
        SgdSettings(spec.lr, spec.momentum, spec.weight_decay),
        make_loss(spec.loss, job.source.num_classes),
        hooks.statistic,
    )
    own_mask = hooks.client_mask(job.model, layout, mask)
    if own_mask is None:
        own_mask = trained_mask  # a budgeted client's sub-mask travels as its own mask
    upload = hooks.upload(result, layout, mask, spec.mask_version, job.state.method_store())
    upload_plan = hooks.upload_plan(layout, mask) if upload is not None else None
    trained, train_end = time.monotonic(), time.time()
    floats, ints = layout.flatten(job.model.state_dict())
    weight = result.samples if spec.weighting == "samples-processed" else len(job.data.train)
    # a lossy format rounds the update, not the weight: the server adds it to what it sent;
    # a client that chose its own mask (Gibbs) sends its values whole, with that mask
    lossy = spec.wire.lossy_values and own_mask is None
    if own_mask is None:
        kept = received.gather(floats)
        sent = kept - received.values if lossy else kept
        payload = ModelPayload(sent, ints, statistic=upload, relative=lossy, statistic_plan=upload_plan)
        arrays = encode_payload(payload, layout, spec.wire)
    else:
        payload = ModelPayload(
            floats[own_mask], ints, mask=own_mask, statistic=upload, statistic_plan=upload_plan
        )
        arrays = encode_own_mask(payload, layout, spec, mask)
    finished = time.monotonic()
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: weight,
            keys.SAMPLES_PROCESSED: result.samples,
            keys.TRAIN_LOSS: result.mean_loss,
            keys.MASK_VERSION: spec.mask_version,
            keys.CLIENT_SECONDS: finished - started,
            # where the time went (server/phases.py); the instants are this node's clock
            keys.PHASE_PREPARE_S: prepared - started,
            keys.PHASE_DECODE_S: decoded - prepared,
            keys.PHASE_TRAIN_S: trained - decoded,
            keys.PHASE_ENCODE_S: finished - trained,
            keys.PHASE_TRAIN_START: train_start,
            keys.PHASE_TRAIN_END: train_end,
        }
    )
    for key, value in hooks.report().items():
        metrics[f"{keys.METHOD_PREFIX}{key}"] = value
    return RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})


def encode_own_mask(
    payload: ModelPayload, layout: ModelLayout, spec: TaskSpec, received: np.ndarray
) -> ArrayRecord:
    """A reply carrying the client's own mask, coded against ``received`` where that is smaller.

    ``received`` is the mask of ``spec.mask_version``, which this node holds (it is
    stored in :class:`~client.node_state.NodeState` when the message brings it) and
    the server keeps in its :class:`~server.mask_ledger.MaskLedger`; the mask
    section names that version as its base, and each tensor is coded directly or
    as its XOR with the base, whichever is smaller (:mod:`common.wire.masks`).
    """
    base = received if spec.mask_version else None  # version 0: the dense mask, direct coding covers it
    return encode_payload(payload, layout, spec.wire, base=base, base_version=spec.mask_version)


@app.train("initial_pruning")
@_handled
def initial_pruning(message: Message, context: Context) -> RecordDict:
    job = prepare(message, context)
    mask = load_model(job, _arrays(message)).mask
    config = message.content.config_records[keys.CONFIG]
    method = _method(job, config)
    try:
        cost = CostModel.from_config(config, len(job.layout.prunable))
    except ValueError as exc:
        raise BadMessage(str(exc)) from exc
    floats, ints = job.layout.flatten(job.model.state_dict())
    data = initial_data_for(
        job.spec,
        job.num_partitions,
        job.partition_id,
        floats,
        ints,
        _config_int(config, "ip-batches"),
        _config_int(config, "ip-batch-size"),
        cost,
        job.device,
    )
    result = method.initial_mask(floats, mask, data)
    new_floats = result.floats if result.floats is not None else floats
    job.state.store_mask(result.mask, _config_int(config, keys.IP_MASK_VERSION))
    info = ConfigRecord({"iterations": result.iterations})
    for key, value in result.log.items():
        info[key] = value
    info.setdefault("modelled-seconds", 0.0)
    payload = ModelPayload(new_floats[result.mask], ints, mask=result.mask)
    return RecordDict({keys.ARRAYS: encode_payload(payload, job.layout, job.spec.wire), keys.CONFIG: info})


@app.evaluate()
@_handled
def evaluate_model(message: Message, context: Context) -> RecordDict:
    job = prepare(message, context)
    load_model(job, _arrays(message))
    test = job.data.test.on(job.device)
    result = evaluate(job.model, test, make_loss(job.spec.loss, job.source.num_classes))
    return RecordDict(
        {
            keys.METRICS: MetricRecord(
                {
                    keys.NUM_EXAMPLES: result.samples,
                    keys.EVAL_LOSS: result.loss,
                    keys.EVAL_ACCURACY: result.accuracy,
                    keys.MASK_VERSION: job.spec.mask_version,
                }
            )
        }
    )
