"""The ServerApp: configuration, initial pruning, then Flower's round loop.

``app`` reads its configuration from the run config (``flwr run .``: the defaults
of ``pyproject.toml`` plus ``--run-config`` overrides); :func:`build_server_app`
binds an already validated configuration instead (``fedprune simulate``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import ERROR, INFO
from pathlib import Path

import flwr
import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common.allocator import keep_freed_memory
from common.config import DATA_DIR_ENV, AppConfig
from common.cost_model import PROFILE_KEY, CostModel, same_profile
from common.data import DATASETS, load_dataset
from common.device import cpu_threads, cuda_available, resolve_device
from common.layout import ModelLayout
from common.models import build_model
from common.provenance import git_commit
from common.pruning import MethodEnv
from common.settings import ConfigError
from common.task import TaskSpec, client_data

from .arrivals import ArrivingReplies, simulated
from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint
from .communication import CommunicationLog
from .evaluation import CentralEvaluator
from .fleet import Fleet
from .global_model import GlobalModel
from .initial_pruning import InitialPruningError, InitialPruningReport, run_initial_pruning
from .messenger import Messenger
from .nodes import NodeBook
from .partition_report import PARTITIONS_FILE, partition_summary, write_partition_report
from .progress import RunProgress
from .recorder import format_bytes
from .results import CONFIG_FILE, INITIAL_PRUNING_FILE, ROUNDS_FILE, SUMMARY_FILE, ResultsWriter, RoundRow
from .resumed import ResumedStrategy
from .strategy import PruningFedAvg, task_record


@dataclass(frozen=True)
class RunSummary:
    """The figures a run ends with (also written to ``summary.json``)."""

    results_dir: str
    method: str
    dataset: str
    model: str
    rounds: int
    final_accuracy: float
    final_loss: float
    final_density: float
    bytes_down: int
    bytes_up: int
    bytes_total: int
    bound_bytes: float
    dense_bytes: int
    modelled_time_s: float
    wall_time_s: float
    initial_pruning: dict

    def last_line(self) -> str:
        ratio = self.bytes_total / self.dense_bytes if self.dense_bytes else math.nan
        return (
            f"fedprune: {self.method} on {self.dataset}, {self.rounds} rounds: "
            f"final accuracy {self.final_accuracy:.4f}, final density {self.final_density:.4f}, "
            f"total bytes {format_bytes(self.bytes_total)} "
            f"({ratio:.3f} of the dense model's {format_bytes(self.dense_bytes)} for the same messages; "
            f"bound {format_bytes(self.bound_bytes)}), wall time {self.wall_time_s:.1f} s; "
            f"results in {self.results_dir}"
        )


class RunError(RuntimeError):
    """The run could not start or go on; the message says why."""


def task_for_run(config: AppConfig, layout: ModelLayout) -> TaskSpec:
    """The task fields that stay the same through a run (derived from ``config``)."""
    return TaskSpec.for_run(config, layout.fingerprint)


def method_env(config: AppConfig, layout: ModelLayout, full_participation: bool) -> MethodEnv:
    """The run facts the pruning method reads on the server (the clients derive theirs from the task)."""
    source = DATASETS[config.data.dataset]
    train, fed = config.train, config.federation
    return MethodEnv(
        layout,
        num_rounds=fed.rounds,
        local_steps=train.local_steps,
        full_participation=full_participation,
        seed=fed.seed,
        model=config.model.name,
        num_classes=source.num_classes,
        input_shape=source.input_shape,
        batch_size=train.batch_size,
        statistic_factor=fed.statistic_factor,
        plain_sgd=train.momentum == 0 and train.weight_decay == 0,
        aggregation=fed.aggregation,
    )


def cost_model_for(config: AppConfig, layout: ModelLayout) -> CostModel:
    """The cost model of ``cost.profile`` (the reference device); every profile of the run is checked."""
    return Fleet(config, layout).reference


def preflight(config: AppConfig) -> ModelLayout:
    """Checks that need files (device profile, data set) before any client starts.

    Only ``fedprune simulate`` calls it, where the server and the clients share the
    data folder: the data set is loaded (and verified) and partitioned for
    ``simulation.num-clients`` here, so a missing file or an impossible split
    stops the run with one line before any client starts. Returns the model's layout.
    """
    source = DATASETS[config.data.dataset]
    try:
        model = build_model(config.model.name, source.num_classes, source.input_shape)
    except ValueError as exc:
        raise ConfigError(
            "model.name", config.model.name, f"a model that fits {config.data.dataset}: {exc}"
        ) from exc
    layout = ModelLayout.from_model(model)
    cost_model_for(config, layout)
    resolve_device(config.train.device)
    sim = config.simulation
    if sim.client_gpus > 0 and not sim.cluster_address() and not cuda_available():
        raise ConfigError(
            "simulation.client-gpus",
            sim.client_gpus,
            "0 on this machine: torch sees no CUDA device here "
            "(attach to a Ray cluster with GPUs through simulation.ray-address, or set 0)",
        )
    data_dir = config.data.resolved_dir()
    if data_dir is not None and not data_dir.is_dir():
        if config.data.dir:
            raise ConfigError("data.dir", config.data.dir, f"an existing folder ({data_dir} is none)")
        raise ConfigError(DATA_DIR_ENV, str(data_dir), "an existing folder", what="environment variable")
    try:
        load_dataset(config.data.dataset, data_dir, config.data.download)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError("data.dataset", config.data.dataset, str(exc)) from exc
    try:
        client_data(task_for_run(config, layout), data_dir, config.simulation.num_clients, 0)
    except ValueError as exc:
        raise ConfigError("data.partitioning", config.data.partitioning, str(exc)) from exc
    return layout


def run_federation(
    grid: Grid,
    config: AppConfig,
    resume: Checkpoint | None = None,
    progress: RunProgress | None = None,
) -> RunSummary:
    """Run initial pruning and all rounds; write the results folder.

    With ``resume``, a checkpoint of this run's results folder, continue after the
    checkpoint's round instead (see :func:`restore`); without it, a configuration
    whose ``output.resume`` names a results folder continues that folder's run
    (``flwr run``, see :func:`resume_point`). ``progress`` is told where the run
    stands (:class:`~server.progress.RunProgress`: progress displays).
    """
    started = time.monotonic()
    progress = progress or RunProgress()
    if resume is None and config.output.resume:
        config, resume = resume_point(config)
    fed = config.federation
    np.random.seed(fed.seed)
    results = ResultsWriter.create(config) if resume is None else ResultsWriter.reopen(config)
    log(INFO, "fedprune: results go to %s", results.folder)

    source = DATASETS[config.data.dataset]
    torch_model = build_model(config.model.name, source.num_classes, source.input_shape, seed=fed.seed)
    layout = ModelLayout.from_model(torch_model)
    floats, ints = layout.flatten(torch_model.state_dict())
    model = GlobalModel(layout, floats, ints, layout.full_mask())
    fleet = Fleet(config, layout)
    cost = fleet.reference

    nodes = NodeBook(lazy=describes_lazily(config, grid), check_profile=fleet.refusal)
    # replies decoded as they come, while others still train (describes_lazily, above, looks at Flower's grid)
    grid = ArrivingReplies(grid)
    comm = CommunicationLog(results.communication_path, new_file=resume is None)
    messenger = Messenger(model, nodes, comm, config.wire.format())
    task = task_for_run(config, layout)
    evaluator = None
    if config.evaluate.server:
        dataset = load_dataset(config.data.dataset, config.data.resolved_dir(), config.data.download)
        device = resolve_device(config.train.device)
        evaluator = CentralEvaluator(config.model.name, dataset, config.train.loss, device)

    # Nodes are described before the method exists (whether every node trains every
    # round is a fact of the method's environment); a describe message trains nothing,
    # so it carries the method's entries of a round without training.
    idle = config.method_class(config.method, method_env(config, layout, full_participation=True))
    describe_config = task_record(task, idle.task_entries(0, training=False))
    nodes.wait_for(
        grid,
        fed.min_clients,
        fed.connect_timeout,
        lambda: messenger.describe_new_nodes(grid, describe_config, fed.round_timeout),
    )
    partitions = report_partitions(results.folder, nodes, config)
    full = fed.clients_per_round == 0 or fed.clients_per_round >= len(nodes)
    method = config.method_class(config.method, method_env(config, layout, full))
    rounds = method.planned_rounds(fed.rounds)
    if rounds != fed.rounds:  # a method with a compute budget (Rethinking's scratch-B)
        log(INFO, "fedprune: %s plans %d rounds instead of %d", config.pruning.method, rounds, fed.rounds)
        config = dataclasses.replace(config, federation=dataclasses.replace(fed, rounds=rounds))
        fed = config.federation
        method = config.method_class(config.method, method_env(config, layout, full))
    strategy = PruningFedAvg(config, model, method, fleet, nodes, messenger, comm, results, evaluator, task)
    strategy.recorder.run_started = started  # elapsed_s counts from the run's start
    strategy.progress = progress
    progress.run_started(fed.rounds, resume.server_round if resume else None)

    runner: PruningFedAvg | ResumedStrategy = strategy
    if resume is None:
        try:
            report = run_initial_pruning(config, method, model, cost, task, grid, nodes, messenger, progress)
        except InitialPruningError as exc:
            raise RunError(str(exc)) from exc
        results.write_json(INITIAL_PRUNING_FILE, dataclasses.asdict(report))
        strategy.row = RoundRow(
            round=0, wall_time_s=report.seconds, modelled_round_time_s=report.modelled_seconds
        )
    else:
        report = restore(strategy, results, resume)
        runner = ResumedStrategy(strategy, resume.server_round)
    if fed.rounds > (resume.server_round if resume else 0):
        try:
            runner.start(
                grid,
                model.to_arrayrecord(),
                num_rounds=fed.rounds - (resume.server_round if resume else 0),
                timeout=fed.round_timeout,
                evaluate_fn=runner.end_round,
            )
            strategy.finish_round()  # the last round waits for its evaluation: nothing is left
        finally:
            if evaluator is not None:
                evaluator.close()
    results.write_model(layout, model.floats, model.ints, model.mask)
    report_partitions(results.folder, nodes, config, partitions)  # nodes may have joined since the start
    summary = summarize(config, strategy, report, results.folder, time.monotonic() - started)
    results.write_json(SUMMARY_FILE, {**dataclasses.asdict(summary), "environment": environment()})
    return summary


def describes_lazily(config: AppConfig, grid: Grid) -> bool:
    """Whether nodes are described when first sampled rather than all before round 1.

    Only on Flower's simulation engine (whose nodes register in partition order, see
    :mod:`server.nodes`), when ``federation.describe = "auto"`` and a round samples
    fewer clients than the simulation has.
    """
    fed = config.federation
    return (
        fed.describe == "auto"
        and 0 < fed.clients_per_round < config.simulation.num_clients
        and simulated(grid)
    )


def restore(strategy: PruningFedAvg, results: ResultsWriter, checkpoint: Checkpoint) -> InitialPruningReport:
    """Bring a new server to the state of ``checkpoint``, a checkpoint of this run.

    The results files are cut back to what they held at the checkpoint, every
    component's state is restored, and every node's mask version is unknown (the
    nodes are new), so each node is sent the mask with its first message.
    """
    state = checkpoint.state
    check_fits(checkpoint, strategy.config, strategy.model.layout)
    try:
        results.load_state_dict(state["results"])
        strategy.load_state_dict(state)
        report = json.loads((results.folder / INITIAL_PRUNING_FILE).read_text(encoding="utf-8"))
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise RunError(f"checkpoint {checkpoint.folder} cannot be restored: {exc!r}") from exc
    log(
        INFO,
        "fedprune: resuming after round %d from %s (density %.4f, mask version %d)",
        checkpoint.server_round,
        checkpoint.folder,
        strategy.model.density,
        strategy.model.mask_version,
    )
    return InitialPruningReport(**{**report, "log": report.get("log") or {}})


# A results folder may be moved before resuming, and the run that resumes it names it;
# federation.describe says when nodes are described, not which ones train (server/nodes.py);
# evaluate.overlap says when the server evaluates, not what (server/evaluation.py);
# pruning.rethinking.source is the folder of the run whose final mask a rethinking run
# started from, which moves with the results (a claim's committed runs, on another
# checkout): the source run is compared by its own configuration, and the mask it gave
# is the rethinking run's own (its checkpoints and mask.npz).
RELOCATABLE_KEYS = (
    "output.dir",
    "output.name",
    "output.resume",
    "federation.describe",
    "evaluate.overlap",
    "pruning.rethinking.source",
)


def config_difference(saved: Mapping[str, object], config: AppConfig) -> str | None:
    """None if a run saved with the flat configuration ``saved`` is a run of ``config``, else how not.

    Keys of :data:`RELOCATABLE_KEYS` may differ, and ``cost.profile`` may name the same
    profile file at another path (:func:`common.cost_model.same_profile`). A key the
    saved run predates (a setting added to fedprune since) is no difference while it is
    at its default now: settings are added with defaults that keep what fedprune did
    before them.
    """
    current = config.to_flat()
    defaults = AppConfig.from_flat({"pruning.method": config.pruning.method}).to_flat()
    for key in sorted(set(saved) | set(current)):
        if key in RELOCATABLE_KEYS or saved.get(key) == current.get(key):
            continue
        if key == PROFILE_KEY and same_profile(str(saved.get(key)), str(current.get(key))):
            continue
        if key not in saved and key in defaults and current[key] == defaults[key]:
            continue
        return f"{key} = {saved.get(key)!r} there, {current.get(key)!r} now"
    return None


def resume_point(config: AppConfig) -> tuple[AppConfig, Checkpoint]:
    """The run ``output.resume`` names: ``config`` writing into that folder, and its latest checkpoint.

    What ``fedprune simulate --resume`` does from the command line, for ``flwr
    run``: the ServerApp, the SuperLink or the server machine restarted, and the
    operator starts the same run configuration again with ``output.resume`` set.
    Whether the configuration is the checkpoint's is checked by :func:`restore`
    (every key but :data:`RELOCATABLE_KEYS`).
    """
    folder = Path(config.output.resume).expanduser().resolve()
    if not (folder / CONFIG_FILE).is_file() or not (folder / ROUNDS_FILE).is_file():
        raise ConfigError(
            "output.resume",
            config.output.resume,
            f"the results folder of a fedprune run (with {CONFIG_FILE} and {ROUNDS_FILE}); {folder} is none",
        )
    output = dataclasses.replace(config.output, dir=str(folder.parent), name=folder.name)
    return dataclasses.replace(config, output=output), latest_checkpoint(folder)


def check_fits(checkpoint: Checkpoint, config: AppConfig, layout: ModelLayout) -> None:
    """Raise :class:`RunError` unless ``checkpoint`` was written by this configuration and model."""
    difference = config_difference(checkpoint.state.get("config", {}), config)
    if difference is not None:
        raise RunError(
            f"checkpoint {checkpoint.folder} was written with another configuration ({difference}); "
            "resume with the run's own config.toml"
        )
    if checkpoint.state.get("layout") != layout.fingerprint:
        raise RunError(
            f"checkpoint {checkpoint.folder} is of another model layout than {config.model.name!r}"
        )
    if not 0 <= checkpoint.server_round <= config.federation.rounds:
        raise RunError(f"checkpoint round {checkpoint.server_round} is outside 0..{config.federation.rounds}")


def report_partitions(folder: Path, nodes: NodeBook, config: AppConfig, written: dict | None = None) -> dict:
    """Write the partition summary and plot of the nodes described so far (unless as ``written``).

    Under lazy description those are the nodes sampled so far, out of ``len(nodes)``
    connected; none before round 1, when nothing is written.
    """
    source = DATASETS[config.data.dataset]
    args = (nodes.ordered(), config.data.dataset, config.data.partitioning, source.num_classes)
    connected = len(nodes) if nodes.lazy else None
    if nodes.lazy and not nodes.nodes:
        log(
            INFO,
            "partitions: %d nodes connected, each described when first sampled; "
            "%s lists those sampled, at the end of the run",
            connected,
            PARTITIONS_FILE,
        )
        return {}
    if written is not None and partition_summary(*args, connected=connected) == written:
        return written
    summary = write_partition_report(folder, *args, connected=connected)
    log(
        INFO,
        "partitions: %d clients%s, %d training and %d test samples, label skew %.3f (%s)",
        summary["clients"],
        f" described of {connected} connected" if connected is not None else "",
        summary["train_samples"],
        summary["test_samples"],
        summary["label_skew"],
        folder / PARTITIONS_FILE,
    )
    return summary


def summarize(
    config: AppConfig,
    strategy: PruningFedAvg,
    report: InitialPruningReport,
    folder: Path,
    wall_time: float,
) -> RunSummary:
    totals = strategy.comm.totals()
    evaluated = [r for r in strategy.rows if not math.isnan(r.accuracy)]
    last = evaluated[-1] if evaluated else RoundRow(round=-1)
    return RunSummary(
        results_dir=str(folder),
        method=config.pruning.method,
        dataset=config.data.dataset,
        model=config.model.name,
        rounds=config.federation.rounds,
        final_accuracy=last.accuracy,
        final_loss=last.loss,
        final_density=strategy.model.density,
        bytes_down=totals.down.measured.total,
        bytes_up=totals.up.measured.total,
        bytes_total=totals.down.measured.total + totals.up.measured.total,
        bound_bytes=totals.down.bound + totals.up.bound,
        dense_bytes=totals.down.dense + totals.up.dense,
        modelled_time_s=strategy.modelled_elapsed,
        wall_time_s=wall_time,
        initial_pruning=dataclasses.asdict(report),
    )


def environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": str(os.cpu_count()),
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "fedprune": git_commit(),  # the server's checkout; 'unknown' in an installed copy
    }


def build_server_app(
    config: AppConfig | None = None,
    on_finish: Callable[[RunSummary], None] | None = None,
    resume: Checkpoint | None = None,
    progress: RunProgress | None = None,
) -> ServerApp:
    """A ServerApp bound to ``config`` (or reading the run config when None).

    ``on_finish`` receives the run's summary, for callers that start the app
    themselves (``fedprune simulate``), which then state the outcome; without it the
    outcome line is logged. ``resume`` continues a run from its checkpoint;
    ``progress`` observes it.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        keep_freed_memory()  # every reply's buffers reuse the last one's pages
        try:
            resolved = config if config is not None else AppConfig.from_flat(context.run_config)
            threads = resolved.federation.server_threads
            with cpu_threads(threads) if threads else contextlib.nullcontext():
                summary = run_federation(grid, resolved, resume, progress)
            if on_finish is not None:
                on_finish(summary)
            else:
                log(INFO, summary.last_line())
        except (ConfigError, RunError, CheckpointError, TimeoutError) as exc:
            # A user's mistake or an unreachable federation: one clear line, no traceback.
            log(ERROR, "fedprune: %s", exc)
            if config is not None:
                raise

    return server_app


app = build_server_app()
