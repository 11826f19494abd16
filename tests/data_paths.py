"""Where the real-data tests find their files (they skip when there are none).

``$FEDPRUNE_SHARED_DATA`` if set, else ``../shared/data`` beside the repository
(the verified copies described in its MANIFEST.md); Fashion-MNIST from Debian's
``dataset-fashion-mnist`` package when it is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_DATASETS = Path("/usr/share/datasets")


def shared_data() -> Path | None:
    configured = os.environ.get("FEDPRUNE_SHARED_DATA")
    candidate = Path(configured) if configured else ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def require(subfolder: str, root: Path | None = None) -> Path:
    """The data folder holding ``subfolder``, or skip the test."""
    base = root if root is not None else shared_data()
    if base is None or not (base / subfolder).is_dir():
        pytest.skip(f"no {subfolder}/ in the shared data folder (set FEDPRUNE_SHARED_DATA)")
    return base
