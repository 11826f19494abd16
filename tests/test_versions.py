"""One pinned set of versions: constraints.txt, the installed environment, the images.

``constraints.txt`` is the set the README's commands, ``.ci/run`` and the Docker
images install. These tests fail when the environment the tests run in, the
Flower image tags of the compose files, the Dockerfile or the install commands
drift from it, and when a pin falls outside ``pyproject.toml``'s own ranges.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILES = ("compose.yml", "compose.server.yml", "compose.client.yml")
FLOWER_IMAGE = re.compile(r"image:\s*flwr/(superlink|supernode|superexec):(\S+)")


def pins() -> dict[str, Version]:
    """``constraints.txt`` as {canonical name: pinned version}; every line ``name==version``."""
    found: dict[str, Version] = {}
    for number, line in enumerate((REPO / "constraints.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"constraints.txt:{number}: {line!r} is not 'name==version'"
        key = canonicalize_name(name)
        assert key not in found, f"constraints.txt:{number}: {name} is pinned twice"
        found[key] = Version(version)
    return found


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def public(version: str) -> Version:
    """A version without its local label (``2.13.0+cpu`` -> ``2.13.0``)."""
    return Version(Version(version).public)


def test_every_dependency_of_the_project_is_pinned_within_its_range():
    pinned = pins()
    requirements = [*project()["dependencies"], *project()["optional-dependencies"]["test"]]
    for text in requirements:
        requirement = Requirement(text)
        key = canonicalize_name(requirement.name)
        assert key in pinned, f"{requirement.name} is a dependency but constraints.txt does not pin it"
        assert requirement.specifier.contains(pinned[key], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pinned[key]}, outside pyproject's '{text}'"
        )


def test_the_environment_the_tests_run_in_is_the_pinned_one():
    drift = []
    for name, version in pins().items():
        try:
            installed = public(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # a pin for another platform or for a tool this environment lacks
        if installed != version:
            drift.append(f"{name} {installed} installed, {version} pinned")
    assert not drift, "install with `pip install -c constraints.txt ...`: " + "; ".join(drift)


def test_flower_images_carry_the_pinned_flower_version():
    flwr = str(pins()["flwr"])
    tags: dict[str, str] = {}
    images: set[str] = set()
    for name in COMPOSE_FILES:
        for image, tag in FLOWER_IMAGE.findall((DOCKER / name).read_text(encoding="utf-8")):
            tags[f"{name}: flwr/{image}"] = tag
            images.add(image)
    assert images >= {"superlink", "supernode"}, images
    assert set(tags.values()) == {flwr}, tags
    dockerfile = (DOCKER / "superexec.Dockerfile").read_text(encoding="utf-8")
    assert f"ARG FLWR_VERSION={flwr}\n" in dockerfile


def test_the_image_installs_with_the_constraints_file():
    dockerfile = (DOCKER / "superexec.Dockerfile").read_text(encoding="utf-8")
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs, "the Dockerfile installs nothing"
    for line in installs:
        assert "-c /tmp/fedprune/constraints" in line, line
    assert "TORCH_VERSION" not in dockerfile, "torch's version comes from constraints.txt"


@pytest.mark.parametrize("path", ["README.md", ".ci/run"])
def test_install_commands_use_the_constraints_file(path):
    text = (REPO / path).read_text(encoding="utf-8")
    installs = [
        line
        for line in text.splitlines()
        if re.search(r"pip install .*-e ", line) and not line.lstrip().startswith("#")
    ]
    assert installs, f"{path} has no `pip install -e` command"
    for line in installs:
        assert "-c constraints.txt" in line, f"{path}: {line.strip()!r} installs unpinned versions"
