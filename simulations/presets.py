"""Where the bundled presets live: one lookup for the command line, compare and the bench.

Simulate presets (``simulations/<name>.toml``) override the defaults of
``pyproject.toml``; bench presets live in ``simulations/benchmarks/``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SIMULATE_PACKAGE = "simulations"
BENCH_PACKAGE = "simulations.benchmarks"


def bundled_preset(name: str, package: str = SIMULATE_PACKAGE) -> Path | None:
    """The bundled preset ``name`` (with or without ``.toml``) of ``package``, if there is one."""
    bundled = resources.files(package).joinpath(f"{name.removesuffix('.toml')}.toml")
    return Path(str(bundled)) if bundled.is_file() else None


def preset_path(config: Path | None) -> Path | None:
    """``config`` as given, or the bundled preset when ``config`` is a bare name such as ``gibbs``."""
    if config is None or config.exists() or len(config.parts) > 1:
        return config
    return bundled_preset(config.name) or config
