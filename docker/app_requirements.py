"""Print the Python requirements a fedprune SuperExec image installs, one a line.

The SuperExec runs fedprune's ServerApp or ClientApp from the app bundle that
``flwr run`` sends, so an image needs the app's dependencies but not the app.
They are read from ``pyproject.toml``'s ``[project].dependencies``, less what
the image provides otherwise:

* ``flwr``: the base image's own Flower (pinned to the image's version);
* ``torch``: installed first, from PyTorch's CPU index or the Jetson base image;
* ``ray``: only Flower's simulation engine needs it, never a device.

    python docker/app_requirements.py pyproject.toml
    python docker/app_requirements.py --check-base     # Python >= 3.11 and torch importable
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PROVIDED = {"flwr", "torch", "ray"}
MIN_PYTHON = (3, 11)  # flwr 1.41 and fedprune require it


def name_of(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement string."""
    name = requirement.strip()
    for stop in "[<>=!~; @(":
        name = name.split(stop, 1)[0]
    return name.strip().lower().replace("_", "-").replace(".", "-")


def app_requirements(pyproject: Path) -> list[str]:
    """``[project].dependencies`` of ``pyproject`` without the provided ones."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    dependencies = project.get("dependencies")
    if not isinstance(dependencies, list):
        raise ValueError(f"{pyproject} has no [project].dependencies list")
    return [r for r in dependencies if name_of(r) not in PROVIDED]


def check_base() -> list[str]:
    """What the interpreter running this lacks to run fedprune (empty: nothing)."""
    problems = []
    if sys.version_info < MIN_PYTHON:
        problems.append(
            f"Python {sys.version_info.major}.{sys.version_info.minor} is too old: Flower 1.41 needs "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (JetPack 6 images ship 3.10; use a base with 3.11+)"
        )
    try:
        import torch  # noqa: F401
    except ImportError:
        problems.append("the base image has no PyTorch (use an NVIDIA PyTorch image for your JetPack)")
    return problems


def main(argv: list[str]) -> int:
    if argv == ["--check-base"]:
        problems = check_base()
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(app_requirements(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
