"""Which fedprune a result came from: the checkout's commit, for run summaries and reports."""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def git_commit(folder: Path = SOURCE_ROOT) -> str:
    """The checkout's short commit, with ``-dirty`` when tracked files changed; 'unknown' outside git.

    An installed copy (a wheel, a device's Docker image) has no checkout: 'unknown'.
    """
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
