"""Real Ray simulations: the same seed gives the same run, and a killed run resumes exactly.

Four clients with one CPU each run two at a time on a 2-core machine. Byte counts
include Flower's message metadata, whose node and run ids Flower draws at random
for every simulation (unseeded, from the operating system) and encodes as
protobuf varints of 9 or 10 bytes; the ``other_*`` bytes (and the totals and
modelled times computed from them) may therefore differ by a couple of bytes per
message between two runs. Everything else must be identical.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 6
SETTINGS = [
    "simulation.num-clients=4",
    "simulation.client-cpus=1",
    f"federation.rounds={ROUNDS}",
    "train.local-steps=2",
    "pruning.prunefl.reconfig-interval=2",
    "pruning.prunefl.ip-batches=2",
    "pruning.prunefl.ip-max-rounds=4",
    "pruning.prunefl.ip-reconfig-interval=2",
    "pruning.prunefl.ip-eval-interval=1",
    "pruning.prunefl.ip-accuracy-factor=0",
    "output.checkpoint-every=2",
]
WALL_TIME = {"wall_time_s", "elapsed_s"}
FROM_METADATA = {  # columns that include the varint-encoded random ids (see the module docstring)
    "bytes_down",
    "bytes_up",
    "other_down",
    "other_up",
    "ratio_down",
    "ratio_up",
    "modelled_round_time_s",
    "modelled_elapsed_s",
    # with one profile the straggler is the client with the most bytes, ids included
    "modelled_straggler_share",
    "straggler_partition",
}
MAX_ID_BYTES_PER_MESSAGE = 2  # the run id and the node id each take 9 or 10 bytes


def command(folder: Path, name: str, extra: list[str] = ()) -> list[str]:
    sets = [f"output.dir={folder}", f"output.name={name}", *SETTINGS, *extra]
    return [sys.executable, "-m", "simulations.cli", "simulate", *(a for s in sets for a in ("--set", s))]


def simulate(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "rounds.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def messages_per_round(folder: Path) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    with (folder / "communication.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            key = (row["round"], row["direction"])
            counts[key] = counts.get(key, 0) + 1
    return counts


def model(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "model.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ray")
    for name in ("a", "b"):
        simulate(command(folder, name))
    return folder / "a", folder / "b"


@pytest.mark.slow
def test_the_same_seed_gives_the_same_rounds_with_parallel_clients(two_runs):
    a, b = two_runs
    rows_a, rows_b = rows(a), rows(b)
    assert len(rows_a) == len(rows_b) == ROUNDS + 1
    messages = messages_per_round(a)
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        exact = set(row_a) - WALL_TIME - FROM_METADATA
        assert {k: row_a[k] for k in exact} == {k: row_b[k] for k in exact}
        for direction in ("down", "up"):
            count = messages.get((row_a["round"], direction), 0)
            gap = abs(int(row_a[f"other_{direction}"]) - int(row_b[f"other_{direction}"]))
            assert gap <= MAX_ID_BYTES_PER_MESSAGE * count
            assert int(row_a[f"bytes_{direction}"]) - int(row_a[f"other_{direction}"]) == int(
                row_b[f"bytes_{direction}"]
            ) - int(row_b[f"other_{direction}"])
    assert any(int(r["reconfigured"]) for r in rows_a[1:])  # the runs did reconfigure the mask
    model_a, model_b = model(a), model(b)
    assert all(np.array_equal(model_a[k], model_b[k]) for k in model_a)


@pytest.mark.slow
def test_a_killed_simulation_resumes_to_the_same_final_model(two_runs, tmp_path):
    reference, _ = two_runs
    folder = tmp_path / "killed"
    process = subprocess.Popen(
        command(tmp_path, "killed"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, Ray's workers included
    )
    try:
        deadline = time.monotonic() + 500
        while not (folder / "checkpoints" / "round-000002").is_dir():
            assert process.poll() is None, "the run ended before its round-2 checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    interrupted_at = len(rows(folder)) - 1
    assert interrupted_at < ROUNDS, "the run finished before it was killed; nothing to resume"

    result = simulate([sys.executable, "-m", "simulations.cli", "simulate", "--resume", str(folder)])
    assert f"results in {folder}" in result.stdout
    assert "resuming after round" in result.stdout  # the plain-line view (stdout is a pipe)
    final, expected = model(folder), model(reference)
    assert all(np.array_equal(final[k], expected[k]) for k in expected)
    resumed_rows = rows(folder)
    assert [r["round"] for r in resumed_rows] == [str(r) for r in range(ROUNDS + 1)]
    same = ("accuracy", "loss", "density", "train_loss", "reconfigured", "values_down", "values_up")
    for row, ref in zip(resumed_rows, rows(reference), strict=True):
        assert {k: row[k] for k in same} == {k: ref[k] for k in same}
