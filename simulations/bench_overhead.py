"""fedprune's round time against a plain Flower app doing the same work, and the compute floor.

Five configurations run the same model, data, partitions, batches, clients, local
steps and server-side evaluation (every round, on the whole test split), each in a
fresh process, interleaved (A, B, C, D, E, A, B, ...) so that a drift of the machine's
speed reaches all of them alike:

``flower``
    a plain Flower Message-API app contained in this script: Flower's built-in
    ``FedAvg``, the model's state as NumPy arrays in an ``ArrayRecord``, and the
    same training loop (:func:`common.training.train_locally` without a mask),
    on Flower's simulation engine with one CPU per client, as fedprune runs;
``dense``
    ``fedprune simulate`` with ``pruning.method=none``;
``prunefl``
    ``fedprune simulate`` with PruneFL at a fixed mask, in its steady state between
    reconfigurations: a short initial pruning on the server (two IP rounds, each
    reconfiguring with ``max-removal`` 1 - sqrt(0.13) under ``max-density`` 0.13,
    before round 1 and outside the timed rounds) fixes the mask at density 0.13
    (every layer at 0.13; before 2026-12-02 it was 0.006-0.036, sparser than
    PruneFL's FEMNIST run at 0.17), and no reconfiguration falls in
    the run (``reconfig-interval`` past its last round). Every round trains the
    pruned model and adds the clients' importance to the sums they keep on their
    nodes, as 49 of every 50 rounds of PruneFL's FEMNIST schedule do (the upload
    and reconfiguration rounds are timed by ``fedprune bench``'s ``phases.csv``);
``floor``
    the compute alone, no Flower: the same local steps of every client in a pool of
    worker processes (one per CPU), the sample-weighted mean, the same evaluation;
    the workers keep freed memory as fedprune's processes do (:mod:`common.allocator`);
``floor-pruned``
    the same floor at density 0.13, the reference for ``prunefl``'s share: every
    prunable layer keeps its 13% largest initial weights (a fixed mask, as
    ``prunefl``'s), the clients train under the mask and only the kept values travel
    to and from the workers and are averaged. It computes no importance statistic
    (PruneFL's clients add one to their training), so its training is a little shorter
    than ``prunefl``'s and its share a little higher.

Round wall times are measured: by the plain app from its evaluation callback
(rounds end when it runs), by fedprune from ``rounds.csv``, by the floor around
each round. Rounds up to ``--warmup`` are not counted. The share of a round *not*
in local training leaves the server's evaluation out (it is shown on its own):
``1 - training / (round - evaluation)`` over the seconds summed across the counted
rounds, where training is the union of the clients' training intervals, as
``phases.csv`` counts it: :func:`simulations.bench.share_not_training`, the figure
``fedprune bench`` reports from ``phases.csv`` and judges its overhead target by.
The table also gives the share with the evaluation counted (``1 - training / round``).
fedprune evaluates round t while round t+1 trains (``evaluate.overlap``, its
default; the last round waits for its own): its evaluation column is the time its
rounds waited for an evaluation, the plain app's and the floor's the evaluation's
whole time.
Every run's per-round timings are written to ``<output>/<model>-timings.json``.

    python -m simulations.bench_overhead [--model digits|lenet5|conv2] [--rounds 12 --warmup 2 --repeats 2]
        [--set wire.KEY=VALUE ...] [--set evaluate.overlap=false]

prints a Markdown table and ends with exactly one line
``overhead: dense/flower=R1 prunefl/flower=R2 dense-not-training=P1% prunefl-not-training=P2%``.
LeNet-5 needs MNIST and Conv-2 the FEMNIST sample under ``--data-dir``.
``--set wire.compression-level=0`` (any ``wire.*`` key, repeatable) changes how fedprune's
two configurations write their messages, to time the wire format's share;
``--set evaluate.overlap=false`` has them evaluate each round before the next, as the
plain app does. Nothing else can be set, so that the configurations keep doing
the same work.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CONFIGURATIONS = ("flower", "dense", "prunefl", "floor", "floor-pruned")
FEDPRUNE = ("dense", "prunefl")  # the configurations --set applies to
MODELS: dict[str, list[str]] = {
    "digits": [],  # the default run: digits-cnn on scikit-learn's digits, 10 clients
    "lenet5": ["data.dataset=mnist", "model.name=lenet5"],
    "conv2": [
        "data.dataset=femnist",
        "data.partitioning=natural",
        "model.name=conv2",
        "train.lr=0.25",
        "train.local-steps=5",
        "train.batch-size=20",
        "train.loss=bce-one-hot",
    ],
}
PRUNED_DENSITY = 0.13
# what --set may change: how messages are written and when the server evaluates, not the work done
SETTABLE = ("wire.", "evaluate.overlap")


def overrides(
    model: str, configuration: str, rounds: int, data_dir: str, out: Path, extra: Sequence[str] = ()
) -> list[str]:
    """One benchmark run's configuration as ``--set`` overrides; ``extra`` last, for fedprune's runs only."""
    method = {
        "dense": ["pruning.method=none"],
        "prunefl": [
            "pruning.method=prunefl",
            "pruning.prunefl.initial-pruning=server",
            "pruning.prunefl.ip-max-rounds=2",
            "pruning.prunefl.ip-reconfig-interval=1",
            "pruning.prunefl.ip-eval-interval=1",
            "pruning.prunefl.ip-accuracy-factor=0",
            f"pruning.prunefl.reconfig-interval={rounds + 1}",  # none within the run: a fixed mask
            f"pruning.prunefl.max-density={PRUNED_DENSITY}",
            # at most 1 - sqrt(d) of each layer removed per IP reconfiguration: two of them
            # leave every layer at least d, and max-density caps the model at d
            f"pruning.prunefl.max-removal={1 - math.sqrt(PRUNED_DENSITY):.6f}",
        ],
    }.get(configuration, ["pruning.method=none"])
    return [
        *MODELS[model],
        *([f"data.dir={data_dir}"] if data_dir else []),
        f"federation.rounds={rounds}",
        "federation.seed=0",
        "evaluate.server=true",
        "evaluate.every=1",
        "output.checkpoint-every=0",
        f"output.dir={out}",
        f"output.name={configuration}",
        *method,
        *(extra if configuration in FEDPRUNE else ()),
    ]


def check_settable(extra: Sequence[str]) -> str | None:
    """None if every ``--set`` is a valid override of :data:`SETTABLE`, else what is wrong with the first."""
    from common.config import ConfigError, load_config

    for text in extra:
        key = text.split("=", 1)[0].strip()
        if "=" not in text or not key.startswith(SETTABLE):
            return f"--set {text!r}: expected KEY=VALUE with KEY under {', '.join(SETTABLE)}"
    try:
        load_config(None, list(extra))
    except ConfigError as exc:
        return f"--set: {exc}"
    return None


def train_client(model, layout, spec, data_dir: Path | None, num_partitions: int, partition: int, mask=None):  # noqa: ANN001, ANN201
    """One client's local round as fedprune's ClientApp runs it: (result, start, end) in Unix time.

    Dense unless ``mask`` is given. The batches are the ClientApp's: seeded by
    (seed, round, partition).
    """
    from common.data import DATASETS
    from common.task import client_data
    from common.training import SgdSettings, make_loss, train_locally

    data = client_data(spec, data_dir, num_partitions, partition)
    seed = int(np.random.SeedSequence([spec.seed, spec.server_round, partition]).generate_state(1)[0])
    started = time.time()
    result = train_locally(
        model,
        layout,
        layout.full_mask() if mask is None else mask,
        data.train.batches(spec.batch_size, seed),
        spec.local_steps,
        SgdSettings(spec.lr, spec.momentum, spec.weight_decay),
        make_loss(spec.loss, DATASETS[spec.dataset].num_classes),
    )
    return result, started, time.time()


# -- the plain Flower app ---------------------------------------------------------------
def run_flower(config, timings: list[dict]) -> None:  # noqa: ANN001 - AppConfig, imported late
    """FedAvg over ``config``'s clients with Flower's own strategy; one dict per round into ``timings``."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from common.data import load_dataset
    from common.layout import ModelLayout
    from common.models import build_model
    from common.training import evaluate
    from server.app import task_for_run
    from server.evaluation import CentralEvaluator
    from server.phases import union_length

    data_dir = config.data.resolved_dir()
    dataset = load_dataset(config.data.dataset, data_dir)
    model = build_model(
        config.model.name, dataset.num_classes, dataset.input_shape, seed=config.federation.seed
    )
    layout = ModelLayout.from_model(model)
    task = task_for_run(config, layout)
    clients = config.simulation.num_clients

    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        torch.set_num_threads(config.simulation.client_threads)
        partition = int(context.node_config["partition-id"])
        server_round = int(message.content["config"]["server-round"])
        spec = dataclasses.replace(task, server_round=server_round)
        local = build_model(config.model.name, dataset.num_classes, dataset.input_shape)
        local.load_state_dict(message.content["arrays"].to_torch_state_dict())
        num_partitions = int(context.node_config["num-partitions"])
        result, started, ended = train_client(local, layout, spec, data_dir, num_partitions, partition)
        metrics = {"num-examples": result.samples, "train-start": started, "train-end": ended}
        content = RecordDict({"arrays": ArrayRecord(local.state_dict()), "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=message)

    intervals: dict[int, list[tuple[float, float]]] = {}

    class TimedFedAvg(FedAvg):
        """Flower's FedAvg; keeps each reply's training interval before aggregating."""

        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201 - Flower's signature
            replies = list(replies)
            intervals[server_round] = [
                (float(r.content["metrics"]["train-start"]), float(r.content["metrics"]["train-end"]))
                for r in replies
                if r.has_content()
            ]
            return super().aggregate_train(server_round, replies)

    evaluator = CentralEvaluator(config.model.name, dataset, config.train.loss)
    marks: list[tuple[int, float, float]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        started = time.monotonic()
        evaluator.model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(evaluator.model, evaluator.view, evaluator.loss_fn)
        marks.append((server_round, started, time.monotonic()))
        return MetricRecord({"accuracy": result.accuracy})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=config.federation.rounds,
            train_config=ConfigRecord({"lr": config.train.lr}),
            evaluate_fn=evaluate_fn,
        )

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=clients,
        backend_config={  # type: ignore[arg-type]
            "client_resources": {"num_cpus": config.simulation.client_cpus, "num_gpus": 0.0},
            "init_args": {"logging_level": 40, "log_to_driver": True},
        },
    )
    for (_, _, previous_end), (server_round, started, ended) in zip(marks, marks[1:], strict=False):
        timings.append(
            {
                "round": server_round,
                "wall_s": ended - previous_end,
                "evaluate_s": ended - started,
                "training_s": union_length(intervals.get(server_round, [])),
            }
        )


# -- fedprune ---------------------------------------------------------------------------
def run_fedprune(config, timings: list[dict]) -> None:  # noqa: ANN001 - AppConfig, imported late
    """``fedprune simulate`` of ``config``; its rounds.csv and phases.csv into ``timings``."""
    from simulations.runner import simulate

    summary = simulate(config)
    folder = Path(summary.results_dir)
    with open(folder / "rounds.csv", newline="") as handle:
        rounds = {int(r["round"]): r for r in csv.DictReader(handle)}
    with open(folder / "phases.csv", newline="") as handle:
        phases = {int(r["round"]): r for r in csv.DictReader(handle)}
    for server_round in sorted(r for r in rounds if r >= 1):
        phase = phases.get(server_round, {})
        timings.append(
            {
                "round": server_round,
                "wall_s": float(rounds[server_round]["wall_time_s"]),
                "evaluate_s": float(phase.get("server_evaluate_s", 0.0)),
                "training_s": float(phase.get("training_wall_s", 0.0)),
                "density": float(rounds[server_round]["density"]),
            }
        )


# -- the compute floor ------------------------------------------------------------------
_WORKER: dict = {}


def floor_mask(layout, floats: np.ndarray, density: float) -> np.ndarray:  # noqa: ANN001 - ModelLayout
    """A mask keeping each prunable tensor's largest ``floats`` at ``density``, the rest whole.

    Magnitude pruning per layer (:func:`common.pruning.selection.keep_top`).
    """
    from common.pruning.selection import keep_top, magnitude_scores

    return keep_top(magnitude_scores(floats), layout, density, scope="layer")


def _floor_init(flat: dict, mask: np.ndarray | None) -> None:
    import torch

    from common.allocator import keep_freed_memory
    from common.config import AppConfig
    from common.data import load_dataset
    from common.layout import ModelLayout
    from common.models import build_model
    from server.app import task_for_run

    torch.set_num_threads(1)
    keep_freed_memory()  # as fedprune's clients do: the floor pays no page faults fedprune does not
    config = AppConfig.from_flat(flat)
    dataset = load_dataset(config.data.dataset, config.data.resolved_dir())
    model = build_model(config.model.name, dataset.num_classes, dataset.input_shape)
    layout = ModelLayout.from_model(model)
    _WORKER.update(
        config=config,
        dataset=dataset,
        model=model,
        layout=layout,
        task=task_for_run(config, layout),
        mask=mask,
    )
    if mask is not None:
        _WORKER.update(kept=np.flatnonzero(mask), floats=np.zeros(layout.num_floats, dtype=np.float32))


def _floor_train(partition: int, server_round: int, values: np.ndarray, ints: np.ndarray) -> tuple:
    """One client's round in a worker: ``values`` are the floats, or the kept ones under a mask."""
    from common.training import load_flat

    config, model, layout, mask = (_WORKER[k] for k in ("config", "model", "layout", "mask"))
    spec = dataclasses.replace(_WORKER["task"], server_round=server_round)
    if mask is None:
        floats = values
    else:
        floats, kept = _WORKER["floats"], _WORKER["kept"]
        floats[kept] = values
    load_flat(model, layout, floats, ints)
    data_dir, clients = config.data.resolved_dir(), config.simulation.num_clients
    result, started, ended = train_client(model, layout, spec, data_dir, clients, partition, mask)
    trained, new_ints = layout.flatten(model.state_dict())
    sent = trained if mask is None else trained[_WORKER["kept"]]
    return sent, new_ints, result.samples, started, ended


def run_floor(config, timings: list[dict], density: float = 1.0) -> None:  # noqa: ANN001 - AppConfig, imported late
    """The same local steps and evaluation with no Flower: a process pool, one worker per CPU.

    Below ``density`` 1, under :func:`floor_mask` of the initial weights, moving the kept values only.
    """
    from common.data import load_dataset
    from common.layout import ModelLayout
    from common.models import build_model
    from common.training import evaluate, load_flat
    from server.evaluation import CentralEvaluator
    from server.phases import union_length

    dataset = load_dataset(config.data.dataset, config.data.resolved_dir())
    model = build_model(
        config.model.name, dataset.num_classes, dataset.input_shape, seed=config.federation.seed
    )
    layout = ModelLayout.from_model(model)
    floats, ints = layout.flatten(model.state_dict())
    mask = floor_mask(layout, floats, density) if density < 1 else None
    kept = None if mask is None else np.flatnonzero(mask)
    if kept is not None:
        floats = np.where(mask, floats, np.float32(0))  # the model evaluated: 0 where pruned
    values = floats if kept is None else floats[kept]
    density = 1.0 if mask is None else layout.density(mask)
    evaluator = CentralEvaluator(config.model.name, dataset, config.train.loss)
    workers = min(
        config.simulation.num_clients, max(1, int((os.cpu_count() or 1) / config.simulation.client_cpus))
    )
    total = np.empty(len(values), dtype=np.float64)  # the weighted sum, allocated once
    term = np.empty_like(total)
    with ProcessPoolExecutor(workers, initializer=_floor_init, initargs=(config.to_flat(), mask)) as pool:
        for server_round in range(1, config.federation.rounds + 1):
            started = time.monotonic()
            futures = [
                pool.submit(_floor_train, p, server_round, values, ints)
                for p in range(config.simulation.num_clients)
            ]
            results = [f.result() for f in futures]
            weights = np.array([r[2] for r in results], dtype=np.float64)
            total.fill(0.0)
            for result, weight in zip(results, weights / weights.sum(), strict=True):
                np.multiply(result[0], weight, out=term)
                total += term
            values = total.astype(np.float32)
            if kept is None:
                floats = values
            else:
                floats[kept] = values  # the pruned weights stay 0 in the evaluated model
            ints = results[-1][1]
            evaluated = time.monotonic()
            load_flat(evaluator.model, layout, floats, ints)
            evaluate(evaluator.model, evaluator.view, evaluator.loss_fn)
            ended = time.monotonic()
            timings.append(
                {
                    "round": server_round,
                    "wall_s": ended - started,
                    "evaluate_s": ended - evaluated,
                    "training_s": union_length([(r[3], r[4]) for r in results]),
                    "density": density,
                }
            )


RUNNERS = {
    "flower": run_flower,
    "dense": run_fedprune,
    "prunefl": run_fedprune,
    "floor": run_floor,
    "floor-pruned": functools.partial(run_floor, density=PRUNED_DENSITY),
}


def run_one(
    model: str, configuration: str, rounds: int, data_dir: str, out: Path, extra: Sequence[str] = ()
) -> list[dict]:
    """One run in this process (``--one``); its per-round timings."""
    import logging

    from common.config import load_config

    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = load_config(None, overrides(model, configuration, rounds, data_dir, out, extra))
    timings: list[dict] = []
    RUNNERS[configuration](config, timings)
    return timings


# -- the whole benchmark ----------------------------------------------------------------
def summarise(timings: list[dict], warmup: int) -> dict:
    """Round times after the warm-up, and the share not in local training.

    The share is :func:`simulations.bench.share_not_training` of the seconds summed
    over the counted rounds, the definition ``fedprune bench`` reports and judges
    its overhead target with: ``1 - training / (wall - evaluation)``.
    """
    from simulations.bench import share_not_training

    counted = [t for t in timings if t["round"] > warmup]
    walls = [t["wall_s"] for t in counted]
    wall, evaluation = sum(walls), sum(t["evaluate_s"] for t in counted)
    training = sum(t["training_s"] for t in counted)
    return {
        "rounds": len(counted),
        "median_s": statistics.median(walls),
        "mean_s": statistics.fmean(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "evaluate_s": evaluation / len(counted),
        "not_training": share_not_training(wall, training, evaluation),
        "not_training_with_evaluation": 1 - training / wall if wall else float("nan"),
        "density": statistics.fmean(t.get("density", 1.0) for t in counted),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved")
    parser.add_argument("--data-dir", default=os.environ.get("FEDPRUNE_DATA_DIR", ""))
    parser.add_argument("--output", type=Path, default=Path("results/bench_overhead"))
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a wire.* or evaluate.overlap setting of fedprune's dense and prunefl runs (repeatable)",
    )
    parser.add_argument("--one", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds <= args.warmup:
        parser.error(f"--rounds ({args.rounds}) must exceed --warmup ({args.warmup})")
    if (problem := check_settable(args.extra)) is not None:
        parser.error(problem)
    if args.one:
        timings = run_one(args.model, args.one, args.rounds, args.data_dir, args.output, args.extra)
        print("TIMINGS " + json.dumps(timings))
        return 0

    load_before = os.getloadavg()
    per_config: dict[str, list[dict]] = {c: [] for c in CONFIGURATIONS}
    for repeat in range(args.repeats):
        for configuration in CONFIGURATIONS:
            out = args.output / f"{args.model}-{configuration}-{repeat}"
            command = [sys.executable, "-m", "simulations.bench_overhead", "--one", configuration]
            command += ["--model", args.model, "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
            command += ["--data-dir", args.data_dir, "--output", str(out)]
            command += [f"--set={text}" for text in args.extra]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("TIMINGS ")]
            if done.returncode != 0 or not lines:
                tail = f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
                print(f"{configuration} failed (exit {done.returncode}):\n{tail}")
                return 1
            per_config[configuration].extend(json.loads(lines[-1].removeprefix("TIMINGS ")))
            print(f"run {repeat + 1}/{args.repeats} {configuration}: done", file=sys.stderr)
    load_after = os.getloadavg()
    args.output.mkdir(parents=True, exist_ok=True)
    saved = {
        "model": args.model,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "set": args.extra,
        "timings": per_config,
    }
    (args.output / f"{args.model}-timings.json").write_text(json.dumps(saved, indent=1))
    figures = {c: summarise(t, args.warmup) for c, t in per_config.items()}

    timed = args.rounds - args.warmup
    print(f"# Round overhead: {args.model}, 10 clients, {timed} timed rounds x {args.repeats}")
    if args.extra:
        print(f"\nfedprune's dense and prunefl runs with {', '.join(args.extra)}")
    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print(
        "| configuration | rounds | median (s) | mean (s) | min (s) | max (s) "
        "| evaluation (s) | not training, evaluation left out | not training | density |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['rounds']} | {f['median_s']:.3f} | {f['mean_s']:.3f} | {f['min_s']:.3f} | "
            f"{f['max_s']:.3f} | {f['evaluate_s']:.3f} | {100 * f['not_training']:.1f}% "
            f"| {100 * f['not_training_with_evaluation']:.1f}% | {f['density']:.3f} |"
        )
    flower = figures["flower"]["mean_s"]
    print(
        f"\noverhead: dense/flower={figures['dense']['mean_s'] / flower:.2f} "
        f"prunefl/flower={figures['prunefl']['mean_s'] / flower:.2f} "
        f"dense-not-training={100 * figures['dense']['not_training']:.0f}% "
        f"prunefl-not-training={100 * figures['prunefl']['not_training']:.0f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
