"""The ``fedprune`` command."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from common.config import AppConfig, load_config, read_preset
from common.settings import ConfigError

if TYPE_CHECKING:
    from server.checkpoint import Checkpoint

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
ResumeOption = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Continue the run of this results folder from its latest checkpoint, with its own config.toml.",
    ),
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
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(code=2) from None
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
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(code=2) from None
    return resolved, checkpoint


@app.command()
def simulate(config: ConfigOption = None, set_: SetOption = None, resume: ResumeOption = None) -> None:
    """Run a local multi-client simulation on Flower's simulation engine (Ray)."""
    checkpoint: Checkpoint | None = None
    if resume is not None:
        resolved, checkpoint = resolve_resume(resume, config, set_)
    else:
        resolved = resolve(config, set_)
    from simulations.runner import SimulationError
    from simulations.runner import simulate as run

    try:
        summary = run(resolved, checkpoint)
    except (SimulationError, RuntimeError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(code=1) from None
    typer.echo(summary.last_line())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
