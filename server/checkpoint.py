"""Checkpoints: everything the server needs to continue a killed run, bit for bit.

A checkpoint is a folder ``<results>/checkpoints/round-NNNNNN/`` holding

* ``arrays.npz``: every array of the state (model, mask, importance sums,
  random generator states...), read back with ``allow_pickle=False``;
* ``state.json``: every scalar and the structure, arrays replaced by their
  names in ``arrays.npz``.

Each server component contributes a ``state_dict()`` of plain arrays and scalars
(nested dicts allowed) and restores it with ``load_state_dict()``. A checkpoint
is written to a temporary folder, flushed to disk, then renamed into place
(``os.replace``, atomic on POSIX), and older checkpoints are removed only after
that: a run killed at any instant leaves at least one complete checkpoint.
Nothing is ever unpickled.

When to checkpoint (:class:`CheckpointSchedule`): every K rounds
(``output.checkpoint-every``), after the final round, and after round 0 (initial
pruning). Client-side state is lost when a run restarts (a resumed run is a new
Flower run, whose nodes start with an empty ``Context.state``); the server then
resends every node the mask. PruneFL under full participation, however, keeps
each client's importance sum on the node between reconfigurations, and the
server cannot rebuild it. A checkpoint due at a round after which clients hold
such a sum is therefore deferred to the first round after which they hold none
(with PruneFL: the next reconfiguration round, where they upload and clear it),
so that a resumed run ends with exactly the model of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
ARRAYS_FILE = "arrays.npz"
STATE_FILE = "state.json"
FORMAT = 1
_FOLDER = re.compile(r"^round-(\d{6})$")
_ARRAY_TAG = "__array__"  # marks an array leaf in state.json


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit this run; the message says why."""


@dataclass(frozen=True)
class CheckpointSchedule:
    """Which rounds end with a checkpoint (see the module docstring)."""

    every: int  # 0: never
    last_round: int

    def wanted(self, server_round: int) -> bool:
        """True for round 0, every ``every``-th round and the last one."""
        return self.every > 0 and (server_round % self.every == 0 or server_round == self.last_round)


class CheckpointPlanner:
    """Turns the schedule into decisions, deferring checkpoints while clients hold state."""

    def __init__(self, schedule: CheckpointSchedule) -> None:
        self.schedule = schedule
        self.pending = False

    def due(self, server_round: int, clients_hold_state: bool) -> bool:
        if self.schedule.every == 0:
            return False
        if server_round == self.schedule.last_round:
            self.pending = False
            return True
        self.pending = self.pending or self.schedule.wanted(server_round)
        if self.pending and not clients_hold_state:
            self.pending = False
            return True
        return False


# -- nested state <-> (arrays, json) ---------------------------------------------------
def _split(state: Mapping[str, Any], prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in state.items():
        if "/" in key:
            raise ValueError(f"state key {key!r} may not contain '/'")
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            tree[key] = _split(value, f"{path}/", arrays)
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                raise ValueError(f"state array {path!r} has dtype object, which would need pickling")
            arrays[path] = value
            tree[key] = {_ARRAY_TAG: path}
        else:
            tree[key] = _json_scalar(value, path)
    return tree


def _json_scalar(value: Any, path: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # nan, inf, -inf: JSON has none of them
    if isinstance(value, list | tuple):
        return [_json_scalar(v, path) for v in value]
    if isinstance(value, Mapping):  # inside a list: a JSON object of scalars (a results row)
        return {str(k): _json_scalar(v, f"{path}/{k}") for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return _json_scalar(value.item(), path)
    raise ValueError(f"state entry {path!r} of type {type(value).__name__} is neither an array nor a scalar")


def _join(tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY_TAG}:
            name = tree[_ARRAY_TAG]
            if name not in arrays:
                raise CheckpointError(f"array {name!r} is missing from {ARRAYS_FILE}")
            return arrays[name]
        if set(tree) == {"__float__"}:
            return float(tree["__float__"])
        return {key: _join(value, arrays) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays) for v in tree]
    return tree


# -- writing and reading ---------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_folder(results_dir: Path, server_round: int) -> Path:
    return results_dir / CHECKPOINT_DIR / f"round-{server_round:06d}"


def write_checkpoint(results_dir: Path, server_round: int, state: Mapping[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of ``server_round`` atomically; drop older ones."""
    root = results_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_folder(results_dir, server_round)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    arrays: dict[str, np.ndarray] = {}
    tree = _split(state, "", arrays)
    with (tmp / ARRAYS_FILE).open("wb") as f:
        np.savez(f, **arrays)  # no object arrays (checked above): nothing to pickle
        f.flush()
        os.fsync(f.fileno())
    document = {"format": FORMAT, "round": server_round, "state": tree}
    with (tmp / STATE_FILE).open("w", encoding="utf-8") as f:
        json.dump(document, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # the same round written again: move the old one aside first
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    for folder in root.iterdir():
        match = _FOLDER.match(folder.name)
        if match and int(match.group(1)) < server_round:
            shutil.rmtree(folder, ignore_errors=True)
    return final


def checkpoint_rounds(results_dir: Path) -> list[int]:
    """Rounds of the complete checkpoints in ``results_dir``, ascending."""
    root = results_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    rounds = [int(m.group(1)) for p in root.iterdir() if (m := _FOLDER.match(p.name)) and p.is_dir()]
    return sorted(rounds)


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    state: dict[str, Any]
    folder: Path


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read one checkpoint folder; raise :class:`CheckpointError` if it is unusable."""
    try:
        document = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {exc}") from exc
    found = document.get("format") if isinstance(document, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"checkpoint {folder} has format {found!r}; fedprune reads format {FORMAT}")
    return Checkpoint(int(document["round"]), _join(document["state"], arrays), folder)


def latest_checkpoint(results_dir: Path) -> Checkpoint:
    """The newest complete checkpoint of a results folder."""
    rounds = checkpoint_rounds(results_dir)
    if not rounds:
        raise CheckpointError(
            f"no checkpoint in {results_dir / CHECKPOINT_DIR} (was output.checkpoint-every 0, "
            "or did the run stop before its first checkpoint?)"
        )
    return read_checkpoint(checkpoint_folder(results_dir, rounds[-1]))


# -- random generators -------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global numpy and torch generator states, as arrays and scalars.

    fedprune itself draws only from generators seeded by (seed, round, ...), never
    from these; they are saved so that code that does (a method's own sampling)
    continues the same stream after a resume.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "numpy": {
            "name": str(name),
            "keys": np.asarray(keys),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state().numpy().copy(),
    }


def load_rng_state(state: Mapping[str, Any]) -> None:
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"], n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8)))
