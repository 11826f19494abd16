"""``fedprune reproduce CLAIM``: a source paper's headline claim, run federated and judged.

A *claim preset* (``simulations/claims/<claim>.toml``) is a bench preset
(:mod:`simulations.bench`: ``[bench]`` names the simulate preset, ``[set]`` the
shared keys) with three more tables:

* ``[arms.<label>]``: the runs of the claim, in order, each a ``method`` and its own
  dotted keys on top of the shared setting (``pruning.gibbs.mode = "kernel"``, or
  ``federation.rounds`` for a run that trains longer); ``source = "<label>"`` starts
  a ``rethinking`` arm from that earlier arm's finished run (its final mask and
  model), so fine-tune, scratch-E and scratch-B share one pruned architecture;
* ``[claim]``: the paper's figure in words, the seeds, the criteria the run is
  judged by (``[[claim.criteria]]``, data read by :func:`simulations.report.read_criteria`),
  the paper's accuracy per arm, what a smaller-than-the-paper run differs in, and
  which arms' shrunk client models have their step time measured;
* ``[full]``: the keys that restore the paper's model (``--full``) and what the
  run still differs in then.

Every arm of every seed writes ``<report>/runs/seed-<s>/<label>/``; a second call
with the same command reuses finished runs and resumes unfinished ones from their
latest checkpoint (:func:`simulations.bench.plan_run`), and the report
(:func:`simulations.report.write_claim_report`) is written from those folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import AppConfig, with_method
from common.cost_model import PROFILE_KEY
from common.pruning import METHODS
from common.settings import ConfigError, flatten
from server.checkpoint import Checkpoint
from server.results import ROUNDS_FILE
from simulations.bench import (
    RUNS_DIR,
    BenchError,
    BenchPreset,
    environment,
    execute,
    plan_run,
    shared_setting,
)
from simulations.compare import preset_method_keys
from simulations.presets import load_preset_table, preset_names
from simulations.report import (
    ClaimSpec,
    arm_results,
    claim_markdown,
    claim_plots,
    judge,
    markdown_table,
    read_claim,
    step_times,
    table_rows,
    write_claim_csv,
)

if TYPE_CHECKING:
    from rich.console import Console

    from simulations.bench import Runner
    from simulations.report import RunRecord

CLAIMS_PACKAGE = "simulations.claims"
SOURCE_KEY = "pruning.rethinking.source"
REINIT_KEY = "pruning.rethinking.reinit-seed"
REINIT_OFFSET = 1000  # scratch runs of seed s draw their new initialisation from seed 1000 + s


@dataclass(frozen=True)
class Arm:
    """One run of a claim: a label, a method and the keys it sets on top of the shared setting."""

    label: str
    method: str
    overrides: dict[str, object] = field(default_factory=dict)
    source: str = ""  # label of the earlier arm whose finished run a rethinking arm starts from


@dataclass(frozen=True)
class Claim:
    """A claim preset, read: the shared bench setting, the arms, the judgement, the full-size keys."""

    name: str
    bench: BenchPreset
    arms: tuple[Arm, ...]
    spec: ClaimSpec
    full: dict[str, object] = field(default_factory=dict)
    full_differs: str = ""

    def arm(self, label: str) -> Arm:
        return next(a for a in self.arms if a.label == label)


def claim_names() -> list[str]:
    """Names of the bundled claim presets."""
    return preset_names(CLAIMS_PACKAGE)


def _error(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(key, str(value), allowed)


def read_arms(table: dict) -> tuple[Arm, ...]:
    """``[arms.<label>]`` tables, in file order; a source must be an earlier arm."""
    arms: list[Arm] = []
    for label, body in table.items():
        key = f"arms.{label}"
        if not isinstance(body, dict) or "method" not in body:
            raise _error(key, body, 'a table with method = "<a pruning method>" and its keys')
        method = str(body["method"])
        if method not in METHODS:
            raise _error(f"{key}.method", method, f"one of {sorted(METHODS)}")
        source = str(body.get("source", ""))
        earlier = [a.label for a in arms]
        if method == "rethinking" and source not in earlier:
            raise _error(f"{key}.source", source, f"the label of an earlier arm ({earlier})")
        if source and method != "rethinking":
            raise _error(f"{key}.source", source, "nothing: only a rethinking arm starts from another arm")
        overrides = flatten({k: v for k, v in body.items() if k not in ("method", "source")})
        foreign = [
            k
            for k in overrides
            if k.startswith("pruning.") and k.count(".") >= 2 and not k.startswith(f"pruning.{method}.")
        ]
        if foreign or "pruning.method" in overrides or SOURCE_KEY in overrides:
            raise _error(
                key, sorted(foreign) or "pruning.method", f"keys of pruning.{method} and shared keys"
            )
        arms.append(Arm(label, method, overrides, source))
    if not arms:
        raise _error("arms", "{}", "at least one [arms.<label>] table")
    return tuple(arms)


def load_claim(name: str) -> Claim:
    """A bundled claim preset by name, or a claim preset file by path, checked."""
    path, table = load_preset_table(name, CLAIMS_PACKAGE, "claim", "claim preset")
    unknown = set(table) - {"bench", "set", "arms", "claim", "full"}
    if unknown:
        raise ConfigError(
            "claim", str(path), f"only [bench], [set], [arms], [claim] and [full] (not {sorted(unknown)})"
        )
    bench = table.get("bench", {})
    if set(bench) - {"description", "simulate", "target"}:
        raise _error(
            "bench",
            sorted(set(bench) - {"description", "simulate", "target"}),
            "description, simulate, target",
        )
    target = bench.get("target", 0.9)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise _error("bench.target", target, "an accuracy in (0, 1]")
    arms = tuple(
        Arm(a.label, a.method, beside(a.overrides, path), a.source) for a in read_arms(table.get("arms", {}))
    )
    spec = read_claim(table.get("claim", {}), [a.label for a in arms])
    full = dict(table.get("full", {}))
    full_differs = str(full.pop("differs", ""))
    preset = BenchPreset(
        name=path.name.removesuffix(".toml"),
        description=str(bench.get("description", "")),
        simulate=str(bench.get("simulate", "")),
        overrides=beside(flatten(table.get("set", {})), path),
        methods=tuple(a.method for a in arms),
        target=float(target),
    )
    return Claim(preset.name, preset, arms, spec, beside(flatten(full), path), full_differs)


def beside(flat: dict[str, object], preset: Path) -> dict[str, object]:
    """``flat`` with a relative ``cost.profile`` file resolved against the preset's folder."""
    profile = flat.get(PROFILE_KEY)
    if isinstance(profile, str) and profile.endswith(".toml") and not Path(profile).is_absolute():
        return {**flat, PROFILE_KEY: str((preset.parent / profile).resolve())}
    return flat


def only_arms(claim: Claim, text: str) -> Claim:
    """``claim`` with only the arms named in ``text`` (comma-separated), in the claim's order.

    An arm that starts from another (``source``) needs that arm too.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    labels = [a.label for a in claim.arms]
    unknown = [n for n in names if n not in labels]
    if not names or unknown:
        raise ConfigError("--arms", text, f"arms of {claim.name}, comma-separated: {labels}", what="option")
    kept = tuple(a for a in claim.arms if a.label in names)
    missing = [a.source for a in kept if a.source and a.source not in names]
    if missing:
        raise ConfigError(
            "--arms", text, f"the arms it starts from too ({', '.join(missing)})", what="option"
        )
    return replace(claim, arms=kept)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1"`` as seeds; each a distinct integer >= 0."""
    try:
        seeds = tuple(int(p) for p in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", text, "distinct integers >= 0, comma-separated (0,1)", what="option")
    return seeds


def seed_dir(report_dir: Path, seed: int) -> Path:
    return report_dir / RUNS_DIR / f"seed-{seed}"


def _own(flat: dict[str, object], method: str) -> dict[str, object]:
    """``flat`` without the keys of other methods' tables (and without ``pruning.method``)."""
    kept = with_method(flat, method)
    kept.pop("pruning.method")
    return kept


def arm_config(
    shared: dict[str, object],
    arm: Arm,
    runs_dir: Path,
    seed: int,
    later: dict[str, object] | None = None,
) -> AppConfig:
    """``arm``'s configuration in seed ``seed``.

    Layers, each later one winning: the shared keys, the bundled preset of the arm's
    method (``simulations/<method>.toml``: its own table only), the arm's keys, then
    ``later`` (``[full]`` with ``--full``, then ``--set``), other methods' tables
    dropped at every layer. A rethinking arm's source is the folder of its source
    arm in the same seed, and its new initialisation is drawn from seed
    ``1000 + seed`` unless a layer sets it.
    """
    flat = with_method({**shared, "federation.seed": seed}, arm.method)
    flat.update({k: v for k, v in preset_method_keys(arm.method).items() if k not in flat})
    flat.update(arm.overrides)
    flat.update(_own(later or {}, arm.method))
    if arm.method == "rethinking":
        flat[SOURCE_KEY] = str(runs_dir / arm.source)
        flat.setdefault(REINIT_KEY, REINIT_OFFSET + seed)
    flat.update({"output.dir": str(runs_dir), "output.name": arm.label})
    return AppConfig.from_flat(flat)


def claim_layers(
    claim: Claim, overrides: Iterable[tuple[str, object]], full: bool
) -> tuple[dict[str, object], dict[str, object]]:
    """The keys every arm shares (the bench's), and those that win over the arms' own: [full], --set."""
    later = dict(claim.full) if full else {}
    later.update(overrides)
    return shared_setting(claim.bench), later


def run_claim(
    claim: Claim,
    seeds: Sequence[int],
    overrides: Iterable[tuple[str, object]],
    report_dir: Path,
    run: Runner,
    command: str,
    full: bool = False,
    verbose: bool = False,
    console: Console | None = None,
) -> Path:
    """Run every arm of every seed (reusing and resuming runs), then write and return the report.

    Every configuration that does not wait for another arm is checked before anything runs.
    """
    from server.app import check_fits, preflight
    from simulations.live import RunView, flower_log, stdout_console

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    shared, later = claim_layers(claim, overrides, full)
    for seed in seeds:
        for arm in claim.arms:
            config = arm_config(shared, arm, seed_dir(report_dir, seed), seed, later)
            config.check_simulation()
            if arm.source:
                continue  # its files are checked when its source has finished
            plan = plan_run(config)
            layout = preflight(config)
            if plan.checkpoint is not None:
                check_fits(plan.checkpoint, config, layout)
    shown = console or stdout_console()

    def run_shown(config: AppConfig, checkpoint: Checkpoint | None, _progress: object) -> object:
        title = f"reproduce {claim.name}: {config.output.name}, seed {config.federation.seed}"
        with RunView(shown, title) as view, flower_log(verbose, view):
            return run(config, checkpoint, view)

    actions: dict[tuple[int, str], str] = {}
    for seed in seeds:
        for arm in claim.arms:
            config = arm_config(shared, arm, seed_dir(report_dir, seed), seed, later)
            plan = plan_run(config)
            if arm.source:
                config.check_simulation()
                layout = preflight(config)
                if plan.checkpoint is not None:
                    check_fits(plan.checkpoint, config, layout)
            if plan.action == "reuse":
                shown.print(f"reproduce {claim.name}: {arm.label} (seed {seed}) reused", highlight=False)
            execute([plan], run_shown)  # type: ignore[arg-type]
            actions[(seed, arm.label)] = plan.action
    done = {"reuse": "reused", "resume": "resumed", "start": "run"}
    notes = [
        "This call: "
        + "; ".join(f"`{label}` seed {seed} {done[action]}" for (seed, label), action in actions.items())
        + ".",
        "The machine may have been shared with other jobs while the runs ran; wall times are indicative "
        "(see the load average).",
    ]
    folders = {
        seed: {arm.label: seed_dir(report_dir, seed) / arm.label for arm in claim.arms} for seed in seeds
    }
    return write_claim_report(report_dir, claim, folders, command, environment(load_before), notes, full=full)


def report_claim(
    claim: Claim,
    seeds: Sequence[int],
    report_dir: Path,
    command: str,
    full: bool = False,
    into: Path | None = None,
) -> Path:
    """The report of the runs already in ``report_dir`` (finished or running), written into ``into``
    (default: ``report_dir``) without running anything: what ``--report-only`` does."""
    folders = {
        seed: {arm.label: seed_dir(report_dir, seed) / arm.label for arm in claim.arms} for seed in seeds
    }
    if not any(
        (folder / ROUNDS_FILE).is_file() for by_label in folders.values() for folder in by_label.values()
    ):
        raise ConfigError(  # a report of nothing would overwrite the report that is there
            "--output",
            str(report_dir),
            f"a folder holding runs of {claim.name} (runs/seed-<s>/<arm>/rounds.csv); it holds none",
            what="option",
        )
    notes = ["Written with --report-only: nothing was run by this call; unfinished runs are marked running."]
    return write_claim_report(into or report_dir, claim, folders, command, environment(), notes, full=full)


def runs_commits(folders: dict[int, dict[str, Path]], runs: dict[int, dict[str, RunRecord]]) -> str:
    """Which fedprune commit ran which run (each run's ``summary.json``): "c1 (seed 0 a, seed 1 b); c2 (...)".

    A claim's runs may come from several sessions and checkouts; the report's own
    commit is only the one that wrote it. ``runs`` are the runs of ``folders`` loaded.
    """
    by_commit: dict[str, list[str]] = {}
    for seed, by_label in folders.items():
        for label in by_label:
            run = runs.get(seed, {}).get(label)
            if run is None or not run.summary:  # no summary.json: the run has not finished
                commit = "not finished"
            else:
                commit = str((run.summary.get("environment") or {}).get("fedprune", "unknown"))
            by_commit.setdefault(commit, []).append(f"seed {seed} {label}")
    return "; ".join(f"{commit} ({', '.join(names)})" for commit, names in by_commit.items()) or "none"


def write_claim_report(
    report_dir: Path,
    claim: Claim,
    folders: dict[int, dict[str, Path]],
    command: str,
    env: dict[str, str],
    notes: Sequence[str] = (),
    full: bool = False,
) -> Path:
    """``report.md`` (the answer first, then the claim's table, plots, every run), ``table.csv``, plots."""
    from simulations.bench import overhead_markdown, read_overhead
    from simulations.report import load_run

    report_dir.mkdir(parents=True, exist_ok=True)
    methods = {arm.label: arm.method for arm in claim.arms}
    runs = {
        seed: {
            label: load_run(folder, label)
            for label, folder in by_label.items()
            if (folder / "rounds.csv").is_file()
        }
        for seed, by_label in folders.items()
    }
    results = arm_results(runs)
    seeds = list(folders)
    judgements = judge(claim.spec, results, seeds)
    timed = step_times(claim.spec, runs)
    write_claim_csv(report_dir / "table.csv", claim.spec, methods, results, seeds)
    plots = claim_plots(report_dir / "plots", claim.spec, runs, list(methods))
    sections = []
    for seed, by_label in runs.items():
        if not by_label:
            continue
        rows, _ = table_rows(list(by_label.values()), claim.bench.target)
        overheads = [
            o for o in (read_overhead(r.folder, r.label) for r in by_label.values()) if o is not None
        ]
        sections.append(
            f"### Seed {seed}\n\n" + markdown_table(rows, [], claim.bench.target) + "\n\n"
            "Share of the rounds' wall time per phase (measured):\n\n" + overhead_markdown(overheads)
        )
    env = {**env, "Runs' fedprune commits": runs_commits(folders, runs)}
    title = f"fedprune reproduce {claim.name}" + (" --full" if full else "")
    text = claim_markdown(
        title,
        claim.spec,
        methods,
        results,
        judgements,
        timed,
        plots,
        sections,
        command=command,
        environment=env,
        notes=notes,
        scale_note=claim.full_differs if full else claim.spec.scaled,
        seeds=seeds,
    )
    path = report_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path


__all__ = [
    "Arm",
    "BenchError",
    "Claim",
    "arm_config",
    "claim_names",
    "load_claim",
    "parse_seeds",
    "report_claim",
    "run_claim",
]
