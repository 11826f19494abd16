"""The ``fedprune`` command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from common.config import AppConfig, load_config, parse_override, read_preset
from common.settings import ConfigError
from simulations.presets import preset_path

if TYPE_CHECKING:
    from server.app import RunSummary
    from server.checkpoint import Checkpoint

app = typer.Typer(
    name="fedprune",
    help="Federated pruning on Flower: simulate, compare and benchmark pruning methods.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from simulations.doctor import fedprune_version

        typer.echo(f"fedprune {fedprune_version()}")
        raise typer.Exit()


@app.callback()
def _commands(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print fedprune's version and exit."
        ),
    ] = None,
) -> None:
    """Federated pruning on Flower: simulate, compare and benchmark pruning methods."""


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="A preset TOML file (or the name of a preset in simulations/) overriding the defaults.",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set train.lr=0.05 (repeatable)."),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Show Flower's own log too (default: the live view, warnings and errors)."
    ),
]
ResumeOption = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Continue the run of this results folder from its latest checkpoint, with its own config.toml.",
    ),
]


def _fail(exc: Exception, code: int) -> typer.Exit:
    """Print one error line (no traceback) and the exit that ends the command: 2 for input, 1 for a run."""
    console.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(code=code)


def resolve(config: Path | None, overrides: list[str] | None) -> AppConfig:
    """Load and check a configuration; a mistake ends the command with one clear line."""
    from server.app import preflight

    try:
        resolved = load_config(preset_path(config), overrides or [])
        resolved.check_simulation()
        preflight(resolved)
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    return resolved


def resolve_resume(
    folder: Path, config: Path | None, overrides: list[str] | None
) -> tuple[AppConfig, Checkpoint]:
    """The configuration and latest checkpoint of a results folder to continue."""
    from server.app import RunError, check_fits, preflight
    from server.checkpoint import CheckpointError, latest_checkpoint
    from server.results import CONFIG_FILE

    try:
        if config is not None or overrides:
            raise ConfigError(
                "--resume", str(folder), "alone: a run continues with its own config.toml", what="option"
            )
        folder = folder.expanduser().resolve()
        if not (folder / CONFIG_FILE).is_file():
            raise ConfigError(
                "--resume",
                str(folder),
                f"a results folder of fedprune simulate (with {CONFIG_FILE})",
                what="option",
            )
        flat = read_preset(folder / CONFIG_FILE)
        flat.update({"output.dir": str(folder.parent), "output.name": folder.name})
        resolved = AppConfig.from_flat(flat)
        resolved.check_simulation()
        layout = preflight(resolved)
        checkpoint = latest_checkpoint(folder)
        check_fits(checkpoint, resolved, layout)
    except (ConfigError, CheckpointError, RunError) as exc:
        raise _fail(exc, 2) from None
    return resolved, checkpoint


def run_title(config: AppConfig) -> str:
    """The first line of a run's view: what runs, on what, with how many clients."""
    sim, fed = config.simulation, config.federation
    sampled = f", {fed.clients_per_round} per round" if fed.clients_per_round else ""
    return (
        f"fedprune: {config.pruning.method} on {config.data.dataset} ({config.model.name}), "
        f"{sim.num_clients} clients{sampled}, {fed.rounds} rounds"
    )


def run_shown(config: AppConfig, checkpoint: Checkpoint | None, verbose: bool, title: str = "") -> RunSummary:
    """Run ``config`` on the simulation engine in the live view (plain lines off a terminal)."""
    from simulations.live import RunView, flower_log, stdout_console
    from simulations.runner import SimulationError
    from simulations.runner import simulate as run

    view = RunView(stdout_console(), title or run_title(config))
    try:
        with view, flower_log(verbose, view):
            return run(config, checkpoint, view, verbose)
    except (SimulationError, RuntimeError) as exc:
        raise _fail(exc, 1) from None


ReportOption = Annotated[
    bool, typer.Option("--report", help="Write the run's report (plots, Markdown) into <results>/report.")
]


@app.command()
def simulate(
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: ResumeOption = None,
    verbose: VerboseOption = False,
    report: ReportOption = False,
) -> None:
    """Run a local multi-client simulation on Flower's simulation engine (Ray)."""
    checkpoint: Checkpoint | None = None
    if resume is not None:
        resolved, checkpoint = resolve_resume(resume, config, set_)
    else:
        resolved = resolve(config, set_)
    summary = run_shown(resolved, checkpoint, verbose)
    if report:
        path = write_run_report([Path(summary.results_dir)], Path(summary.results_dir) / "report", None)
        typer.echo(f"fedprune: report in {path}")
    typer.echo(summary.last_line())


def write_run_report(folders: list[Path], output: Path, target: float | None) -> Path:
    """The report of results folders (simulations/report.py, shared with bench); one line on error."""
    import shlex
    import sys

    from simulations.report import ReportError, report_runs

    try:
        return report_runs(folders, output, target, shlex.join(["fedprune", *sys.argv[1:]]))
    except ReportError as exc:
        raise _fail(exc, 2) from None


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Results folders of fedprune simulate (one or more).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Report folder (default: RUN/report for one run, results/report-<time>)."
        ),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(help="Target accuracy of the bytes and time columns (default: reached by every run)."),
    ] = None,
) -> None:
    """Plots and a Markdown report of one or several results folders (as fedprune bench writes them)."""
    import datetime

    folders = [run.expanduser().resolve() for run in runs]
    if target is not None and not 0 < target <= 1:
        raise _fail(ConfigError("--target", str(target), "an accuracy in (0, 1]", what="option"), 2)
    if output is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        output = folders[0] / "report" if len(folders) == 1 else Path("results") / f"report-{stamp}"
    path = write_run_report(folders, output.expanduser().resolve(), target)
    typer.echo(f"fedprune: report of {len(folders)} run{'s' if len(folders) > 1 else ''} in {path}")


MethodsOption = Annotated[
    str,
    typer.Option(
        "--methods",
        "-m",
        help="Comma-separated methods to compare (default: every method that starts from nothing).",
    ),
]
PresetsOption = Annotated[
    bool,
    typer.Option(
        "--presets/--no-presets",
        help="Give each method its own settings table from simulations/<method>.toml.",
    ),
]


@app.command()
def compare(
    methods: MethodsOption = "",
    config: ConfigOption = None,
    set_: SetOption = None,
    presets: PresetsOption = True,
    verbose: VerboseOption = False,
) -> None:
    """Run several methods with identical data, partitions and seeds, and print one table."""
    from server.app import preflight
    from simulations.compare import (
        COMPARISON_FILE,
        comparison_folder,
        default_methods,
        format_table,
        method_configs,
        write_csv,
    )
    from simulations.compare import compare as run_all

    names = [m.strip() for m in methods.split(",") if m.strip()] or default_methods()
    try:
        path = preset_path(config)
        base = read_preset(path) if path is not None else {}
        base.update(parse_override(text) for text in set_ or [])
        folder = comparison_folder(str(base.get("output.dir", "results")))
        configs = method_configs(base, names, folder, presets)
        for resolved in configs:
            resolved.check_simulation()
            preflight(resolved)
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    count = len(configs)
    rows = run_all(
        configs,
        lambda c: run_shown(c, None, verbose, f"{run_title(c)} [{configs.index(c) + 1}/{count}]"),
    )
    write_csv(rows, folder / COMPARISON_FILE)
    typer.echo(format_table(rows))
    typer.echo(f"fedprune: {len(rows)} methods compared; results in {folder}")


@app.command()
def bench(
    preset: Annotated[
        str,
        typer.Argument(
            help="A bench preset: quick, lenet5-mnist, hetero-mnist, prunefl-femnist, or a TOML file."
        ),
    ] = "quick",
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            "-m",
            help="Comma-separated methods or arms of the preset (default: its own); dense FedAvg runs too.",
        ),
    ] = "",
    set_: SetOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Report folder (default: results/bench-<preset>); runs reused there."
        ),
    ] = None,
    scale: Annotated[
        bool,
        typer.Option(help="Also measure start-up time and server memory, 10,000 MNIST clients against 10."),
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run dense FedAvg and pruning methods side by side and write a report (table, plots, Markdown)."""
    import functools
    import shlex
    import sys

    from server.app import RunError
    from server.checkpoint import CheckpointError
    from simulations.bench import BenchError, load_bench_preset, run_bench
    from simulations.runner import SimulationError
    from simulations.runner import simulate as run

    command = shlex.join(["fedprune", *sys.argv[1:]])
    try:
        chosen = load_bench_preset(preset)
        names = [m.strip() for m in methods.split(",") if m.strip()] or list(chosen.methods)
        chosen.resolve(names)
        overrides = [parse_override(text) for text in set_ or []]
        report_dir = (output or Path("results") / f"bench-{chosen.name}").expanduser().resolve()
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    if scale:
        from simulations.bench_scale import CLIENTS, measure

        shared = dict(overrides)
        data_dir = str(shared.get("data.dir", ""))
        try:
            measure(CLIENTS, 10, 10, 3, report_dir, data_dir, command)
        except RuntimeError as exc:
            raise _fail(exc, 1) from None
    try:
        runner = functools.partial(run, verbose=verbose)
        path = run_bench(chosen, names, overrides, report_dir, runner, command, verbose)
    except (ConfigError, BenchError, CheckpointError, RunError) as exc:
        raise _fail(exc, 2) from None
    except (SimulationError, RuntimeError) as exc:
        raise _fail(exc, 1) from None
    typer.echo(path.read_text(encoding="utf-8").split("\n## ")[0].rstrip())
    typer.echo(f"fedprune: report in {path}")


@app.command()
def reproduce(
    claim: Annotated[
        str,
        typer.Argument(
            help="A claim: droppruning-lenet5, rethinking-l1, tgf-half-flops, gibbs-90, or a claim TOML file."
        ),
    ],
    full: Annotated[
        bool, typer.Option("--full", help="The paper's model (and rounds) instead of the scaled-down run.")
    ] = False,
    seeds: Annotated[
        str, typer.Option("--seeds", help="Comma-separated seeds (default: the claim's, at least two).")
    ] = "",
    arms: Annotated[
        str,
        typer.Option(
            "--arms", help="Comma-separated arms to run (default: all; the report judges what ran)."
        ),
    ] = "",
    set_: SetOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Report folder (default: results/reproduce-<claim>[-full]); runs reused and resumed there.",
        ),
    ] = None,
    report_only: Annotated[
        bool,
        typer.Option("--report-only", help="Write the report of the runs already there; run nothing."),
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run a source paper's headline claim federated, at two seeds or more, and judge it: one report."""
    import functools
    import shlex
    import sys

    from server.app import RunError
    from server.checkpoint import CheckpointError
    from simulations.bench import BenchError
    from simulations.reproduce import load_claim, only_arms, parse_seeds, report_claim, run_claim
    from simulations.runner import SimulationError
    from simulations.runner import simulate as run

    command = shlex.join(["fedprune", *sys.argv[1:]])
    try:
        chosen = load_claim(claim)
        chosen = only_arms(chosen, arms) if arms else chosen
        chosen_seeds = parse_seeds(seeds) if seeds else chosen.spec.seeds
        overrides = [parse_override(text) for text in set_ or []]
        default = Path("results") / f"reproduce-{chosen.name}{'-full' if full else ''}"
        report_dir = (output or default).expanduser().resolve()
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    try:
        if report_only:
            path = report_claim(chosen, chosen_seeds, report_dir, command, full)
        else:
            runner = functools.partial(run, verbose=verbose)
            path = run_claim(chosen, chosen_seeds, overrides, report_dir, runner, command, full, verbose)
    except (ConfigError, BenchError, CheckpointError, RunError) as exc:
        raise _fail(exc, 2) from None
    except (SimulationError, RuntimeError) as exc:
        raise _fail(exc, 1) from None
    typer.echo(path.read_text(encoding="utf-8").split("\n## Table")[0].rstrip())
    typer.echo(f"fedprune: report in {path}")


RegimeOption = Annotated[
    str,
    typer.Option(
        "--regime",
        "-r",
        help="finetune, scratch-e, scratch-b, lottery or random-reinit (Liu et al., ICLR 2019).",
    ),
]


@app.command()
def rethink(
    source: Annotated[Path, typer.Argument(help="A finished run's results folder.")],
    regime: RegimeOption = "finetune",
    set_: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Train a finished run's final mask again, from inherited weights or a new initialisation."""
    folder = source.expanduser().resolve()
    overrides = [
        "pruning.method=rethinking",
        f"pruning.rethinking.source={folder}",
        f"pruning.rethinking.regime={regime}",
        f"output.name={folder.name}-{regime}",
        *(set_ or []),
    ]
    resolved = resolve(folder / "config.toml", overrides)
    summary = run_shown(resolved, None, verbose, f"{run_title(resolved)}: {regime} of {folder.name}")
    typer.echo(summary.last_line())


@app.command()
def doctor(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the versions that matter, CUDA, CPUs, the data folder and the data sets found there.

    One line per item, with a hint for each problem; exits with 1 when a check fails.
    """
    import os

    from common.config import DATA_DIR_ENV
    from simulations.doctor import run_checks

    try:
        resolved = load_config(preset_path(config), set_ or [])
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    source = "data.dir" if resolved.data.dir else f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else ""
    checks = run_checks(resolved.data.resolved_dir(), source)
    for check in checks:
        typer.echo(check.line())
    failed = [c.item for c in checks if c.status == "FAIL"]
    if failed:
        typer.echo(
            f"fedprune doctor: {len(failed)} problem{'s' if len(failed) > 1 else ''}: {', '.join(failed)}"
        )
        raise typer.Exit(code=1)
    typer.echo("fedprune doctor: no problem found")


ASSUMED_LINK = 1_438_432.0  # PruneFL's Raspberry Pi link, bytes per second each way


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise typer.BadParameter(f"{text!r} is not C,H,W (three positive integers)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _densities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v <= 1 for v in values):
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of densities in (0, 1]")
    return values


def _fit_line(what: str, fit) -> str:  # type: ignore[no-untyped-def]
    return (
        f"{what}: t0 = {fit.t0 * 1e3:.3f} ms per iteration; fit RMSE {fit.rmse_s * 1e3:.3f} ms "
        f"({fit.relative_error:.1%} of the mean {fit.mean_iteration_s * 1e3:.3f} ms), largest residual "
        f"{fit.max_relative_residual:.1%}; timing noise {fit.timing_noise:.1%} "
        f"({fit.samples} configurations x {fit.repeats} repeats of {fit.iterations} iterations)"
    )


@app.command()
def profile(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The device-profile TOML file to write (or update).")
    ],
    config: ConfigOption = None,
    set_: SetOption = None,
    name: Annotated[str | None, typer.Option(help="Device name (default: the file's name).")] = None,
    description: Annotated[str, typer.Option(help="What the device is.")] = "",
    note: Annotated[
        list[str] | None, typer.Option(help="A comment line for the file's header (repeatable).")
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="C,H,W of the inputs (default: the data set's).")
    ] = None,
    classes: Annotated[int | None, typer.Option(help="Number of classes (default: the data set's).")] = None,
    repeats: Annotated[int, typer.Option(help="Timings per mask configuration (median used).")] = 5,
    densities: Annotated[str, typer.Option(help="Mask densities timed.")] = "1,0.5,0.2,0.05",
    min_seconds: Annotated[float, typer.Option(help="Shortest duration of one timing.")] = 0.2,
    widths: Annotated[
        str, typer.Option(help="Widths of the narrowed dense models timed for structured pruning.")
    ] = "1,0.75,0.5,0.25",
    skip_widths: Annotated[bool, typer.Option(help="Do not time narrowed models.")] = False,
    threads: Annotated[
        int | None, typer.Option(help="torch threads (default: torch's, as a ClientApp on a device).")
    ] = None,
    link_bandwidth: Annotated[
        float | None,
        typer.Option(help="Link bytes/s each way, measured by you (default: PruneFL's assumed 1.44 MB/s)."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Where the steps run: auto, cpu, cuda, cuda:N or mps (default: train.device)."),
    ] = None,
) -> None:
    """Measure this device's cost-model coefficients for model.name and write its profile.

    Times the client's real local SGD steps (model.name, train.batch-size, train.loss)
    under masks of several densities, fits PruneFL's linear model t = t0 + sum_l
    comp_l |M_l| and writes the table models.<model.name> into OUTPUT, keeping the other
    models already there; does the same with dense models of fewer channels per
    layer (widths, for structured pruning) where the model allows. Pass the file
    as cost.profile to the server.
    """
    import datetime
    import os
    import platform
    import tomllib

    import torch

    from common.cost_model import ProfileError, load_profile
    from common.data import DATASETS
    from common.device import describe_device, resolve_device
    from simulations.profiling import (
        DeviceInfo,
        ModelProfile,
        ProfileSettings,
        ProfilingError,
        model_sections,
        profile_document,
        profile_model,
        profile_widths,
    )

    try:
        resolved = load_config(preset_path(config), set_ or [])
        where = (
            resolve_device(device, "--device", what="option")
            if device
            else resolve_device(resolved.train.device)
        )
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    source = DATASETS[resolved.data.dataset]
    shape = _shape(input_shape) if input_shape else source.input_shape
    num_classes = classes or source.num_classes
    if threads is not None:
        torch.set_num_threads(threads)
    model_name, batch_size, loss = resolved.model.name, resolved.train.batch_size, resolved.train.loss
    console.print(
        f"profiling {model_name}: inputs {shape}, {num_classes} classes, batch {batch_size}, "
        f"on {describe_device(where)}, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs ..."
    )
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        settings = ProfileSettings(_densities(densities), repeats, min_seconds, device=where)
        fit = profile_model(model_name, num_classes, shape, batch_size, loss, settings)
    except ProfilingError as exc:
        raise _fail(exc, 2) from None
    console.print(_fit_line(f"{model_name} (masks)", fit))
    structured, width_list = None, ()
    if not skip_widths:
        width_list = _densities(widths)
        try:
            structured = profile_widths(
                model_name, num_classes, shape, batch_size, loss, settings, width_list
            )
            console.print(_fit_line(f"{model_name} (widths)", structured))
        except ProfilingError as exc:
            console.print(f"widths not measured: {exc}")
            width_list = ()
    kept: list[str] = []
    bandwidth, measured, link_note = (
        ASSUMED_LINK,
        False,
        ("not measured; PruneFL's Raspberry Pi link (1,438,432 B/s each way) is assumed"),
    )
    if output.exists():
        try:
            previous = load_profile(str(output))
        except ProfileError as exc:
            raise _fail(exc, 2) from None
        if previous.kind != "measured":
            raise _fail(ValueError(f"{output} holds {previous.kind} figures; write a new file"), 2)
        text = output.read_text(encoding="utf-8")
        sections = model_sections(text)
        earlier_notes = tomllib.loads(text).get("device", {}).get("notes", [])
        note = [*(str(n) for n in earlier_notes), *(n for n in note or () if n not in earlier_notes)]
        kept = [text for model, text in sections.items() if model != model_name]
        name = name or previous.name
        description = description or previous.description
        bandwidth, measured = previous.bandwidth, previous.bandwidth_measured
        link_note = "as measured before" if measured else link_note
    if link_bandwidth is not None:
        bandwidth, measured, link_note = (
            link_bandwidth,
            True,
            "measured by the user, given to fedprune profile",
        )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {describe_device(where)}"
    )
    device = DeviceInfo(
        name=name or output.name.removesuffix(".toml"),
        description=description or f"{platform.node()} ({machine})",
        source=f"fedprune profile on {machine}",
        bandwidth=bandwidth,
        bandwidth_measured=measured,
        link_note=link_note,
        notes=tuple(note or ()),
    )
    measured_profile = ModelProfile(
        model_name,
        fit,
        batch_size,
        shape,
        num_classes,
        loss,
        torch.get_num_threads(),
        datetime.date.today().isoformat(),
        structured,
        width_list,
        (load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(profile_document(device, [measured_profile], kept), encoding="utf-8")
    try:
        load_profile(str(output))  # the server's reader accepts what was written
    except ProfileError as exc:
        raise _fail(ValueError(f"the written profile is unreadable: {exc}"), 1) from None
    typer.echo(f"fedprune: profile of {model_name} written to {output}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
