"""The server's evaluation overlapped with the next round: the same figures, rows and checkpoints."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from client.app import app as client_app
from common.config import load_config
from common.data import load_dataset
from common.layout import ModelLayout
from common.models import build_model
from server.app import run_federation
from server.checkpoint import checkpoint_rounds
from server.evaluation import CentralEvaluator
from server.global_model import GlobalModel
from server.phases import PhaseRow
from tests.inprocess_grid import InProcessGrid

FAST = ["federation.rounds=5", "train.local-steps=2", "pruning.method=magnitude"]
# what differs between two runs of the same work: the clocks
CLOCKS = {"wall_time_s", "elapsed_s"}


def run(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    config = load_config(
        None, [f"output.dir={tmp_path}", f"output.name={name}", "simulation.num-clients=3", *FAST, *overrides]
    )
    return Path(run_federation(InProcessGrid(client_app, 3), config).results_dir)


def rows_without_clocks(folder: Path) -> list[dict[str, str]]:
    with (folder / "rounds.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in CLOCKS} for row in csv.DictReader(f)]


def test_overlapped_evaluation_gives_the_same_rows_model_and_checkpoints(tmp_path, monkeypatch):
    backgrounds: list[bool] = []
    start = CentralEvaluator.start

    def recording_start(self, global_model, *, background):
        backgrounds.append(background)
        return start(self, global_model, background=background)

    monkeypatch.setattr(CentralEvaluator, "start", recording_start)
    overlapped = run(tmp_path, "overlap", ["evaluate.overlap=true", "output.checkpoint-every=2"])
    # rounds 0..5: a checkpoint is due after rounds 0, 2 and 4, and the last round waits for itself
    assert backgrounds == [False, True, False, True, False, False]
    backgrounds.clear()
    serial = run(tmp_path, "serial", ["evaluate.overlap=false", "output.checkpoint-every=2"])
    assert backgrounds == [False] * 6

    first, second = rows_without_clocks(overlapped), rows_without_clocks(serial)
    assert [int(r["round"]) for r in first] == [0, 1, 2, 3, 4, 5]
    assert all(np.isfinite(float(r["accuracy"])) for r in first)
    assert first == second
    for name in ("model.npz", "mask.npz", "layers.csv"):
        assert (overlapped / name).read_bytes() == (serial / name).read_bytes(), name
    assert checkpoint_rounds(overlapped) == checkpoint_rounds(serial) == [5]  # the older ones are pruned
    with (overlapped / "phases.csv").open(newline="") as f:
        phases = list(csv.DictReader(f))
    assert [int(p["round"]) for p in phases] == [1, 2, 3, 4, 5]
    assert list(phases[0]) == PhaseRow.columns()


def test_a_background_evaluation_sees_the_model_as_it_was_started(tmp_path):
    dataset = load_dataset("digits")
    torch.manual_seed(0)
    net = build_model("digits-cnn", dataset.num_classes, dataset.input_shape)
    layout = ModelLayout.from_model(net)
    floats, ints = layout.flatten(net.state_dict())
    mask = layout.full_mask()
    mask[::3] = False
    model = GlobalModel(layout, floats, ints, mask)
    evaluator = CentralEvaluator("digits-cnn", dataset, "cross-entropy")
    try:
        expected = evaluator.start(model, background=False).result()
        pending = evaluator.start(model, background=True)
        model.floats[:] = 0  # the next round changes the model at once
        assert pending.result() == expected
        assert evaluator.start(model, background=False).result() != expected
    finally:
        evaluator.close()
