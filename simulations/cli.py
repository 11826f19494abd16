"""The ``fedprune`` command."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.config import AppConfig, load_config, parse_override, read_preset
from common.settings import ConfigError

app = typer.Typer(
    name="fedprune",
    help="Federated pruning on Flower: simulate, compare and benchmark pruning methods.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _commands() -> None:
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


def preset_path(config: Path | None) -> Path | None:
    """``config`` as given, or the bundled preset of that name."""
    if config is None or config.exists():
        return config
    bundled = resources.files("simulations").joinpath(f"{config.name.removesuffix('.toml')}.toml")
    return Path(str(bundled)) if bundled.is_file() else config


def resolve(config: Path | None, overrides: list[str] | None) -> AppConfig:
    """Load and check a configuration; a mistake ends the command with one clear line."""
    from server.app import preflight

    try:
        resolved = load_config(preset_path(config), overrides or [])
        resolved.check_simulation()
        preflight(resolved)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from None
    return resolved


@app.command()
def simulate(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Run a local multi-client simulation on Flower's simulation engine (Ray)."""
    resolved = resolve(config, set_)
    from simulations.runner import SimulationError
    from simulations.runner import simulate as run

    try:
        summary = run(resolved)
    except (SimulationError, RuntimeError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    typer.echo(summary.last_line())


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


def _fail(exc: Exception, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=code)


@app.command()
def compare(
    methods: MethodsOption = "",
    config: ConfigOption = None,
    set_: SetOption = None,
    presets: PresetsOption = True,
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
    from simulations.runner import SimulationError
    from simulations.runner import simulate as run

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
    try:
        rows = run_all(configs, run)
    except (SimulationError, RuntimeError) as exc:
        raise _fail(exc, 1) from None
    write_csv(rows, folder / COMPARISON_FILE)
    typer.echo(format_table(rows))
    typer.echo(f"fedprune: {len(rows)} methods compared; results in {folder}")


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
    from simulations.runner import SimulationError
    from simulations.runner import simulate as run

    try:
        summary = run(resolved)
    except (SimulationError, RuntimeError) as exc:
        raise _fail(exc, 1) from None
    typer.echo(summary.last_line())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
