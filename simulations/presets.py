"""Where the bundled presets live: one lookup for the command line, compare and the bench.

Simulate presets (``simulations/<name>.toml``) override the defaults of
``pyproject.toml``; bench presets live in ``simulations/benchmarks/``.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from common.settings import ConfigError

SIMULATE_PACKAGE = "simulations"
BENCH_PACKAGE = "simulations.benchmarks"


def bundled_preset(name: str, package: str = SIMULATE_PACKAGE) -> Path | None:
    """The bundled preset ``name`` (with or without ``.toml``) of ``package``, if there is one."""
    bundled = resources.files(package).joinpath(f"{name.removesuffix('.toml')}.toml")
    return Path(str(bundled)) if bundled.is_file() else None


def preset_names(package: str) -> list[str]:
    """Names of the bundled presets of ``package``."""
    folder = resources.files(package)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset_table(name: str, package: str, key: str, kind: str) -> tuple[Path, dict]:
    """A preset file by path, or a bundled one of ``package`` by name, and its TOML table.

    ``key`` names the command-line argument in errors (``preset``, ``claim``), ``kind``
    the sort of preset (``bench preset``): an unknown name or invalid TOML is a
    :class:`ConfigError` that lists the bundled ones.
    """
    path = Path(name)
    if not path.is_file():
        bundled = bundled_preset(name, package)
        if bundled is None:
            raise ConfigError(key, name, f"a {kind} file or one of {preset_names(package)}", what="argument")
        path = bundled
    try:
        return path, tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(key, str(path), f"a valid TOML file ({exc})", what="argument") from exc


def preset_path(config: Path | None) -> Path | None:
    """``config`` as given, or the bundled preset when ``config`` is a bare name such as ``gibbs``."""
    if config is None or config.exists() or len(config.parts) > 1:
        return config
    return bundled_preset(config.name) or config
