"""``fedprune doctor``: what this machine offers fedprune, one line per item, a hint per problem.

Nothing here loads a data set: a data set counts as found when its files are where
:mod:`common.data` would read them (their checksums are verified when a run loads them).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from common.config import DATA_DIR_ENV
from common.data import DATASETS
from common.data.files import DataFilesMissing, locate_all, require_data_dir

MIN_PYTHON = (3, 11)
FLWR_RANGE = ((1, 41), (1, 43))  # pyproject.toml: flwr[simulation]>=1.41,<1.43
CPU_WHEEL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
CUDA_WHEEL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report; ``status`` is ``ok``, ``note`` (worth knowing) or ``FAIL``."""

    item: str
    value: str
    status: str = "ok"
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.item:<19} {self.value}"
        return text + (f"  -> {self.hint}" if self.hint else "")


def fedprune_version() -> str:
    try:
        return metadata.version("fedprune")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def python_check() -> Check:
    version = platform.python_version()
    if tuple(int(p) for p in platform.python_version_tuple()[:2]) < MIN_PYTHON:
        return Check("python", version, "FAIL", "fedprune needs Python 3.11 or newer")
    return Check("python", version)


def torch_checks() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", "not installed", "FAIL", f"install it first: {CPU_WHEEL} (or the CUDA wheel)")]
    threads = f"{torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        count = torch.cuda.device_count()
        return [
            Check("torch", f"{torch.__version__}, device cuda:0 ({name}), {threads}"),
            Check("cuda", f"available: {count} device{'s' if count > 1 else ''}, CUDA {torch.version.cuda}"),
        ]
    torch_line = Check("torch", f"{torch.__version__}, device cpu, {threads}")
    if torch.version.cuda:
        hint = "torch is built for CUDA but sees no GPU: check the driver (nvidia-smi), CUDA_VISIBLE_DEVICES"
        return [
            torch_line,
            Check("cuda", f"not available (torch built for CUDA {torch.version.cuda})", "note", hint),
        ]
    hint = f"CPU build: fine for simulations; for a GPU: {CUDA_WHEEL}"
    return [torch_line, Check("cuda", "not available (CPU-only torch)", "note", hint)]


def package_check(
    name: str, needed_for: str, allowed: tuple[tuple[int, ...], tuple[int, ...]] | None = None
) -> Check:
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return Check(name, "not installed", "FAIL", f"needed for {needed_for}: pip install -e .")
    if allowed is not None and not allowed[0] <= _version_tuple(version)[:2] < allowed[1]:
        low, high = (".".join(map(str, v)) for v in allowed)
        return Check(
            name, version, "FAIL", f"fedprune is tested with {name} >= {low}, < {high}: pip install -e ."
        )
    return Check(name, version)


def cpu_check() -> Check:
    count = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else count
    value = f"{usable} usable of {count}" if usable != count else str(count)
    if usable < 2:
        return Check("cpus", value, "note", "one CPU: simulated clients train one after the other")
    return Check("cpus", value)


def _mnist_like(name: str) -> Callable[[Path | None], str]:
    from common.data.idx import FASHION_MNIST_FOLDER, IDX_FILES, MNIST_FOLDER

    folder = MNIST_FOLDER if name == "mnist" else FASHION_MNIST_FOLDER

    def find(data_dir: Path | None) -> str:
        directory = require_data_dir(data_dir, folder, IDX_FILES)
        locate_all(directory, IDX_FILES, folder)
        return str(directory)

    return find


def _cifar10(data_dir: Path | None) -> str:
    from common.data.cifar10 import FOLDER, find_version

    require_data_dir(data_dir, FOLDER, ["cifar-10-batches-bin/ or cifar-10-batches-py/"])
    assert data_dir is not None
    directory, version = find_version(data_dir)
    return f"{directory} ({'binary' if version == 'bin' else 'python'} version)"


def _femnist(data_dir: Path | None) -> str:
    from common.data.femnist import FOLDER, find_split_dirs

    require_data_dir(data_dir, FOLDER, ["data/train/*.json", "data/test/*.json"])
    assert data_dir is not None
    train, _ = find_split_dirs(data_dir / FOLDER.subfolder)
    return str(train.parent)


FINDERS: dict[str, Callable[[Path | None], str]] = {
    "digits": lambda _data_dir: "bundled with scikit-learn (no data folder needed)",
    "mnist": _mnist_like("mnist"),
    "fashion-mnist": _mnist_like("fashion-mnist"),
    "cifar10": _cifar10,
    "femnist": _femnist,
}


def data_checks(data_dir: Path | None, source: str) -> list[Check]:
    """The data folder (from ``source``: data.dir or $FEDPRUNE_DATA_DIR) and every data set in it."""
    if data_dir is None:
        folder = Check(
            "data folder",
            "none set",
            "note",
            f"set ${DATA_DIR_ENV} (or --set data.dir=...) to the folder holding mnist/, cifar-10/, "
            "femnist/ ...; digits needs none",
        )
    elif not data_dir.is_dir():
        folder = Check(
            "data folder", f"{data_dir} (from {source})", "FAIL", "no such folder: create it or fix the path"
        )
    else:
        folder = Check("data folder", f"{data_dir} (from {source})")
    checks = [folder]
    missing_folder = data_dir is not None and not data_dir.is_dir()
    for name in DATASETS:
        if missing_folder and name != "digits":
            checks.append(Check(f"data: {name}", "not looked for (the data folder does not exist)", "note"))
            continue
        try:
            where = FINDERS[name](data_dir)
            checks.append(Check(f"data: {name}", f"found: {where}"))
        except DataFilesMissing as missing:
            checks.append(Check(f"data: {name}", "not found", "note", str(missing)))
    return checks


def run_checks(data_dir: Path | None, source: str) -> list[Check]:
    """Every check, in the order the report prints them."""
    return [
        Check("fedprune", fedprune_version()),
        python_check(),
        *torch_checks(),
        package_check("flwr", "the federation", FLWR_RANGE),
        package_check("ray", "fedprune simulate (Flower's simulation engine)"),
        cpu_check(),
        *data_checks(data_dir, source),
    ]
