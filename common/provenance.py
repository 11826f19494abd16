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
        commit = _git(folder, "rev-parse", "--short", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(folder: Path, *args: str) -> str:
    """``git -C folder args``'s output, stripped; raises when git is missing or fails."""
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()
