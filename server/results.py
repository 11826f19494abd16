"""The results folder of a run.

=========================  ==================================================
file                       content
=========================  ==================================================
``config.toml``            the resolved configuration (re-runnable with
                           ``fedprune simulate --config``)
``rounds.csv``             one row per round (round 0: the initial model,
                           after initial pruning), written as the round ends
``layers.csv``             one row per round: the kept weights of every
                           prunable tensor after the round (its mask is the
                           one the next round trains under)
``phases.csv``             one row per round: wall seconds per phase of the
                           server and the clients (:mod:`server.phases`)
``communication.csv``      one row per message: measured bytes by category,
                           the bound and the dense size
``initial_pruning.json``   where initial pruning ran, its density, time, bytes
``summary.json``           final figures and totals
``model.npz``              the final effective model (pruned weights zero),
                           one array per state tensor
``mask.npz``               the final mask, one bool array per prunable tensor
                           (compressed: a claim's runs commit it)
``partitions.json``        samples and label histogram per client, as the
                           nodes reported them (:mod:`server.partition_report`)
``partitions.png``         a plot of it: training samples by class per client
=========================  ==================================================

Times in ``rounds.csv`` are either measured wall-clock seconds (``wall_time_s``,
``elapsed_s``) or *modelled* by PruneFL's cost model (``modelled_*``); the
``straggler_*`` columns name the round's slowest sampled client under that model
(:mod:`server.fleet`).
Everything is plain CSV, JSON and ``.npz`` (read with ``allow_pickle=False``).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from common.config import AppConfig
from common.layout import ModelLayout
from common.settings import Scalar

from .checkpoint import CHECKPOINT_DIR
from .communication import truncate
from .fleet import RoundTime
from .phases import PhaseRow

ROUNDS_FILE = "rounds.csv"
COMMUNICATION_FILE = "communication.csv"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
INITIAL_PRUNING_FILE = "initial_pruning.json"
MODEL_FILE = "model.npz"
MASK_FILE = "mask.npz"
LAYERS_FILE = "layers.csv"
PHASES_FILE = "phases.csv"


@dataclass
class RoundRow:
    """One line of ``rounds.csv``."""

    round: int
    accuracy: float = math.nan
    loss: float = math.nan
    density: float = math.nan
    clients: int = 0
    failures: int = 0  # sampled clients whose training failed or did not answer
    rejected: int = 0  # training replies dropped by validation (reasons in the log)
    evaluate_failures: int = 0
    evaluate_rejected: int = 0
    train_loss: float = math.nan
    bytes_down: int = 0
    bytes_up: int = 0
    values_down: int = 0
    mask_down: int = 0
    other_down: int = 0
    values_up: int = 0
    mask_up: int = 0
    importance_up: int = 0
    other_up: int = 0
    bound_down: float = 0.0
    bound_up: float = 0.0
    bound_bytes: float = 0.0
    dense_bytes: int = 0
    ratio_down: float = math.nan  # bytes sent / bound
    ratio_up: float = math.nan
    reconfigured: int = 0
    modelled_round_time_s: float = 0.0
    modelled_elapsed_s: float = 0.0
    wall_time_s: float = 0.0
    elapsed_s: float = 0.0
    # the round's slowest sampled client (server/fleet.py), all modelled: its partition, device
    # profile, and modelled round time / mean client time (1 = balanced); -1, "", NaN without one
    straggler_partition: int = -1
    straggler_profile: str = ""
    modelled_straggler_share: float = math.nan

    def record_straggler(self, timing: RoundTime) -> None:
        """The straggler's columns from the round's modelled times."""
        straggler = timing.straggler
        if straggler is not None:
            self.straggler_partition, self.straggler_profile = straggler.partition_id, straggler.profile
        self.modelled_straggler_share = timing.straggler_share

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def formatted(self) -> list[str]:
        out = []
        for value in asdict(self).values():
            if isinstance(value, float):
                out.append("" if math.isnan(value) else f"{value:.6g}")
            else:
                out.append(str(value))
        return out


def _finite(data: object) -> object:
    """``data`` with NaN and infinite floats replaced by None (JSON has no NaN)."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _toml_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def config_toml(flat: dict[str, Scalar]) -> str:
    """Flat keys as a TOML document of dotted keys."""
    lines = ["# Resolved configuration of this run (fedprune simulate --config <this file>)"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in flat.items()]
    return "\n".join(lines) + "\n"


def run_folder_name(config: AppConfig) -> str:
    if config.output.name:
        return config.output.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.pruning.method}-{config.data.dataset}"


def results_folder(config: AppConfig) -> Path:
    return Path(config.output.dir).expanduser().resolve() / run_folder_name(config)


class ResultsWriter:
    """Creates a run's folder and writes its files as the run goes."""

    def __init__(self, folder: Path, *, new_files: bool = True) -> None:
        """Start the folder's ``rounds.csv``, or (``new_files=False``) append to it."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        if new_files:
            with (folder / ROUNDS_FILE).open("w", newline="") as f:
                csv.writer(f).writerow(RoundRow.columns())
            for name in (LAYERS_FILE, PHASES_FILE):  # written with their first row
                (folder / name).unlink(missing_ok=True)

    @classmethod
    def create(cls, config: AppConfig) -> ResultsWriter:
        """A new run's folder; a previous run's checkpoints there are removed."""
        folder = results_folder(config)
        writer = cls(folder)
        shutil.rmtree(folder / CHECKPOINT_DIR, ignore_errors=True)
        (folder / CONFIG_FILE).write_text(config_toml(config.to_flat()), encoding="utf-8")
        return writer

    @classmethod
    def reopen(cls, config: AppConfig) -> ResultsWriter:
        """The folder of the run ``config`` describes, to continue it (rows are appended)."""
        folder = results_folder(config)
        if not (folder / ROUNDS_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no {ROUNDS_FILE} to continue")
        return cls(folder, new_files=False)

    def _size(self, name: str) -> int:
        path = self.folder / name
        return path.stat().st_size if path.is_file() else 0

    def state_dict(self) -> dict[str, int]:
        """How much of each per-round CSV was written, for a checkpoint."""
        return {
            "rounds_csv_bytes": self._size(ROUNDS_FILE),
            "layers_csv_bytes": self._size(LAYERS_FILE),
            "phases_csv_bytes": self._size(PHASES_FILE),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Cut the per-round CSVs back to the rows they held at the checkpoint."""
        truncate(self.folder / ROUNDS_FILE, int(state["rounds_csv_bytes"]))
        for name, key in ((LAYERS_FILE, "layers_csv_bytes"), (PHASES_FILE, "phases_csv_bytes")):
            if (self.folder / name).is_file():
                truncate(self.folder / name, int(state.get(key, 0)))

    @property
    def communication_path(self) -> Path:
        return self.folder / COMMUNICATION_FILE

    def append_round(self, row: RoundRow) -> None:
        with (self.folder / ROUNDS_FILE).open("a", newline="") as f:
            csv.writer(f).writerow(row.formatted())

    def _append(self, name: str, header: list[str], row: list[str]) -> None:
        path = self.folder / name
        fresh = not path.is_file() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(header)
            writer.writerow(row)

    def append_layers(self, server_round: int, layout: ModelLayout, kept: np.ndarray) -> None:
        """The kept weights per prunable tensor after ``server_round`` (``layers.csv``)."""
        names = [t.name for t in layout.prunable]
        self._append(LAYERS_FILE, ["round", *names], [str(server_round), *(str(int(k)) for k in kept)])

    def append_phases(self, row: PhaseRow) -> None:
        self._append(PHASES_FILE, PhaseRow.columns(), row.formatted())

    def write_json(self, name: str, data: dict) -> None:
        """Write ``data`` atomically; NaN becomes null."""
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_finite(data), indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(path)

    def write_model(
        self, layout: ModelLayout, floats: np.ndarray, ints: np.ndarray, mask: np.ndarray
    ) -> None:
        state = layout.unflatten(np.where(mask, floats, np.float32(0)), ints)
        np.savez(self.folder / MODEL_FILE, **{name: t.numpy() for name, t in state.items()})
        masks = {t.name: mask[t.slice].reshape(t.shape) for t in layout.prunable}
        np.savez_compressed(self.folder / MASK_FILE, **masks)  # tens of kB: a claim's runs commit it


def read_rounds(folder: Path) -> list[dict[str, str]]:
    """Rows of a results folder's ``rounds.csv``."""
    with (folder / ROUNDS_FILE).open(newline="") as f:
        return list(csv.DictReader(f))
