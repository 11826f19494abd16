"""``fedprune bench``: dense FedAvg and pruning methods side by side, and a report.

A *bench preset* (``simulations/benchmarks/<name>.toml``) names a simulate preset
and overrides (the federated setting every method shares), the methods, the
target accuracy and the device profiles to model::

    [bench]
    description = "..."
    simulate = "prunefl-femnist"     # a preset of fedprune simulate ("" = the defaults)
    methods = ["none", "prunefl"]
    target = 0.7
    profiles = ["raspberry-pi-4-class"]   # [] = every bundled profile with the model's figures

    [set]                             # keys of fedprune simulate, on top of the preset
    federation.rounds = 250

    [paper]                           # optional: a paper's figures to set beside the run's
    reference = "..."
    final-density = 0.13
    seconds.none = { "0.7" = 17500, "0.8" = 51900 }      # modelled seconds to an accuracy
    min-speedup."0.7" = { counted = 2.0, not-counted = 5.0 }

An entry of ``methods`` is a method or an *arm*: a method run with settings of its
own on top of the shared ones, for comparing one method under two settings (PruneFL
without and with per-client round budgets)::

    [arms.prunefl-budget]
    method = "prunefl"
    description = "PruneFL, each client within a 12 s round budget"
    set = { "fleet.round-budget" = 12.0 }

An arm's runs folder and label are its name; a plain method is the arm of its own
name with no settings of its own.

``density-from = "prunefl"`` in ``[bench]`` makes every other method with a target
density (SNIP, magnitude pruning) prune to that method's *final* density, as
PruneFL's paper runs its baselines: those methods run after it, their
``pruning.<method>.target-density`` read from its finished run's last round (an
explicit ``--set`` of the key wins), so the dependency is recorded in their
``config.toml`` and a changed source density is refused on reuse like any other
changed setting.

Every method runs with the same configuration but for ``pruning.method`` and its
own ``pruning.<method>.*`` table (the other methods' tables are dropped: a
setting of a method that is not selected is a configuration error), so data,
partitions, model initialisation, client sampling and batches are identical.
Each run writes ``<report>/runs/<method>/``; on a second call a finished run of
the same configuration is reused and an unfinished one resumed from its latest
checkpoint (:func:`plan_run`). The report (:mod:`simulations.report`) is written
from those folders.
"""

from __future__ import annotations

import csv
import math
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import AppConfig, read_preset, with_method
from common.provenance import git_commit
from common.pruning import METHODS
from common.settings import ConfigError, flatten
from server.app import RunSummary, config_difference
from server.checkpoint import Checkpoint, CheckpointError, latest_checkpoint
from server.phases import SERVER_PHASES
from server.progress import RunProgress
from server.results import CONFIG_FILE, PHASES_FILE, SUMMARY_FILE, read_rounds
from simulations.compare import NEEDS_SOURCE, preset_method_keys
from simulations.presets import BENCH_PACKAGE, load_preset_table, preset_names, preset_path
from simulations.report import COUNTINGS, PaperFigures, TableRow, table_rows

if TYPE_CHECKING:
    from rich.console import Console

RUNS_DIR = "runs"
BASELINE = "none"

Runner = Callable[[AppConfig, Checkpoint | None, RunProgress | None], RunSummary]


class BenchError(ValueError):
    """A bench preset or a runs folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class Arm:
    """One run of a bench: its name (label and runs folder), its method, its own settings."""

    name: str
    method: str
    overrides: dict[str, object] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class BenchPreset:
    """What a benchmark runs: a shared federated setting, arms, a target and profiles."""

    name: str
    description: str = ""
    simulate: str = ""
    overrides: dict[str, object] = field(default_factory=dict)
    methods: tuple[str, ...] = (BASELINE, "prunefl")  # arm names (a method is its own arm)
    arms: dict[str, Arm] = field(default_factory=dict)  # the arms defined in [arms]
    target: float = 0.9
    profiles: tuple[str, ...] = ()
    targets: Targets = field(default_factory=lambda: Targets())
    density_from: str = ""  # methods with a target density take this arm's final density
    paper: PaperFigures | None = None

    def arm(self, name: str) -> Arm:
        """The arm ``name``: one of ``[arms]``, else the method of that name with no settings of its own."""
        return self.arms.get(name) or Arm(name, name)

    def resolve(self, names: Sequence[str]) -> list[Arm]:
        """The arms ``names`` (``--methods`` or the preset's), each checked; raises ConfigError."""
        check_methods([n for n in names if n not in self.arms], [*self.arms])
        if len(set(names)) != len(names):
            raise ConfigError("--methods", ",".join(names), "each method once", what="option")
        return [self.arm(name) for name in names]


@dataclass(frozen=True)
class Targets:
    """What a method should achieve against dense FedAvg (a preset's ``[targets]``); None = not set.

    ``time_ratio``: at most this fraction of dense FedAvg's modelled time to the target
    accuracy (under the preset's first profile); ``bytes_ratio``: of its bytes to the
    target; ``overhead``: the share of the round wall time not spent in local training, the
    server's test-set evaluation left out (:func:`share_not_training`).
    """

    time_ratio: float | None = None
    bytes_ratio: float | None = None
    overhead: float | None = None
    reference: str = ""


def bench_presets() -> list[str]:
    """Names of the bundled bench presets."""
    return preset_names(BENCH_PACKAGE)


def load_bench_preset(name: str) -> BenchPreset:
    """A bundled bench preset by name, or a bench preset file by path."""
    path, table = load_preset_table(name, BENCH_PACKAGE, "preset", "bench preset")
    bench = table.get("bench", {})
    unknown = set(table) - {"bench", "set", "targets", "paper", "arms"} | set(bench) - {
        "description",
        "simulate",
        "methods",
        "target",
        "profiles",
        "density-from",
    }
    if unknown:
        raise ConfigError(
            "preset",
            str(path),
            f"only [bench] (description, simulate, methods, target, profiles, density-from), [set], "
            f"[arms], [targets] and [paper] (not {sorted(unknown)})",
            what="argument",
        )
    target = bench.get("target", 0.9)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise ConfigError("bench.target", str(target), "an accuracy in (0, 1]")
    preset = BenchPreset(
        name=path.name.removesuffix(".toml"),
        description=str(bench.get("description", "")),
        simulate=str(bench.get("simulate", "")),
        overrides=flatten(table.get("set", {})),
        methods=tuple(bench.get("methods", (BASELINE, "prunefl"))),
        arms=read_arms(table.get("arms", {})),
        target=float(target),
        profiles=tuple(bench.get("profiles", ())),
        targets=read_targets(table.get("targets", {})),
        density_from=str(bench.get("density-from", "")),
        paper=read_paper(table["paper"]) if "paper" in table else None,
    )
    preset.resolve(preset.methods)
    if preset.density_from:
        preset.resolve([preset.density_from])
    return preset


ARM_KEYS = ("method", "description", "set")


def read_arms(table: dict) -> dict[str, Arm]:
    """A preset's ``[arms]``: per arm name its method and settings (see the module)."""
    arms = {}
    for name, arm in table.items():
        key = f"arms.{name}"
        if not isinstance(arm, dict) or set(arm) - set(ARM_KEYS) or "method" not in arm:
            raise ConfigError(key, str(arm), f"a table with a method and optionally {list(ARM_KEYS[1:])}")
        if name == BASELINE or (name in METHODS and arm["method"] != name):
            raise ConfigError(key, name, "a name that is not dense FedAvg's nor another method's")
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ConfigError(key, name, "a name of letters, digits, - and _ (it names a folder)")
        check_methods([str(arm["method"])])
        if not isinstance(arm.get("set", {}), dict):
            raise ConfigError(f"{key}.set", str(arm["set"]), "a table of settings")
        overrides = flatten(arm.get("set", {}))
        own = f"pruning.{arm['method']}."
        foreign = [
            k
            for k in overrides
            if k.startswith("output.") or (k.startswith("pruning.") and not k.startswith(own))
        ]
        if foreign:
            raise ConfigError(
                f"{key}.set", str(foreign), f"settings other than output.* and pruning.* outside {own}*"
            )
        arms[name] = Arm(name, str(arm["method"]), overrides, str(arm.get("description", "")))
    return arms


def read_targets(table: dict) -> Targets:
    values = {}
    for key in ("time-ratio", "bytes-ratio", "overhead"):
        value = table.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ConfigError(f"targets.{key}", str(value), "a positive number")
        values[key.replace("-", "_")] = None if value is None else float(value)
    unknown = set(table) - {"time-ratio", "bytes-ratio", "overhead", "reference"}
    if unknown:
        raise ConfigError("targets", str(sorted(unknown)), "time-ratio, bytes-ratio, overhead, reference")
    return Targets(**values, reference=str(table.get("reference", "")))


def _accuracy(key: str, text: object) -> float:
    try:
        value = float(str(text))
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise ConfigError(key, str(text), 'an accuracy in (0, 1], written as a quoted key ("0.7")')
    return value


def _positive(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(key, str(value), "a positive number")
    return float(value)


def read_paper(table: dict) -> PaperFigures:
    """A preset's ``[paper]``: the paper's modelled seconds per method and accuracy, its targets."""
    unknown = set(table) - {"reference", "final-density", "seconds", "min-speedup", "method"}
    if unknown:
        raise ConfigError(
            "paper", str(sorted(unknown)), "reference, final-density, seconds, min-speedup, method"
        )
    subject = str(table.get("method", "prunefl"))
    check_methods([subject])
    seconds: dict[str, dict[float, float]] = {}
    for method, figures in dict(table.get("seconds", {})).items():
        check_methods([method])
        if not isinstance(figures, dict):
            raise ConfigError(f"paper.seconds.{method}", str(figures), 'a table { "0.7" = seconds, ... }')
        seconds[method] = {
            _accuracy(f"paper.seconds.{method}", a): _positive(f"paper.seconds.{method}.{a}", v)
            for a, v in figures.items()
        }
    min_speedup: dict[float, dict[str, float]] = {}
    for accuracy, ways in dict(table.get("min-speedup", {})).items():
        key = f"paper.min-speedup.{accuracy}"
        if not isinstance(ways, dict) or set(ways) - set(COUNTINGS):
            raise ConfigError(key, str(ways), f"a table with keys among {list(COUNTINGS)}")
        min_speedup[_accuracy(key, accuracy)] = {k: _positive(f"{key}.{k}", v) for k, v in ways.items()}
    density = table.get("final-density")
    if density is not None and not 0 < _positive("paper.final-density", density) <= 1:
        raise ConfigError("paper.final-density", str(density), "a density in (0, 1]")
    return PaperFigures(
        reference=str(table.get("reference", "")),
        seconds=seconds,
        final_density=None if density is None else float(density),
        min_speedup=min_speedup,
        method=subject,
    )


def check_methods(methods: Sequence[str], arms: Sequence[str] = ()) -> None:
    """Every entry of ``methods`` is a method that starts from nothing; raises ConfigError."""
    startable = [m for m in METHODS if m not in NEEDS_SOURCE]
    for method in methods:
        if method not in startable:
            also = f" or the preset's arms {list(arms)}" if arms else ""
            raise ConfigError(
                "--methods", method, f"methods that start from nothing: {startable}{also}", what="option"
            )
    if len(set(methods)) != len(methods):
        raise ConfigError("--methods", ",".join(methods), "each method once", what="option")


def with_baseline(methods: Iterable[str]) -> list[str]:
    """``methods`` with dense FedAvg first (the report compares every method with it)."""
    rest = [m for m in methods if m != BASELINE]
    return [BASELINE, *rest]


def shared_setting(preset: BenchPreset, overrides: Iterable[tuple[str, object]] = ()) -> dict[str, object]:
    """The flat keys every method shares: the simulate preset, the bench's [set], then ``overrides``."""
    flat: dict[str, object] = {}
    if preset.simulate:
        path = preset_path(Path(preset.simulate))
        assert path is not None
        flat.update(read_preset(path))
    flat.update(preset.overrides)
    flat.update(overrides)
    return flat


def arm_config(shared: dict[str, object], arm: Arm, runs_dir: Path) -> AppConfig:
    """``arm``'s configuration: the shared keys and its own, its method's table only, its runs folder.

    Keys of other methods' tables are dropped; the method's own keys come from the
    arm's settings, else the shared setting, else its bundled preset
    (``simulations/<method>.toml``).
    """
    flat = with_method({**shared, **arm.overrides}, arm.method)
    flat.update({k: v for k, v in preset_method_keys(arm.method).items() if k not in flat})
    flat.update({"output.dir": str(runs_dir), "output.name": arm.name})
    return AppConfig.from_flat(flat)


def method_config(shared: dict[str, object], method: str, runs_dir: Path) -> AppConfig:
    """The configuration of ``method`` run as its own arm (:func:`arm_config`)."""
    return arm_config(shared, Arm(method, method), runs_dir)


def saved_config_difference(folder: Path, config: AppConfig) -> str | None:
    """None if ``folder``'s run has ``config`` (its place aside); else the first key that differs."""
    return config_difference(read_preset(folder / CONFIG_FILE), config)


@dataclass(frozen=True)
class RunPlan:
    """What to do for one arm: ``reuse`` a finished run, ``resume`` one, or ``start`` afresh."""

    arm: str
    config: AppConfig
    action: str
    checkpoint: Checkpoint | None = None

    @property
    def folder(self) -> Path:
        return Path(self.config.output.dir) / self.config.output.name


def plan_run(config: AppConfig) -> RunPlan:
    """Decide from the run's folder whether to reuse, resume or start the run of ``config``.

    A folder holding a run of another configuration is refused (rather than overwritten).
    """
    arm = config.output.name
    folder = Path(config.output.dir) / config.output.name
    if not (folder / CONFIG_FILE).is_file():
        return RunPlan(arm, config, "start")
    difference = saved_config_difference(folder, config)
    if difference is not None:
        raise BenchError(
            f"{folder} holds a run of another configuration ({difference}); "
            "remove it or write the report elsewhere (--output)"
        )
    if (folder / SUMMARY_FILE).is_file():
        return RunPlan(arm, config, "reuse")
    try:
        checkpoint = latest_checkpoint(folder)
    except CheckpointError:
        return RunPlan(arm, config, "start")  # killed before its first checkpoint
    return RunPlan(arm, config, "resume", checkpoint)


def plan_runs(shared: dict[str, object], arms: Sequence[Arm], report_dir: Path) -> list[RunPlan]:
    """One plan per arm, every configuration validated before anything runs."""
    runs_dir = report_dir / RUNS_DIR
    return [plan_run(arm_config(shared, arm, runs_dir)) for arm in arms]


def density_key(method: str) -> str | None:
    """``pruning.<method>.target-density`` if ``method`` has a target density, else None."""
    key = f"pruning.{method}.target-density"
    return key if key in METHODS[method].settings_keys() else None


def density_dependents(
    preset: BenchPreset, arms: Sequence[Arm], overrides: Iterable[tuple[str, object]] = ()
) -> list[Arm]:
    """The arms whose target density comes from ``preset.density_from``'s final density.

    An arm whose density key is set explicitly (``--set``, or the arm's own settings) keeps it.
    """
    if not preset.density_from:
        return []
    given = {key for key, _ in overrides}
    dependents = [
        a
        for a in arms
        if a.name != preset.density_from
        and (key := density_key(a.method)) is not None
        and key not in given
        and key not in a.overrides
    ]
    if dependents and preset.density_from not in [a.name for a in arms]:
        raise BenchError(
            f"{', '.join(a.name for a in dependents)} take their target density from the final density "
            f"of {preset.density_from!r} (bench.density-from); run it too (--methods) or set "
            + ", ".join(f"{density_key(a.method)}" for a in dependents)
        )
    return dependents


def final_density(folder: Path) -> float:
    """The density of a finished run's last round (``rounds.csv``), to 6 decimals."""
    if not (folder / SUMMARY_FILE).is_file():
        raise BenchError(f"{folder} has not finished; its final density is not known yet")
    rows = read_rounds(folder)
    if not rows:
        raise BenchError(f"{folder} has no rounds")
    return round(float(rows[-1]["density"]), 6)


def execute(plans: Sequence[RunPlan], run: Runner) -> list[Path]:
    """Run (or resume) every plan that needs it, in order; return the runs' folders."""
    folders = []
    for plan in plans:
        if plan.action != "reuse":
            run(plan.config, plan.checkpoint, None)
        folders.append(plan.folder)
    return folders


# -- what the report says about the machine and the run --------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def environment(load_before: float | None = None) -> dict[str, str]:
    """Hardware and versions, for the report's set-up section."""
    import flwr
    import numpy
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    info = {
        "CPU": f"{_cpu_model()}, {os.cpu_count()} logical cores, {_memory_gib()} RAM ({platform.machine()})",
        "Versions": (
            f"Python {platform.python_version()}, torch {torch.__version__}, flwr {flwr.__version__}, "
            f"numpy {numpy.__version__}"
        ),
        "fedprune commit": git_commit(),
        "Load average (1 min)": (
            (f"{load_before:.2f} at the start, " if load_before is not None else "")
            + f"{load[0]:.2f} at the end"
        ),
    }
    return info


# -- framework overhead from phases.csv ------------------------------------------------------
def share_not_training(wall_s: float, training_s: float, evaluate_s: float) -> float:
    """The share of the rounds' wall time not in local training, the server's evaluation left out.

    ``1 - training / (wall - evaluate)`` over seconds summed across rounds: the
    share a round shows without its test-set evaluation (a measurement, not FL,
    reported on its own), so a slow evaluation does not dilute it. The issue's
    overhead targets, this bench's report and ``python -m simulations.bench_overhead``
    all use this one definition.
    """
    rest = wall_s - evaluate_s
    return 1 - training_s / rest if rest > 0 else math.nan


@dataclass(frozen=True)
class Overhead:
    """A run's phase seconds summed over its rounds (``phases.csv``)."""

    label: str
    rounds: int
    wall_s: float
    training_wall_s: float
    server: dict[str, float]
    client_prepare_s: float
    client_decode_s: float
    client_train_s: float
    client_encode_s: float
    client_total_s: float

    @property
    def not_training(self) -> float:
        """Share of the rounds' wall time during which no client was training."""
        return 1 - self.training_wall_s / self.wall_s if self.wall_s else math.nan

    @property
    def not_training_nor_evaluating(self) -> float:
        """The same with the server's test-set evaluation left out (:func:`share_not_training`)."""
        return share_not_training(self.wall_s, self.training_wall_s, self.server.get("evaluate", 0.0))

    @property
    def rest_s(self) -> float:
        """Wall time neither in local training nor in a timed server phase: clients' decoding and
        encoding outside others' training, messaging (Flower's serialisation, the SuperLink,
        Ray), scheduling and waiting. Server phases that run while clients train (replies
        decoded as they arrive, :mod:`server.arrivals`) count in both, so this is a lower
        bound and can come out negative."""
        return self.wall_s - self.training_wall_s - sum(self.server.values())


def read_overhead(folder: Path, label: str) -> Overhead | None:
    """Sum a run's ``phases.csv`` (None when the run has none)."""
    path = folder / PHASES_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None

    def total(column: str) -> float:
        return sum(float(r[column]) for r in rows)

    return Overhead(
        label=label,
        rounds=len(rows),
        wall_s=total("wall_s"),
        training_wall_s=total("training_wall_s"),
        server={name: total(f"server_{name}_s") for name in SERVER_PHASES},
        client_prepare_s=total("client_prepare_s") if "client_prepare_s" in rows[0] else 0.0,
        client_decode_s=total("client_decode_s"),
        client_train_s=total("client_train_s"),
        client_encode_s=total("client_encode_s"),
        client_total_s=total("client_total_s"),
    )


PHASE_LABELS = {
    "setup": "server: node discovery",
    "encode": "server: encode models",
    "accounting": "server: measure bytes",
    "decode": "server: decode and validate replies",
    "aggregate": "server: aggregate",
    "reconfigure": "server: reconfigure mask",
    "evaluate": "server: evaluate on the test set",
}


def overhead_markdown(overheads: Sequence[Overhead]) -> str:
    """The per-phase table (shares of the summed round wall time) and one line per run."""
    if not overheads:
        return "No run has `phases.csv` (runs written before phases were timed)."
    head = ["phase (measured)", *[o.label for o in overheads]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(seconds: Callable[[Overhead], float]) -> list[str]:
        return [f"{seconds(o):.1f} s ({seconds(o) / o.wall_s:.1%})" if o.wall_s else "n/a" for o in overheads]

    lines.append(
        "| local training (wall time with a client training) | "
        + " | ".join(cells(lambda o: o.training_wall_s))
        + " |"
    )
    for name in SERVER_PHASES:
        lines.append(f"| {PHASE_LABELS[name]} | " + " | ".join(cells(lambda o, n=name: o.server[n])) + " |")
    lines.append(
        "| rest: client prepare/decode/encode, messaging, Ray, waiting | "
        + " | ".join(cells(lambda o: o.rest_s))
        + " |"
    )
    lines.append(
        "| **round wall time, all rounds** | " + " | ".join(f"{o.wall_s:.1f} s" for o in overheads) + " |"
    )
    lines.append(
        "| **not in local training** | " + " | ".join(f"**{o.not_training:.1%}**" for o in overheads) + " |"
    )
    lines.append(
        "| **not in local training, server evaluation left out** (the targets' share) | "
        + " | ".join(f"**{o.not_training_nor_evaluating:.1%}**" for o in overheads)
        + " |"
    )
    lines.append(
        "| clients' own seconds: prepare / decode / train / encode (summed over clients) | "
        + " | ".join(
            f"{o.client_prepare_s:.1f} / {o.client_decode_s:.1f} / {o.client_train_s:.1f} / "
            f"{o.client_encode_s:.1f} s"
            for o in overheads
        )
        + " |"
    )
    return "\n".join(lines)


def scale_markdown(scale: dict) -> str:
    """The scale measurement (:mod:`simulations.bench_scale`) as a short table."""
    runs = scale.get("runs", [])
    lines = [
        "| clients (sampled per round) | rounds | round 1 starts after (measured) "
        "| server peak RSS (measured) | wall time (measured) | final accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        start = f"{r['round1_start_s']:.1f} s" if "round1_start_s" in r else "n/a"
        lines.append(
            f"| {r['clients']} ({r['clients_per_round']}) | {r['rounds']} | {start} | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['wall_s']:.0f} s | {r['final_accuracy']:.4f} |"
        )
    if "ratio" in scale:
        lines.append("")
        start_ratio = ""
        if "start_ratio" in scale:
            start_ratio = f"; round 1 starts after **{scale['start_ratio']:.2f}x** the time"
        lines.append(
            f"Peak RSS of the server process with {runs[-1]['clients']} clients is **{scale['ratio']:.2f}x** "
            f"that with {runs[0]['clients']} (target: at most 1.5x){start_ratio}. "
            f"Command: `{scale.get('command', '')}`."
        )
    return "\n".join(lines)


# -- the report ------------------------------------------------------------------------------
SCALE_FILE = "scale.json"
PAPER_FILE = "paper.csv"
METHOD_NAMES = {
    "none": "dense FedAvg (`none`)",
    "prunefl": "PruneFL (`prunefl`)",
    "snip": "SNIP (`snip`)",
    "magnitude": "iterative magnitude pruning (`magnitude`)",
}


def write_bench_report(
    report_dir: Path,
    preset: BenchPreset,
    folders: Sequence[Path],
    command: str,
    env: dict[str, str],
    notes: Sequence[str] = (),
) -> Path:
    """``report.md`` (answer, table, plots, overhead, scale, set-up), ``table.csv`` and plots."""
    import json

    from simulations.report import load_run, write_report

    runs = [load_run(folder, folder.name) for folder in folders]
    overheads = [o for o in (read_overhead(f, f.name) for f in folders) if o is not None]
    rows, profiles = table_rows(runs, preset.target, preset.profiles)
    profile = next((p for p in preset.profiles if p in profiles), profiles[0] if profiles else None)
    early = [targets_markdown(preset, rows, overheads, profile)] if preset.targets != Targets() else []
    if preset.paper is not None and profile is not None:
        from simulations.report import paper_markdown, paper_rows, write_paper_csv

        compared = paper_rows(runs, preset.paper, profile)
        report_dir.mkdir(parents=True, exist_ok=True)
        write_paper_csv(report_dir / PAPER_FILE, compared)
        early.append(
            "## Against the paper\n\n"
            + paper_markdown(compared, preset.paper, profile, METHOD_NAMES)
            + f"\n\nThe same figures: `{PAPER_FILE}`."
        )
    sections = [
        "## Framework overhead\n\n"
        "Share of the rounds' wall time (rounds 1..R, summed) spent in each phase, **measured** on this "
        "machine. *Local training* is the wall time during which at least one client was in its local "
        "SGD loop (the union of the clients' training intervals); server phases are timed exclusively "
        "on the server; the rest is the clients' preparing (task, data, model), decoding and encoding "
        "outside others' training, "
        "Flower's messaging (serialisation, the SuperLink's store, Ray) and waiting. In this simulation "
        "server and clients share the machine's cores.\n\n" + overhead_markdown(overheads)
    ]
    scale_path = report_dir / SCALE_FILE
    if scale_path.is_file():
        sections.append("## Scale\n\n" + scale_markdown(json.loads(scale_path.read_text(encoding="utf-8"))))
    title = f"fedprune bench {preset.name}" + (f": {preset.description}" if preset.description else "")
    return write_report(
        report_dir,
        runs,
        preset.target,
        title,
        command,
        env,
        notes=notes,
        profiles_only=preset.profiles,
        sections=sections,
        after_table=early,
    )


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _verdict(value: float, limit: float) -> str:
    if math.isnan(value):
        return "not measurable"
    return "**met**" if value <= limit else "**not met**"


def targets_markdown(
    preset: BenchPreset, rows: Sequence[TableRow], overheads: Sequence[Overhead], profile: str | None
) -> str:
    """One line per target and method: the measured (or modelled) figure, the limit, met or not."""
    targets = preset.targets
    base = next((r for r in rows if r.label == BASELINE), None)
    lines = ["### Targets", ""]
    if targets.reference:
        lines += [targets.reference, ""]
    for r in rows:
        if r.label == BASELINE:
            continue
        if base is not None and targets.time_ratio is not None and profile is not None:
            ratio = r.modelled_to_target.get(profile, math.nan) / base.modelled_to_target.get(
                profile, math.nan
            )
            speedup = "" if math.isnan(ratio) or ratio == 0 else f", {1 / ratio:.2f}x faster"
            lines.append(
                f"- `{r.label}`: modelled time to {preset.target:.0%} ({profile}) **{_ratio(ratio)}** "
                f"of dense FedAvg's{speedup} (target: at most {targets.time_ratio:.3f}): "
                f"{_verdict(ratio, targets.time_ratio)}"
            )
        if base is not None and targets.bytes_ratio is not None:
            ratio = r.bytes_to_target / base.bytes_to_target
            lines.append(
                f"- `{r.label}`: bytes to {preset.target:.0%} **{_ratio(ratio)}** of dense FedAvg's "
                f"(measured; target: at most {targets.bytes_ratio:.3f}): "
                f"{_verdict(ratio, targets.bytes_ratio)}"
            )
    if targets.overhead is not None:
        for o in overheads:
            if o.label == BASELINE:
                continue
            lines.append(
                f"- `{o.label}`: share of the round wall time not in local training, the server's "
                f"evaluation left out, **{o.not_training_nor_evaluating:.1%}** (measured; target: under "
                f"{targets.overhead:.0%}; {o.not_training:.1%} with the evaluation counted): "
                f"{_verdict(o.not_training_nor_evaluating, targets.overhead)}"
            )
    short = [r.label for r in rows if math.isnan(r.bytes_to_target)]
    if short:
        lines.append(
            f"- Not reaching {preset.target:.0%} within the rounds run: {', '.join(short)}; "
            "the ratios need more rounds."
        )
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------
def run_bench(
    preset: BenchPreset,
    methods: Sequence[str],
    overrides: Iterable[tuple[str, object]],
    report_dir: Path,
    run: Runner,
    command: str,
    verbose: bool = False,
    console: Console | None = None,
) -> Path:
    """Plan, run (each in the view of :mod:`simulations.live`) and report; return the report's path.

    ``console`` is where the views go (default: stdout); Flower's log shows with ``verbose`` only.
    """
    from server.app import check_fits, preflight
    from simulations.live import RunView, flower_log, stdout_console

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    overrides = list(overrides)
    shared = shared_setting(preset, overrides)
    arms = preset.resolve(with_baseline(methods))
    dependents = density_dependents(preset, arms, overrides)
    plans = plan_runs(shared, [a for a in arms if a not in dependents], report_dir)
    # the dependents' configurations are checked now, with their own density for the time being
    provisional = [arm_config(shared, a, report_dir / RUNS_DIR) for a in dependents]
    for config in provisional:
        config.check_simulation()
        preflight(config)
    for plan in plans:
        plan.config.check_simulation()
        layout = preflight(plan.config)
        if plan.checkpoint is not None:
            check_fits(plan.checkpoint, plan.config, layout)
    shown = console or stdout_console()

    def run_shown(
        config: AppConfig, checkpoint: Checkpoint | None, _progress: RunProgress | None
    ) -> RunSummary:
        title = f"bench {preset.name}: {config.output.name}"
        with RunView(shown, title) as view, flower_log(verbose, view):
            return run(config, checkpoint, view)

    def say_reused(plans: Sequence[RunPlan]) -> None:
        for plan in plans:
            if plan.action == "reuse":
                shown.print(f"bench {preset.name}: {plan.arm} reused from {plan.folder}", highlight=False)

    notes = [
        f"Arm `{a.name}`: `{a.method}`"
        + (f" ({a.description})" if a.description else "")
        + (", with " + ", ".join(f"`{k} = {v!r}`" for k, v in a.overrides.items()) if a.overrides else "")
        + "."
        for a in arms
        if a.name in preset.arms
    ]
    say_reused(plans)
    execute(plans, run_shown)
    if dependents:
        density = final_density(report_dir / RUNS_DIR / preset.density_from)
        keys = {density_key(a.method): density for a in dependents}
        later = plan_runs({**shared, **keys}, dependents, report_dir)
        for plan in later:
            if plan.checkpoint is not None:
                check_fits(plan.checkpoint, plan.config, preflight(plan.config))
        say_reused(later)
        execute(later, run_shown)
        plans = [*plans, *later]
        notes.append(
            f"{', '.join(f'`{a.name}`' for a in dependents)} pruned to `{preset.density_from}`'s final "
            f"density, {density:.4f} (bench.density-from), as PruneFL's paper runs its baselines."
        )
    order = {arm.name: i for i, arm in enumerate(arms)}
    plans = sorted(plans, key=lambda plan: order[plan.arm])
    folders = [plan.folder for plan in plans]
    done = {"reuse": "reused from an earlier call", "resume": "resumed from its checkpoint", "start": "run"}
    notes.insert(0, "This call: " + "; ".join(f"`{plan.arm}` {done[plan.action]}" for plan in plans) + ".")
    notes.append(
        "The machine may have been shared with other jobs while the runs ran; wall times are indicative "
        "(see the load average)."
    )
    return write_bench_report(report_dir, preset, folders, command, environment(load_before), notes)


def shared_rounds(plans: Sequence[RunPlan], configs: Sequence[AppConfig]) -> int:
    """The rounds every run of the bench has (one shared setting)."""
    return max([p.config.federation.rounds for p in plans] + [c.federation.rounds for c in configs])
