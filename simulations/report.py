"""Benchmark reports: one table, four plots and a Markdown page from results folders.

Everything here reads finished (or partly finished) results folders written by the
ServerApp (``rounds.csv``, ``layers.csv``, ``communication.csv``, ``summary.json``,
``config.toml``) and never re-runs anything. Figures are labelled by origin:

* **measured**: accuracy, density, bytes (serialised messages), wall-clock seconds;
* **modelled**: PruneFL's round time T = E (t0 + sum_l comp_l |M_l|) + bytes / bandwidth,
  re-computed per round for every device profile that has timings for the model,
  from the per-layer kept counts (``layers.csv``) and the largest measured per-client
  training traffic of the round (``communication.csv``).

Re-modelling under a profile other than the run's own keeps the run's masks: a
method whose masks depend on the cost model (PruneFL) chose them under the run's
profile, which the table says.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import AppConfig, load_config
from common.cost_model import DeviceProfile, ProfileError, bundled_profiles, load_profile
from common.data import DATASETS
from common.layout import ModelLayout
from common.models import build_model


@dataclass
class RunRecord:
    """One results folder, read back."""

    label: str
    folder: Path
    config: AppConfig
    rows: list[dict[str, str]]
    layers: list[dict[str, str]]
    summary: dict
    train_bytes: dict[int, list[int]] = field(default_factory=dict)  # round -> per-node bytes

    @property
    def complete(self) -> bool:
        return bool(self.summary)

    def column(self, name: str) -> np.ndarray:
        """The column of ``rounds.csv`` (NaN where empty, and all NaN where the file has no such column)."""
        return np.array([float(r[name]) if r.get(name, "") != "" else math.nan for r in self.rows])

    @property
    def rounds(self) -> np.ndarray:
        return self.column("round").astype(int)

    def cumulative_bytes(self) -> np.ndarray:
        return np.cumsum(self.column("bytes_down") + self.column("bytes_up"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load_run(folder: Path, label: str | None = None) -> RunRecord:
    """Read a results folder; a run still in progress has no summary yet."""
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    train_bytes: dict[int, list[int]] = defaultdict(list)
    per_node: dict[tuple[int, str], int] = defaultdict(int)
    for row in _read_csv(folder / "communication.csv"):
        if row["phase"] == "train":
            per_node[(int(row["round"]), row["node_id"])] += int(row["bytes"])
    for (server_round, _), total in per_node.items():
        train_bytes[server_round].append(total)
    config = load_config(folder / "config.toml")
    return RunRecord(
        label=label or config.pruning.method,
        folder=folder,
        config=config,
        rows=_read_csv(folder / "rounds.csv"),
        layers=_read_csv(folder / "layers.csv"),
        summary=summary,
        train_bytes=dict(train_bytes),
    )


def first_reaching(run: RunRecord, target: float) -> int | None:
    """Index (into ``run.rows``) of the first round whose accuracy reaches ``target``."""
    accuracy = run.column("accuracy")
    hits = np.flatnonzero(np.nan_to_num(accuracy, nan=-1.0) >= target)
    return int(hits[0]) if len(hits) else None


def profiles_for(model_name: str, layout: ModelLayout) -> list[DeviceProfile]:
    """The bundled device profiles that have timings for ``model_name``."""
    usable = []
    for name in bundled_profiles():
        profile = load_profile(name)
        try:
            profile.timing(model_name, layout)
        except ProfileError:
            continue
        usable.append(profile)
    return usable


def layout_of(config: AppConfig) -> ModelLayout:
    source = DATASETS[config.data.dataset]
    return ModelLayout.from_model(build_model(config.model.name, source.num_classes, source.input_shape))


def modelled_times(run: RunRecord, profile: DeviceProfile, layout: ModelLayout) -> np.ndarray:
    """Modelled seconds of every round of ``run`` under ``profile`` (round 0: initial pruning).

    Round r trains under the mask in force after round r - 1 (``layers.csv`` row
    r - 1); it lasts E modelled iterations plus the largest per-client training
    traffic of the round over the profile's link. Under the run's own profile,
    round 0 is the recorded initial-pruning time; under another, its compute is
    re-modelled at the initial mask (iterations from ``initial_pruning.json``).
    """
    timing = profile.timing(run.config.model.name, layout)
    comp = np.array([timing.per_weight[t.name] for t in layout.prunable])
    steps = run.config.train.local_steps
    bandwidth = run.config.cost.link_bandwidth or profile.bandwidth
    kept = {int(r["round"]): np.array([float(r[t.name]) for t in layout.prunable]) for r in run.layers}
    own = run.config.cost.profile == profile.name
    times = []
    for server_round in run.rounds:
        if server_round == 0:
            if own:
                times.append(float(run.rows[0]["modelled_round_time_s"]))
                continue
            ip_file = run.folder / "initial_pruning.json"
            iterations = json.loads(ip_file.read_text())["iterations"] if ip_file.is_file() else 0
            initial = kept.get(0, np.zeros(len(comp)))
            times.append(iterations * (timing.t0 + float(comp @ initial)))
            continue
        in_force = kept.get(server_round - 1, kept.get(0, np.zeros(len(comp))))
        traffic = max(run.train_bytes.get(server_round, [0]))
        times.append(steps * (timing.t0 + float(comp @ in_force)) + traffic / bandwidth)
    return np.array(times)


FLEET = "fleet"  # the modelled column of each run's own recorded round times (its fleet's stragglers)


def is_fleet(run: RunRecord) -> bool:
    """Whether ``run`` modelled a heterogeneous fleet (a profile mix or a round budget)."""
    return bool(run.config.simulation.profiles) or run.config.fleet.round_budget > 0


def recorded_times(run: RunRecord) -> np.ndarray:
    """The modelled seconds ``run`` recorded for each of its rounds (``modelled_round_time_s``).

    For a fleet, a round's slowest sampled client on its own profile (``server/fleet.py``);
    with one profile for every node, the same figures :func:`modelled_times` gives under it.
    """
    return run.column("modelled_round_time_s")


@dataclass(frozen=True)
class TableRow:
    label: str
    complete: bool
    rounds: int
    final_accuracy: float
    final_density: float
    bytes_down: int
    bytes_up: int
    bytes_to_target: float
    rounds_to_target: float
    modelled_to_target: dict[str, float]  # profile name -> modelled seconds (nan if never)
    modelled_total: dict[str, float]
    modelled_round0: dict[str, float]  # initial pruning's share of the modelled time
    wall_time_s: float


def table_rows(
    runs: Sequence[RunRecord], target: float, only: Sequence[str] = ()
) -> tuple[list[TableRow], list[str]]:
    """One row per run, and the names of the profiles the modelled columns use.

    ``only`` restricts the modelled columns to these profiles (default: every
    bundled profile with timings for the run's model). The column :data:`FLEET`, first
    when any run is a fleet's (:func:`is_fleet`) and ``only`` is empty or names it, is
    each run's own recorded round times: every run on the fleet it ran on.
    """
    layouts = {id(run): layout_of(run.config) for run in runs}
    fleet = any(is_fleet(run) for run in runs) and (not only or FLEET in only)
    names: list[str] = [FLEET] if fleet else []
    per_run_profiles = {}
    for run in runs:
        usable = profiles_for(run.config.model.name, layouts[id(run)])
        if only:
            usable = [p for p in usable if p.name in only]
        per_run_profiles[id(run)] = usable
        names += [p.name for p in usable if p.name not in names]
    out = []
    for run in runs:
        hit = first_reaching(run, target)
        cumulative = run.cumulative_bytes()
        to_target, total, round0 = {}, {}, {}
        times = {FLEET: recorded_times(run)} if fleet else {}
        for profile in per_run_profiles[id(run)]:
            times[profile.name] = modelled_times(run, profile, layouts[id(run)])
        for name, seconds in times.items():
            elapsed = np.cumsum(seconds)
            to_target[name] = float(elapsed[hit]) if hit is not None else math.nan
            total[name] = float(elapsed[-1]) if len(elapsed) else math.nan
            round0[name] = float(elapsed[0]) if len(elapsed) else math.nan
        accuracy = run.column("accuracy")
        evaluated = accuracy[~np.isnan(accuracy)]
        out.append(
            TableRow(
                label=run.label,
                complete=run.complete,
                rounds=int(run.rounds[-1]) if len(run.rows) else 0,
                final_accuracy=float(evaluated[-1]) if len(evaluated) else math.nan,
                final_density=float(run.column("density")[-1]) if len(run.rows) else math.nan,
                bytes_down=int(np.sum(run.column("bytes_down"))),
                bytes_up=int(np.sum(run.column("bytes_up"))),
                bytes_to_target=float(cumulative[hit]) if hit is not None else math.nan,
                rounds_to_target=float(run.rounds[hit]) if hit is not None else math.nan,
                modelled_to_target=to_target,
                modelled_total=total,
                modelled_round0=round0,
                wall_time_s=float(run.column("elapsed_s")[-1]) if len(run.rows) else math.nan,
            )
        )
    return out, names


# -- formatting ----------------------------------------------------------------------------
def _bytes(n: float) -> str:
    if math.isnan(n):
        return "never"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.2f} MB"


def _seconds(s: float) -> str:
    if math.isnan(s):
        return "never"
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s:.0f} s"


def markdown_table(rows: Sequence[TableRow], profiles: Sequence[str], target: float) -> str:
    """The results table in Markdown; modelled columns are marked as such."""
    head = [
        "method",
        "rounds",
        "final accuracy (measured)",
        "final density (measured)",
        "bytes down + up (measured)",
        f"bytes to {target:.0%} (measured)",
        f"rounds to {target:.0%} (measured)",
        *[f"time to {target:.0%}, {p} (modelled)" for p in profiles],
        "wall time (measured)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.label + ("" if r.complete else " (incomplete)"),
            str(r.rounds),
            f"{r.final_accuracy:.4f}",
            f"{r.final_density:.4f}",
            f"{_bytes(r.bytes_down + r.bytes_up)} ({_bytes(r.bytes_down)} + {_bytes(r.bytes_up)})",
            _bytes(r.bytes_to_target),
            "never" if math.isnan(r.rounds_to_target) else str(int(r.rounds_to_target)),
            *[_seconds(r.modelled_to_target.get(p, math.nan)) for p in profiles],
            _seconds(r.wall_time_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table_csv(path: Path, rows: Sequence[TableRow], profiles: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "method",
                "complete",
                "rounds",
                "final_accuracy",
                "final_density",
                "bytes_down",
                "bytes_up",
                "bytes_to_target",
                "rounds_to_target",
                *[f"modelled_s_to_target[{p}]" for p in profiles],
                *[f"modelled_s_total[{p}]" for p in profiles],
                "wall_time_s",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.label,
                    int(r.complete),
                    r.rounds,
                    r.final_accuracy,
                    r.final_density,
                    r.bytes_down,
                    r.bytes_up,
                    r.bytes_to_target,
                    r.rounds_to_target,
                    *[r.modelled_to_target.get(p, math.nan) for p in profiles],
                    *[r.modelled_total.get(p, math.nan) for p in profiles],
                    r.wall_time_s,
                ]
            )


# -- plots ---------------------------------------------------------------------------------
def write_plots(folder: Path, runs: Sequence[RunRecord], target: float, profile: str | None) -> list[Path]:
    """Accuracy against cumulative bytes and modelled time; density and bytes per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    def finish(fig, ax, name: str, xlabel: str, ylabel: str, log_x: bool = False) -> None:  # type: ignore[no-untyped-def]
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    def evaluated(run: RunRecord, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The points of rounds with an accuracy (evaluate.every > 1 leaves gaps)."""
        accuracy = run.column("accuracy")
        keep = ~np.isnan(accuracy)
        return x[keep], accuracy[keep]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        ax.plot(*evaluated(run, run.rounds.astype(float)), label=run.label)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    finish(fig, ax, "accuracy_per_round.png", "round", "test accuracy")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        ax.plot(*evaluated(run, run.cumulative_bytes() / 1e6), label=run.label)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    finish(fig, ax, "accuracy_vs_bytes.png", "cumulative bytes, MB (measured)", "test accuracy", log_x=True)

    if profile is not None:
        curves = []
        for run in runs:
            usable = {p.name: p for p in profiles_for(run.config.model.name, layout_of(run.config))}
            if profile == FLEET:
                curves.append((run, np.cumsum(recorded_times(run))))
            elif profile in usable:
                curves.append((run, np.cumsum(modelled_times(run, usable[profile], layout_of(run.config)))))
        longest = max((float(elapsed[-1]) for _, elapsed in curves if len(elapsed)), default=0.0)
        unit, scale = ("h", 3600.0) if longest >= 3600 else ("s", 1.0)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for run, elapsed in curves:
            ax.plot(*evaluated(run, elapsed / scale), label=run.label)
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        xlabel = f"modelled time, {unit} ({'each run on its own fleet' if profile == FLEET else profile})"
        finish(fig, ax, "accuracy_vs_modelled_time.png", xlabel, "test accuracy")

    fleets = [
        run for run in runs if is_fleet(run) and run.rows and "modelled_straggler_share" in run.rows[-1]
    ]
    if fleets:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for run in fleets:
            later = run.rounds > 0
            ax.plot(run.rounds[later], run.column("modelled_straggler_share")[later], label=run.label)
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        finish(
            fig,
            ax,
            "straggler_share_per_round.png",
            "round",
            "straggler's time / mean client's (modelled)",
        )

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        ax.plot(run.rounds, run.column("density"), label=run.label)
    finish(fig, ax, "density_per_round.png", "round", "density (kept fraction of prunable weights)")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        (line,) = ax.plot(
            run.rounds,
            (run.column("bytes_down") + run.column("bytes_up")) / 1e3,
            label=f"{run.label} (measured)",
        )
        later = run.rounds > 0  # round 0 holds set-up and initial pruning, which have no dense size
        colour = line.get_color()
        ax.plot(
            run.rounds[later],
            run.column("dense_bytes")[later] / 1e3,
            ":",
            color=colour,
            label=f"{run.label}: dense model",
        )
        ax.plot(
            run.rounds[later],
            run.column("bound_bytes")[later] / 1e3,
            "--",
            color=colour,
            label=f"{run.label}: bound (entropy)",
        )
    ax.set_yscale("log")
    finish(fig, ax, "bytes_per_round.png", "round", "bytes per round, kB (down + up)")

    for run in runs:
        densities = layer_densities(run)
        if not densities:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        rounds = [int(r["round"]) for r in run.layers]
        for name, values in densities.items():
            ax.plot(rounds, values, label=name)
        ax.set_ylim(0, 1.05)
        finish(
            fig, ax, f"layer_density_{file_label(run.label)}.png", "round", f"density per layer ({run.label})"
        )
    return paths


def layer_densities(run: RunRecord) -> dict[str, list[float]]:
    """Per prunable tensor, its kept fraction after every round of ``layers.csv`` (none without it)."""
    if not run.layers:
        return {}
    sizes = {t.name: t.size for t in layout_of(run.config).prunable}
    return {
        name: [int(r[name]) / size for r in run.layers]
        for name, size in sizes.items()
        if name in run.layers[0]
    }


def file_label(label: str) -> str:
    """``label`` with only the characters a file name may safely hold."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)


# -- the report ------------------------------------------------------------------------------
def answer(rows: Sequence[TableRow], profile: str | None, target: float, baseline: str = "none") -> str:
    """One sentence per method: its bytes and modelled time to the target against dense FedAvg."""
    base = next((r for r in rows if r.label == baseline), None)
    sentences = []
    for r in rows:
        if r.label == baseline:
            continue
        if math.isnan(r.bytes_to_target):
            sentences.append(
                f"**{r.label}** did not reach {target:.0%} test accuracy in {r.rounds} rounds "
                f"(final accuracy {r.final_accuracy:.4f}, density {r.final_density:.3f})"
                + (whole_run(r, base, profile) if base is not None else "")
                + "."
            )
            continue
        parts = [f"**{r.label}** reached {target:.0%} test accuracy in round {int(r.rounds_to_target)}"]
        if base is not None and not math.isnan(base.bytes_to_target):
            parts.append(f"with {r.bytes_to_target / base.bytes_to_target:.2f}x the bytes of dense FedAvg")
            if profile and not math.isnan(base.modelled_to_target.get(profile, math.nan)):
                ratio = r.modelled_to_target.get(profile, math.nan) / base.modelled_to_target[profile]
                initial = r.modelled_round0.get(profile, 0.0)
                parts.append(
                    f"in {ratio:.2f}x its modelled time ({profile}"
                    + (f"; initial pruning is {_seconds(initial)} of it" if initial > 0 else "")
                    + ")"
                )
        elif base is not None:
            parts.append(f"while dense FedAvg did not within {base.rounds} rounds")
        sentences.append(
            ", ".join(parts) + f"; final accuracy {r.final_accuracy:.4f} at density {r.final_density:.3f}."
        )
    return " ".join(sentences)


def whole_run(r: TableRow, base: TableRow, profile: str | None) -> str:
    """How a run that missed the target compares with dense FedAvg over the whole run."""
    bytes_ratio = (r.bytes_down + r.bytes_up) / max(base.bytes_down + base.bytes_up, 1)
    text = f"; over its {r.rounds} rounds it sent {bytes_ratio:.3f}x the bytes of dense FedAvg"
    if profile and profile in r.modelled_total and profile in base.modelled_total:
        ratio = r.modelled_total[profile] / base.modelled_total[profile]
        initial = r.modelled_round0.get(profile, 0.0)
        text += f" in {ratio:.2f}x its modelled time ({profile}" + (
            f"; initial pruning is {_seconds(initial)} of it)" if initial > 0 else ")"
        )
    reached = "did not reach it either" if math.isnan(base.bytes_to_target) else "reached it"
    return text + f", while dense FedAvg {reached} (final accuracy {base.final_accuracy:.4f})"


def write_report(
    folder: Path,
    runs: Sequence[RunRecord],
    target: float,
    title: str,
    command: str,
    environment: dict[str, str],
    notes: Sequence[str] = (),
    profiles_only: Sequence[str] = (),
    sections: Sequence[str] = (),
    after_table: Sequence[str] = (),
    baseline: str = "none",
) -> Path:
    """Write ``report.md``, ``table.csv`` and the plots into ``folder``; return the report path.

    ``sections`` are further Markdown sections, placed after the plots; ``after_table``
    right after the table and its legend; ``baseline`` is the label of the run every
    other is compared with (dense FedAvg).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows, profiles = table_rows(runs, target, profiles_only)
    main_profile = FLEET if FLEET in profiles else runs[0].config.cost.profile if runs else None
    if main_profile not in profiles:
        main_profile = profiles[0] if profiles else None
    write_table_csv(folder / "table.csv", rows, profiles)
    plots = write_plots(folder / "plots", runs, target, main_profile)
    seeds = sorted({run.config.federation.seed for run in runs})
    lines = [
        f"# {title}",
        "",
        answer(rows, main_profile, target, baseline),
        "",
        markdown_table(rows, profiles, target),
        "",
        "**Measured**: accuracy (server-held test set), density, bytes (serialised Flower messages, "
        "down + up, every message of the run including set-up and initial pruning), wall time. "
        "**Modelled**: time, by PruneFL's cost model T = E (t0 + sum_l comp_l |M_l|) + bytes / bandwidth "
        "with the device profile named in the column (re-modelled per round from the measured bytes "
        "and the masks in force); masks were chosen under each run's own profile "
        f"(`{runs[0].config.cost.profile if runs else main_profile}`)."
        + (
            f" The `{FLEET}` column is each run's own recorded modelled time on the fleet it ran on: a "
            "round lasts as long as its slowest sampled client, on that client's own profile, with its "
            "own measured bytes and, under a round budget, its own sub-mask."
            if FLEET in profiles
            else ""
        ),
        "",
        *[section + "\n" for section in after_table],
        *([stragglers + "\n"] if (stragglers := straggler_section(runs)) else []),
        "## Plots",
        "",
        *[f"![{p.stem.replace('_', ' ')}](plots/{p.name})" for p in plots],
        "",
        *[section + "\n" for section in sections],
        "## Set-up",
        "",
        f"- Command: `{command}`",
        f"- Seeds: {', '.join(map(str, seeds))}; same data, partitions, sampling for every method.",
        f"- Target accuracy: {target:.0%}.",
        *[f"- {key}: {value}" for key, value in environment.items()],
        *[f"- Run `{run.label}`: `{run.folder}`" for run in runs],
        *[f"- {note}" for note in notes],
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def straggler_section(runs: Sequence[RunRecord]) -> str | None:
    """The runs' stragglers (``rounds.csv``'s straggler columns), for runs of a heterogeneous fleet.

    None when no run has one (no ``simulation.profiles``, no round budget), so that a
    report of one-device runs is unchanged.
    """
    fleets = [r for r in runs if r.config.simulation.profiles or r.config.fleet.round_budget > 0]
    if not fleets:
        return None
    lines = [
        "## Stragglers (modelled)",
        "",
        "Each round lasts as long as its slowest sampled client on its own device profile "
        "(`server/fleet.py`); the share is that client's modelled time over the mean client's.",
        "",
        "| run | profiles | round budget | modelled time (own fleet) | mean share | max share "
        "| stragglers by profile |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in fleets:
        rows = [row for row in run.rows if int(row.get("round", 0)) > 0 and row.get("straggler_profile")]
        shares = [float(row["modelled_straggler_share"]) for row in rows if row["modelled_straggler_share"]]
        counts = Counter(row["straggler_profile"] for row in rows)
        total = sum(float(row["modelled_round_time_s"]) for row in run.rows)
        budget = run.config.fleet.round_budget
        lines.append(
            f"| {run.label} | {run.config.simulation.profiles or run.config.cost.profile} | "
            f"{f'{budget:g} s' if budget else 'none'} | {_seconds(total)} | "
            f"{np.mean(shares) if shares else math.nan:.3f} | {max(shares, default=math.nan):.3f} | "
            f"{', '.join(f'{name} {n}' for name, n in counts.most_common())} |"
        )
    return "\n".join(lines)


# -- fedprune report -------------------------------------------------------------------------
class ReportError(ValueError):
    """A folder that holds no results to report; the message says why."""


def run_labels(folders: Sequence[Path]) -> list[str]:
    """Each folder's name, or its last two parts where names repeat."""
    names = [folder.name for folder in folders]
    return [
        name if names.count(name) == 1 else f"{folder.parent.name}/{name}"
        for name, folder in zip(names, folders, strict=True)
    ]


def load_runs(folders: Sequence[Path]) -> list[RunRecord]:
    """The results folders, read back; a folder that is none is a :class:`ReportError`."""
    from common.settings import ConfigError

    runs = []
    for folder, label in zip(folders, run_labels(folders), strict=True):
        if not (folder / "config.toml").is_file() or not (folder / "rounds.csv").is_file():
            raise ReportError(
                f"{folder} is not a results folder of fedprune simulate (config.toml, rounds.csv)"
            )
        try:
            run = load_run(folder, label)
        except (ConfigError, KeyError, ValueError, OSError) as exc:
            raise ReportError(f"{folder} cannot be read: {exc}") from exc
        if not run.rows:
            raise ReportError(f"{folder} holds no round yet (rounds.csv has its header only)")
        runs.append(run)
    return runs


def reached_by_all(runs: Sequence[RunRecord]) -> float:
    """The best test accuracy every run reached, rounded down to a hundredth (0.01 at least)."""
    best = [np.nanmax(np.append(run.column("accuracy"), 0.0)) for run in runs]
    return max(0.01, math.floor(min(best) * 100) / 100)


def run_environment(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Where the runs ran, from their ``summary.json`` (the machine that ran them, not this one)."""
    info = {}
    for run in runs:
        environment = run.summary.get("environment") or {}
        if environment:
            text = ", ".join(f"{key} {value}" for key, value in environment.items())
            info[f"Environment of `{run.label}` (summary.json)"] = text
    return info


def report_runs(folders: Sequence[Path], output: Path, target: float | None, command: str) -> Path:
    """``fedprune report``: the report (table, plots, Markdown) of finished or running results folders.

    The target accuracy defaults to :func:`reached_by_all`; the baseline of the
    comparison sentences is the first run of dense FedAvg (``pruning.method = "none"``).
    """
    runs = load_runs(folders)
    chosen = target if target is not None else reached_by_all(runs)
    baseline = next((run.label for run in runs if run.config.pruning.method == "none"), "none")
    note = (
        f"Target accuracy {chosen:.0%} set with --target."
        if target is not None
        else f"Target accuracy {chosen:.0%}: the best accuracy every run reached (set another with --target)."
    )
    title = "fedprune report: " + ", ".join(f"`{run.label}` ({run.config.pruning.method})" for run in runs)
    return write_report(
        output, runs, chosen, title, command, run_environment(runs), notes=[note], baseline=baseline
    )


# -- a paper's figures beside the run's -------------------------------------------------------
COUNTINGS = ("counted", "not-counted")  # initial pruning counted as round 0, or left out
COUNTING_LABELS = {
    "counted": "initial pruning counted as round 0 (what a device spends)",
    "not-counted": "initial pruning not counted (as the paper's simulation)",
}


@dataclass(frozen=True)
class PaperFigures:
    """A paper's figures to set beside a benchmark's (a bench preset's ``[paper]``).

    ``seconds[method][accuracy]`` is the paper's modelled time to that test accuracy;
    ``min_speedup[accuracy][counting]`` the speed-up over dense FedAvg ``method`` should
    reach (``counting`` one of :data:`COUNTINGS`); ``final_density`` the paper's.
    """

    reference: str = ""
    seconds: dict[str, dict[float, float]] = field(default_factory=dict)
    final_density: float | None = None
    min_speedup: dict[float, dict[str, float]] = field(default_factory=dict)
    method: str = "prunefl"  # the method ``min_speedup`` is for

    @property
    def accuracies(self) -> list[float]:
        levels = {a for figures in self.seconds.values() for a in figures} | set(self.min_speedup)
        return sorted(levels)


@dataclass(frozen=True)
class PaperRow:
    """One method at one accuracy: the run's figures (modelled time both ways, measured bytes)."""

    accuracy: float
    label: str
    round: float  # first round reaching the accuracy (nan: never)
    seconds: dict[str, float]  # counting -> modelled seconds to the accuracy
    initial_s: float  # modelled seconds of round 0 (initial pruning)
    bytes: float  # measured bytes through that round, every message
    final_density: float
    paper_s: float  # the paper's modelled seconds (nan: not given)


def paper_rows(runs: Sequence[RunRecord], paper: PaperFigures, profile: str) -> list[PaperRow]:
    """For every accuracy of ``paper`` and every run: modelled seconds (``profile``) and bytes to it."""
    out = []
    for run in runs:
        layout = layout_of(run.config)
        usable = {p.name: p for p in profiles_for(run.config.model.name, layout)}
        if profile not in usable:
            raise ValueError(f"profile {profile!r} has no timings for {run.config.model.name}")
        elapsed = np.cumsum(modelled_times(run, usable[profile], layout))
        cumulative = run.cumulative_bytes()
        initial = float(elapsed[0]) if len(elapsed) else math.nan
        density = float(run.column("density")[-1]) if len(run.rows) else math.nan
        for accuracy in paper.accuracies:
            hit = first_reaching(run, accuracy)
            counted = float(elapsed[hit]) if hit is not None else math.nan
            out.append(
                PaperRow(
                    accuracy=accuracy,
                    label=run.label,
                    round=float(run.rounds[hit]) if hit is not None else math.nan,
                    seconds={"counted": counted, "not-counted": counted - initial},
                    initial_s=initial,
                    bytes=float(cumulative[hit]) if hit is not None else math.nan,
                    final_density=density,
                    paper_s=paper.seconds.get(run.label, {}).get(accuracy, math.nan),
                )
            )
    return out


def _speedup(base: float, value: float) -> float:
    return base / value if value > 0 and not math.isnan(base) else math.nan


def _ks(s: float) -> str:
    """Seconds as the paper writes them (17.5k s)."""
    if math.isnan(s):
        return "never"
    return f"{s / 1000:.1f}k s" if s >= 1000 else f"{s:.0f} s"


def _times(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}x"


def paper_markdown(
    rows: Sequence[PaperRow], paper: PaperFigures, profile: str, names: dict[str, str], baseline: str = "none"
) -> str:
    """One table per accuracy: the run's modelled seconds both ways, speed-ups and bytes, the paper's."""
    lines = [
        f"Modelled seconds use the `{profile}` profile; bytes are measured (every message: models, "
        "masks, importance uploads, set-up and initial pruning)."
    ]
    if paper.reference:
        lines += ["", paper.reference]
    for accuracy in paper.accuracies:
        at = [r for r in rows if r.accuracy == accuracy]
        base = next((r for r in at if r.label == baseline), None)
        paper_base = paper.seconds.get(baseline, {}).get(accuracy, math.nan)
        lines += [
            "",
            f"### {accuracy:.0%} test accuracy",
            "",
            "| method | round reached (measured) | modelled s, IP counted as round 0 | speed-up, IP counted "
            "| modelled s, IP not counted | speed-up, IP not counted | paper: modelled s | paper: speed-up "
            "| bytes to it (measured) | bytes, FedAvg / method | final density (measured) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in at:
            counted, plain = r.seconds["counted"], r.seconds["not-counted"]
            up_counted = _speedup(base.seconds["counted"], counted) if base else math.nan
            up_plain = _speedup(base.seconds["not-counted"], plain) if base else math.nan
            bytes_ratio = _speedup(base.bytes, r.bytes) if base else math.nan
            share = f" (IP {r.initial_s / counted:.0%})" if r.initial_s > 0 and counted > 0 else ""
            lines.append(
                f"| {names.get(r.label, r.label)} | "
                + ("never" if math.isnan(r.round) else str(int(r.round)))
                + f" | {_ks(counted)}{share} | {_times(up_counted)} | {_ks(plain)} | {_times(up_plain)} "
                f"| {_ks(r.paper_s) if not math.isnan(r.paper_s) else 'n/a'} "
                f"| {_times(_speedup(paper_base, r.paper_s))} | {_bytes(r.bytes)} | {_times(bytes_ratio)} "
                f"| {r.final_density:.4f} |"
            )
        for counting, minimum in paper.min_speedup.get(accuracy, {}).items():
            for r in at:
                if r.label != paper.method or base is None:
                    continue
                up = _speedup(base.seconds[counting], r.seconds[counting])
                verdict = (
                    "not measurable" if math.isnan(up) else ("**met**" if up >= minimum else "**not met**")
                )
                shortfall = f", {minimum / up:.2f}x short" if not math.isnan(up) and up < minimum else ""
                lines.append(
                    f"- `{r.label}` at {accuracy:.0%}, {COUNTING_LABELS[counting]}: {_times(up)} "
                    f"(target: at least {minimum:g}x): {verdict}{shortfall}"
                )
        reached = sorted((r.seconds["counted"], r.label) for r in at if not math.isnan(r.seconds["counted"]))
        if reached:
            order = ", ".join(f"`{label}`" for _, label in reached)
            lines.append(f"- First to {accuracy:.0%} in modelled time (IP counted): {order}.")
        missing = [f"`{r.label}`" for r in at if math.isnan(r.round)]
        if missing:
            lines.append(f"- Not reaching {accuracy:.0%} within the rounds run: {', '.join(missing)}.")
    if paper.final_density is not None:
        lines += ["", f"The paper's final density: about {paper.final_density:.2f}."]
    return "\n".join(lines)


def write_paper_csv(path: Path, rows: Sequence[PaperRow]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "accuracy",
                "method",
                "round_reached",
                "modelled_s_ip_counted",
                "modelled_s_ip_not_counted",
                "modelled_s_initial_pruning",
                "bytes_to_accuracy",
                "final_density",
                "paper_modelled_s",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.accuracy,
                    r.label,
                    r.round,
                    r.seconds["counted"],
                    r.seconds["not-counted"],
                    r.initial_s,
                    r.bytes,
                    r.final_density,
                    r.paper_s,
                ]
            )


# -- a paper's claim, judged ------------------------------------------------------------------
CRITERIA = ("accuracy-gap", "flops-ratio", "density")


@dataclass(frozen=True)
class Criterion:
    """One pass condition of a claim (a ``[[claim.criteria]]`` table), judged on the seeds' mean.

    * ``accuracy-gap``: gap = mean final accuracy of ``subject`` minus that of
      ``reference``, in points; passes when gap >= ``min-gap`` (> with ``strict``);
    * ``flops-ratio``: counted forward MACs of ``subject``'s final mask over the dense
      model's (zero weights free, :mod:`common.flops`); passes when <= ``max``;
    * ``density``: ``subject``'s final density (kept share of the prunable weights);
      passes when <= ``max`` (a compression of at least 1 / max).
    """

    kind: str
    subject: str
    reference: str = ""
    min_gap: float = 0.0
    strict: bool = False
    max: float = math.nan
    says: str = ""  # the criterion in words, as the issue or paper states it


@dataclass(frozen=True)
class ClaimSpec:
    """A claim preset's ``[claim]``: the paper's figure, seeds, criteria, what the run differs in."""

    paper: str
    reference: str = ""
    seeds: tuple[int, ...] = (0, 1)
    criteria: tuple[Criterion, ...] = ()
    paper_accuracy: dict[str, float] = field(default_factory=dict)  # arm -> the paper's accuracy, %
    scaled: str = ""  # how this run is smaller than the paper's (the report's first lines)
    differs: str = ""  # what differs from the paper, and what a bigger machine would change
    step_time: tuple[str, ...] = ()  # arms whose shrunk client model's step time is measured


def _criterion(index: int, table: dict, labels: Sequence[str]) -> Criterion:
    key = f"claim.criteria[{index}]"
    from common.settings import ConfigError

    allowed = {"kind", "subject", "reference", "min-gap", "strict", "max", "says"}
    if not isinstance(table, dict) or set(table) - allowed:
        raise ConfigError(key, str(table), f"a table with keys among {sorted(allowed)}")
    kind = str(table.get("kind", ""))
    if kind not in CRITERIA:
        raise ConfigError(f"{key}.kind", kind, f"one of {list(CRITERIA)}")
    subject, reference = str(table.get("subject", "")), str(table.get("reference", ""))
    if subject not in labels:
        raise ConfigError(f"{key}.subject", subject, f"an arm of the claim ({list(labels)})")
    if kind == "accuracy-gap":
        if reference not in labels or reference == subject:
            raise ConfigError(f"{key}.reference", reference, f"another arm of the claim ({list(labels)})")
        gap = table.get("min-gap", 0.0)
        if isinstance(gap, bool) or not isinstance(gap, int | float):
            raise ConfigError(f"{key}.min-gap", str(gap), "a number of accuracy points (-0.5: within 0.5)")
        return Criterion(
            kind,
            subject,
            reference,
            float(gap),
            bool(table.get("strict", False)),
            says=str(table.get("says", "")),
        )
    limit = table.get("max")
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 1:
        raise ConfigError(f"{key}.max", str(limit), "a ratio in (0, 1]")
    return Criterion(kind, subject, max=float(limit), says=str(table.get("says", "")))


def read_claim(table: dict, labels: Sequence[str]) -> ClaimSpec:
    """A claim preset's ``[claim]`` table, checked against the claim's arm labels."""
    from common.settings import ConfigError

    allowed = {"paper", "reference", "seeds", "criteria", "paper-accuracy", "scaled", "differs", "step-time"}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError("claim", str(sorted(unknown)), f"keys among {sorted(allowed)}")
    if not table.get("paper"):
        raise ConfigError("claim.paper", "", "the paper's figure in words")
    seeds = table.get("seeds", [0, 1])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError("claim.seeds", str(seeds), "a list of distinct integers >= 0")
    criteria = tuple(_criterion(i, c, labels) for i, c in enumerate(table.get("criteria", [])))
    if not criteria:
        raise ConfigError("claim.criteria", "[]", "at least one [[claim.criteria]] table")
    paper_accuracy = {}
    for label, value in dict(table.get("paper-accuracy", {})).items():
        if label not in labels:
            raise ConfigError(f"claim.paper-accuracy.{label}", str(value), f"an arm ({list(labels)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
            raise ConfigError(f"claim.paper-accuracy.{label}", str(value), "an accuracy in percent")
        paper_accuracy[label] = float(value)
    step_time = tuple(str(s) for s in table.get("step-time", []))
    for label in step_time:
        if label not in labels:
            raise ConfigError("claim.step-time", label, f"arms of the claim ({list(labels)})")
    return ClaimSpec(
        paper=str(table["paper"]),
        reference=str(table.get("reference", "")),
        seeds=tuple(seeds),
        criteria=criteria,
        paper_accuracy=paper_accuracy,
        scaled=str(table.get("scaled", "")),
        differs=str(table.get("differs", "")),
        step_time=step_time,
    )


@dataclass(frozen=True)
class ArmResult:
    """One arm in one seed, read from its results folder (measured, but for the counted FLOPs)."""

    label: str
    seed: int
    complete: bool
    rounds: int
    planned_rounds: int
    final_accuracy: float
    final_density: float
    flops_ratio: float  # counted forward MACs of the final mask / the dense model's


def flops_ratio(run: RunRecord) -> float:
    """Counted forward MACs of the mask after the last round (``layers.csv``) over the dense model's."""
    from common.flops import positions_for

    if not run.layers:
        return math.nan
    source = DATASETS[run.config.data.dataset]
    layout = layout_of(run.config)
    positions = positions_for(run.config.model.name, source.num_classes, tuple(source.input_shape))
    last = run.layers[-1]
    dense = kept = 0.0
    for t in layout.tensors:
        if t.name in positions:
            dense += t.size * positions[t.name]
            kept += (float(last[t.name]) if t.name in last else t.size) * positions[t.name]
    return kept / dense if dense else math.nan


def arm_results(runs: dict[int, dict[str, RunRecord]]) -> dict[str, dict[int, ArmResult]]:
    """Per arm and seed: final accuracy, density and counted FLOPs ratio of its run so far."""
    out: dict[str, dict[int, ArmResult]] = defaultdict(dict)
    for seed, by_label in runs.items():
        for label, run in by_label.items():
            accuracy = run.column("accuracy")
            evaluated = accuracy[~np.isnan(accuracy)]
            out[label][seed] = ArmResult(
                label=label,
                seed=seed,
                complete=run.complete,
                rounds=int(run.rounds[-1]) if run.rows else 0,
                planned_rounds=int(run.summary.get("rounds", run.config.federation.rounds)),
                final_accuracy=float(evaluated[-1]) if len(evaluated) else math.nan,
                final_density=float(run.column("density")[-1]) if run.rows else math.nan,
                flops_ratio=flops_ratio(run),
            )
    return dict(out)


def seed_mean(results: dict[int, ArmResult], attribute: str, seeds: Sequence[int]) -> float:
    """Mean of ``attribute`` over ``seeds``; NaN unless every seed has a finished run."""
    values = [getattr(results[s], attribute) for s in seeds if s in results and results[s].complete]
    return float(np.mean(values)) if len(values) == len(seeds) else math.nan


@dataclass(frozen=True)
class Judgement:
    """A criterion judged on the seeds' mean: the value, pass (None: not measurable) and the margin."""

    criterion: Criterion
    value: float  # accuracy-gap: points; flops-ratio, density: the ratio
    per_seed: dict[int, float]
    passed: bool | None
    margin: float  # how far past (> 0) or short of (< 0) the limit, in the value's unit


def judge(
    spec: ClaimSpec, results: dict[str, dict[int, ArmResult]], seeds: Sequence[int] | None = None
) -> list[Judgement]:
    """Every criterion of ``spec`` on the mean over ``seeds`` (default: the claim's)."""
    seeds = tuple(seeds if seeds is not None else spec.seeds)
    out = []
    for c in spec.criteria:
        subject = results.get(c.subject, {})
        if c.kind == "accuracy-gap":
            reference = results.get(c.reference, {})
            value = 100 * (
                seed_mean(subject, "final_accuracy", seeds) - seed_mean(reference, "final_accuracy", seeds)
            )
            per_seed = {
                s: 100 * (subject[s].final_accuracy - reference[s].final_accuracy)
                for s in seeds
                if s in subject and s in reference
            }
            margin = value - c.min_gap
            passed = None if math.isnan(value) else (margin > 0 if c.strict else margin >= 0)
        else:
            attribute = "flops_ratio" if c.kind == "flops-ratio" else "final_density"
            value = seed_mean(subject, attribute, seeds)
            per_seed = {s: getattr(subject[s], attribute) for s in seeds if s in subject}
            margin = c.max - value
            passed = None if math.isnan(value) else margin >= 0
        out.append(Judgement(c, value, per_seed, passed, margin))
    return out


MIN_SEEDS = 2  # a pass needs the mean of at least this many seeds


def verdict(judgements: Sequence[Judgement], seeds: int = MIN_SEEDS) -> str:
    """On the mean of at least two seeds: PASS when every criterion passes, MISS when one fails,
    else NOT MEASURABLE YET (runs missing or unfinished); with a single seed, NOT MEASURABLE."""
    if seeds < MIN_SEEDS:
        return "NOT MEASURABLE (a verdict needs the mean of two seeds)"
    if any(j.passed is False for j in judgements):
        return "MISS"
    if judgements and all(j.passed for j in judgements):
        return "PASS"
    return "NOT MEASURABLE YET"


def judgement_line(j: Judgement, names: dict[str, str]) -> str:
    """One line: the criterion, the seeds' mean and each seed, pass or miss and by how much."""
    c = j.criterion
    result = {True: "**pass**", False: "**miss**", None: "**not measurable yet**"}[j.passed]
    says = f"{c.says}: " if c.says else ""
    seeds = ", ".join(
        f"seed {s} {v:+.2f} points" if c.kind == "accuracy-gap" else f"seed {s} {v:.4f}"
        for s, v in j.per_seed.items()
    )
    if math.isnan(j.value):
        what = f"minus `{c.reference}`" if c.kind == "accuracy-gap" else c.kind
        return f"- {says}`{c.subject}` {what}: not every seed has finished ({seeds or 'none yet'}): {result}."
    if c.kind == "accuracy-gap":
        need = f"{'>' if c.strict else '>='} {c.min_gap:+.2f}"
        by = "" if j.passed is None else f", {'by' if j.passed else 'short by'} {abs(j.margin):.2f} points"
        return (
            f"- {says}`{c.subject}` minus `{c.reference}` = **{j.value:+.2f} points** (mean of the seeds; "
            f"{seeds}); needs {need}: {result}{by}."
        )
    what = "counted FLOPs / dense" if c.kind == "flops-ratio" else "final density"
    extra = (
        f" (compression {1 / j.value:.1f}x, needs {1 / c.max:.1f}x)"
        if c.kind == "density" and j.value > 0
        else ""
    )
    by = "" if j.passed is None else f", {'by' if j.passed else 'short by'} {abs(j.margin):.4f}"
    return (
        f"- {says}`{c.subject}` {what} = **{j.value:.4f}**{extra} (mean of the seeds; {seeds}); "
        f"needs <= {c.max:.4f}: {result}{by}."
    )


@dataclass(frozen=True)
class StepTime:
    """A training step of an arm's final client model, measured: dense model against the shrunk one."""

    label: str
    seed: int
    batch_size: int
    dense_ms: float
    shrunk_ms: float
    parameters: tuple[int, int]  # dense, shrunk
    load: float


def step_times(spec: ClaimSpec, runs: dict[int, dict[str, RunRecord]], repeats: int = 20) -> list[StepTime]:
    """For each arm of ``spec.step_time``: its first finished seed's final model, shrunk, timed.

    The physically smaller model (:mod:`common.pruning.shrink`) of the final channel mask
    against the dense model, one forward-backward-update step on a batch of
    ``train.batch-size`` random inputs, one torch thread (a simulated client's), median
    of ``repeats`` after 3 warm-up steps. Measured when the report is written, from the
    run's ``mask.npz`` alone (a step's time depends on the kept channels, not on the
    weights' values), so that committed runs are timed on any machine.
    """
    import os

    import torch

    from common.device import cpu_threads
    from common.pruning.channels import structure_for
    from common.pruning.rethinking import load_source
    from common.pruning.shrink import count_parameters, removable_channels, shrink_model
    from simulations.bench_shrink import step_seconds

    out = []
    for label in spec.step_time:
        run = next((r[label] for r in runs.values() if label in r and r[label].complete), None)
        if run is None:
            continue
        source = DATASETS[run.config.data.dataset]
        shape = tuple(source.input_shape)
        model = build_model(run.config.model.name, source.num_classes, shape, seed=0)
        layout = ModelLayout.from_model(model)
        final = load_source(str(run.folder), layout, weights=False)
        floats, ints = layout.flatten(model.state_dict())
        structure = structure_for(run.config.model.name, source.num_classes, shape)
        example = torch.zeros(1, *shape)
        small = shrink_model(model, layout, floats, ints, removable_channels(structure, final.mask), example)
        generator = torch.Generator().manual_seed(0)
        batch = run.config.train.batch_size
        inputs = torch.randn(batch, *shape, generator=generator)
        labels = torch.randint(0, source.num_classes, (batch,), generator=generator)
        with cpu_threads(max(1, run.config.simulation.client_threads)):
            dense_s = step_seconds(model, inputs, labels, repeats, 3)
            small_s = step_seconds(small.model, inputs, labels, repeats, 3)
        out.append(
            StepTime(
                label,
                int(run.config.federation.seed),
                batch,
                dense_s * 1e3,
                small_s * 1e3,
                (count_parameters(model), count_parameters(small.model)),
                os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
            )
        )
    return out


def _mean_cell(results: dict[int, ArmResult], attribute: str, seeds: Sequence[int], digits: int = 4) -> str:
    value = seed_mean(results, attribute, seeds)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _percent(fraction: float) -> str:
    """An accuracy (a fraction) in percent, as the papers give theirs."""
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.2f}%"


def claim_table_markdown(
    spec: ClaimSpec, methods: dict[str, str], results: dict[str, dict[int, ArmResult]], seeds: Sequence[int]
) -> str:
    """Per arm: final accuracy of every seed and their mean, the paper's, density, compression, FLOPs."""
    head = [
        "arm (method)",
        *[f"seed {s}: final accuracy" for s in seeds],
        "**mean**",
        "paper",
        "final density (mean)",
        "compression (1 / density)",
        "counted FLOPs / dense (mean)",
        "rounds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, method in methods.items():
        by_seed = results.get(label, {})
        cells = []
        for s in seeds:
            r = by_seed.get(s)
            if r is None:
                cells.append("not run")
            else:
                cells.append(
                    ("-" if math.isnan(r.final_accuracy) else f"{r.final_accuracy:.4f}")
                    + ("" if r.complete else f" (round {r.rounds}, running)")
                )
        density = seed_mean(by_seed, "final_density", seeds)
        rounds = sorted({r.planned_rounds for r in by_seed.values()})
        paper = spec.paper_accuracy.get(label)
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{label}` ({method})",
                    *cells,
                    f"**{_mean_cell(by_seed, 'final_accuracy', seeds)}**",
                    f"{paper:.2f}%" if paper is not None else "-",
                    _mean_cell(by_seed, "final_density", seeds),
                    "n/a" if math.isnan(density) or density == 0 else f"{1 / density:.1f}x",
                    _mean_cell(by_seed, "flops_ratio", seeds),
                    ", ".join(map(str, rounds)) or "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def write_claim_csv(
    path: Path,
    spec: ClaimSpec,
    methods: dict[str, str],
    results: dict[str, dict[int, ArmResult]],
    seeds: Sequence[int],
) -> None:
    """``table.csv``: one row per arm and seed, and one per arm for the mean (seed = "mean")."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "arm",
                "method",
                "seed",
                "complete",
                "rounds",
                "final_accuracy",
                "final_density",
                "flops_ratio",
                "paper_accuracy",
            ]
        )
        for label, method in methods.items():
            by_seed = results.get(label, {})
            paper = spec.paper_accuracy.get(label, math.nan) / 100
            for s in seeds:
                if s in by_seed:
                    r = by_seed[s]
                    writer.writerow(
                        [
                            label,
                            method,
                            s,
                            int(r.complete),
                            r.rounds,
                            r.final_accuracy,
                            r.final_density,
                            r.flops_ratio,
                            paper,
                        ]
                    )
            complete = all(s in by_seed and by_seed[s].complete for s in seeds)
            writer.writerow(
                [
                    label,
                    method,
                    "mean",
                    int(complete),
                    "",
                    seed_mean(by_seed, "final_accuracy", seeds),
                    seed_mean(by_seed, "final_density", seeds),
                    seed_mean(by_seed, "flops_ratio", seeds),
                    paper,
                ]
            )


def claim_plots(
    folder: Path, spec: ClaimSpec, runs: dict[int, dict[str, RunRecord]], labels: Sequence[str]
) -> list[Path]:
    """Test accuracy per round (every arm, one line style per seed), density per round, final accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    styles = ["-", "--", ":", "-."]
    paths = []

    def save(fig, name: str) -> None:  # type: ignore[no-untyped-def]
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        paths.append(folder / name)

    for name, column, ylabel in (
        ("accuracy_per_round.png", "accuracy", "test accuracy (measured)"),
        ("density_per_round.png", "density", "density (kept share of prunable weights)"),
    ):
        fig, ax = plt.subplots(figsize=(7.0, 4.4))
        for i, (seed, by_label) in enumerate(runs.items()):
            for label, run in by_label.items():
                y = run.column(column)
                keep = ~np.isnan(y)
                ax.plot(
                    run.rounds[keep],
                    y[keep],
                    styles[i % len(styles)],
                    color=colours[label],
                    label=f"{label}, seed {seed}",
                )
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        save(fig, name)

    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for x, label in enumerate(labels):
        values = [by_label[label] for by_label in runs.values() if label in by_label]
        finals = [float(v.column("accuracy")[~np.isnan(v.column("accuracy"))][-1]) for v in values if v.rows]
        if finals:
            ax.bar(x, np.mean(finals), color=colours[label], alpha=0.5)
            ax.plot([x] * len(finals), finals, "ko", markersize=4)
        if label in spec.paper_accuracy:
            ax.plot([x - 0.4, x + 0.4], [spec.paper_accuracy[label] / 100] * 2, "r-", linewidth=1.5)
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax.set_ylabel("final test accuracy: mean (bar), seeds (dots), paper (red)")
    everything = [
        float(np.nanmin(r.column("accuracy")))
        for by_label in runs.values()
        for r in by_label.values()
        if r.rows
    ]
    if everything:
        ax.set_ylim(max(0.0, min(everything + [p / 100 for p in spec.paper_accuracy.values()]) - 0.05), 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    save(fig, "final_accuracy.png")
    return paths


def claim_markdown(
    title: str,
    spec: ClaimSpec,
    methods: dict[str, str],
    results: dict[str, dict[int, ArmResult]],
    judgements: Sequence[Judgement],
    timed: Sequence[StepTime],
    plots: Sequence[Path],
    sections: Sequence[str],
    command: str,
    environment: dict[str, str],
    notes: Sequence[str] = (),
    scale_note: str = "",
    seeds: Sequence[int] | None = None,
) -> str:
    """The claim's report: the answer first (paper, fedprune, pass or miss and by how much), then the rest.

    ``seeds`` are the seeds run (default: the claim's).
    """
    seeds = tuple(seeds if seeds is not None else spec.seeds)
    result = verdict(judgements, len(seeds))
    running = [
        f"`{label}` seed {s}" for label, by in results.items() for s, r in by.items() if not r.complete
    ] + [f"`{label}` seed {s}" for label in methods for s in seeds if s not in results.get(label, {})]
    names = {label: f"`{label}`" for label in methods}
    lines = [f"# {title}", ""]
    if scale_note:
        lines += [f"**Scaled down:** {scale_note}", ""]
    lines += [
        "## Answer",
        "",
        f"- **Paper:** {spec.paper}" + (f" ({spec.reference})" if spec.reference else ""),
        f"- **fedprune:** **{result}** "
        + (
            f"on the mean of seeds {', '.join(map(str, seeds))}"
            if len(seeds) > 1
            else f"on seed {seeds[0]} alone"
        )
        + (f" (not finished: {', '.join(running)}; provisional)" if running else "")
        + ":",
        *["  " + judgement_line(j, names) for j in judgements],
    ]
    if spec.paper_accuracy:
        means = {label: seed_mean(results.get(label, {}), "final_accuracy", seeds) for label in results}
        figures = ", ".join(
            f"`{label}` {value:.2f}% (fedprune {_percent(means.get(label, math.nan))})"
            for label, value in spec.paper_accuracy.items()
        )
        lines.append(f"  - The paper's accuracies beside fedprune's means: {figures}.")
    for t in timed:
        lines.append(
            f"  - Measured training step of `{t.label}`'s final client model (seed {t.seed}, "
            f"batch {t.batch_size}, one thread): **{t.shrunk_ms:.1f} ms** shrunk "
            f"({t.parameters[1]:,} parameters) against "
            f"{t.dense_ms:.1f} ms dense ({t.parameters[0]:,}): **{t.shrunk_ms / t.dense_ms:.3f}x** "
            f"(load average {t.load:.1f} when measured)."
        )
    if result != "PASS" and spec.differs:
        lines += [
            "",
            f"**What differs from the paper, and what a bigger machine would change:** {spec.differs}",
        ]
    lines += [
        "",
        "## Table",
        "",
        claim_table_markdown(spec, methods, results, seeds),
        "",
        "Final accuracy is the server's test accuracy after the last round (**measured**); a pass is judged "
        "on the mean over the seeds. Counted FLOPs: forward multiply-accumulates of conv and linear layers "
        "under the final mask, zero weights free (Liu et al.'s convention; `common/flops.py`), over the "
        "dense model's. The same figures: `table.csv` (one row per arm and seed, one for the mean).",
        "",
        "## Plots",
        "",
        *[f"![{p.stem.replace('_', ' ')}](plots/{p.name})" for p in plots],
        "",
    ]
    if spec.differs and result == "PASS":
        lines += ["## What differs from the paper", "", spec.differs, ""]
    lines += ["## Every run", "", *[s + "\n" for s in sections]]
    lines += [
        "## Set-up",
        "",
        f"- Command: `{command}`",
        f"- Seeds: {', '.join(map(str, seeds))}; within a seed every arm has the same data, partitions, "
        "initialisation and client sampling.",
        *[f"- {key}: {value}" for key, value in environment.items()],
        *[f"- {note}" for note in notes],
        "",
    ]
    return "\n".join(lines)
