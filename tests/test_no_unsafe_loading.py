"""Nothing from the wire or from a checkpoint is unpickled: a scan of the source tree.

Every ``np.load`` must say ``allow_pickle=False`` and every ``torch.load``
``weights_only=True``; no module may import a pickle-family module. A file that
needs a restricted unpickler (CIFAR-10's python version, for instance) must be
listed in ``ALLOWED`` with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project's own code; virtual environments (.venv, CI's .venv-ci) and results lie elsewhere.
SCANNED = ("server", "client", "common", "simulations", "tests", "docker")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
ALLOWED: dict[str, str] = {  # "path/relative/to/root.py": "why it may unpickle, and how it restricts it"
    "common/data/cifar10.py": "CIFAR-10's python version is a pickle; its RestrictedUnpickler admits only "
    "numpy array reconstruction and latin-1 bytes, and refuses every other global",
    "tests/test_data_formats.py": "writes pickles (pickle.dumps) to test that restricted unpickler, "
    "hostile ones included; it never loads one itself",
}


def _name(node: ast.expr) -> str:
    """Dotted name of an expression such as ``np.load`` ('' if it is not a plain name)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def unsafe_calls(source: str) -> list[str]:
    """Every unsafe load or pickle import in ``source``, as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in PICKLE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            names = {a.name for a in node.names}
            if module in PICKLE_MODULES or (module in {"numpy", "torch"} and "load" in names):
                found.append(f"{node.lineno}: from {node.module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name in {"np.load", "numpy.load"} and _keyword(node, "allow_pickle") is not False:
                found.append(f"{node.lineno}: {name} without allow_pickle=False")
            elif name == "torch.load" and _keyword(node, "weights_only") is not True:
                found.append(f"{node.lineno}: torch.load without weights_only=True")
            elif name.endswith(("read_pickle", "Unpickler")):
                found.append(f"{node.lineno}: {name}")
    return found


def source_files() -> list[Path]:
    return sorted(
        path
        for folder in SCANNED
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def test_the_source_tree_never_unpickles():
    problems = {}
    for path in source_files():
        relative = str(path.relative_to(ROOT))
        if relative in ALLOWED:
            continue
        found = unsafe_calls(path.read_text(encoding="utf-8"))
        if found:
            problems[relative] = found
    assert not problems, problems
    assert len(source_files()) > 40  # the scan did see the code base


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import cloudpickle as cp",
        "from pickle import loads",
        "from numpy import load",
        "import numpy as np\nnp.load('x.npz')",
        "import numpy as np\nnp.load('x.npz', allow_pickle=True)",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import pandas as pd\npd.read_pickle('x')",
    ],
)
def test_the_scan_finds_unsafe_loading(snippet):
    assert unsafe_calls(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "import numpy as np\nnp.load('x.npz', allow_pickle=False)",
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "import numpy as np\nnp.save('x.npy', np.zeros(3))",
    ],
)
def test_the_scan_passes_safe_loading(snippet):
    assert unsafe_calls(snippet) == []
