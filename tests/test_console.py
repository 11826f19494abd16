"""What the fedprune command shows: the plain-line view of a run, Flower's log kept to warnings
and errors, `fedprune report` on hand-made results folders, `fedprune doctor` and `--version`."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from client.app import app as client_app
from common.config import DATA_DIR_ENV, load_config
from common.pruning import InitialPruningStep
from server.app import run_federation
from server.results import RoundRow, config_toml, read_rounds
from simulations.cli import app
from simulations.live import COLUMNS, RunView, flower_log, header_line, row_cells, table_line
from tests.inprocess_grid import InProcessGrid

ANSI = re.compile(r"\x1b\[")
SHORT_RUN = [
    "simulation.num-clients=3",
    "federation.rounds=3",
    "train.local-steps=2",
    "pruning.prunefl.reconfig-interval=2",
    "pruning.prunefl.ip-batches=2",
    "pruning.prunefl.ip-max-rounds=6",
    "pruning.prunefl.ip-reconfig-interval=2",
    "pruning.prunefl.ip-eval-interval=1",
    "pruning.prunefl.ip-accuracy-factor=0",
    "output.checkpoint-every=0",
]


def plain_view(title: str = "a run") -> tuple[RunView, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    console = Console(file=out, width=160, highlight=False, soft_wrap=True)
    errors = Console(file=err, width=160, highlight=False, soft_wrap=True)
    return RunView(console, title, errors=errors), out, err


# -- the plain-line view ------------------------------------------------------------------------
def test_a_row_is_its_figures_in_fixed_columns():
    row = RoundRow(
        round=7,
        accuracy=0.91234,
        loss=0.25,
        density=0.125,
        bytes_down=250_000,
        bytes_up=50_000,
        dense_bytes=1_000_000,
        bound_bytes=200_000,
        wall_time_s=1.25,
        modelled_round_time_s=12.0,
        rejected=1,
        evaluate_rejected=1,
        failures=0,
        evaluate_failures=3,
    )
    cells = row_cells(row)
    assert cells == [
        "7", "0.9123", "0.250", "0.1250", "250.00 kB", "50.00 kB", "0.300", "1.500", "1.2", "12.0", "2/3"
    ]  # fmt: skip
    line = table_line(cells)
    header = header_line()
    # every cell ends where its heading ends
    position = 0
    for cell, (heading, width) in zip(cells, COLUMNS, strict=True):
        position += width
        assert line[position - len(cell) : position] == cell
        assert header[position - len(heading) : position] == heading
        position += 2
    assert len(header) == len(line) == position - 2
    unevaluated = row_cells(RoundRow(round=0))
    assert unevaluated[1] == "n/a" and unevaluated[6] == "n/a"  # no accuracy, no dense size (round 0)


def test_a_short_in_process_run_prints_plain_lines(tmp_path):
    config = load_config(None, [*SHORT_RUN, f"output.dir={tmp_path}", "output.name=run"])
    view, out, err = plain_view("fedprune: prunefl on digits")
    assert not view.live  # a StringIO is not a terminal
    with view, flower_log(False, view):
        summary = run_federation(InProcessGrid(client_app, 3), config, progress=view)
    text = out.getvalue()
    assert not ANSI.search(text) and not ANSI.search(err.getvalue())
    lines = text.splitlines()
    assert lines[0] == "fedprune: prunefl on digits"
    assert lines[1].startswith("initial pruning on the server, on the data of partition 0")
    ip_lines = [line for line in lines if line.startswith("initial pruning: IP round")]
    assert ip_lines and "density" in ip_lines[0] and "training accuracy" in ip_lines[0]
    header = lines.index(header_line())
    table = lines[header + 1 :]
    rows = read_rounds(Path(summary.results_dir))
    assert len(table) == len(rows) == 4  # rounds 0..3, one line each, nothing else
    for line, row in zip(table, rows, strict=True):
        cells = line.split()
        assert cells[0] == row["round"]
        assert cells[1] == f"{float(row['accuracy']):.4f}"
        assert cells[3] == f"{float(row['density']):.4f}"
    assert "Final results" not in text and "[ROUND" not in text  # no Flower log in the view


def test_initial_pruning_lines_come_at_the_gate_reconfigurations_and_tenths():
    view, out, _ = plain_view()
    steps = [
        InitialPruningStep(1, 100, 1.0, 0.05, 1, False, 0),
        InitialPruningStep(2, 100, 1.0, 0.05, 1, False, 0),
        InitialPruningStep(3, 100, 1.0, 0.30, 3, True, 0),  # gate passed
        InitialPruningStep(4, 100, 1.0, 0.30, 3, True, 0),
        InitialPruningStep(5, 100, 0.7, 0.30, 3, True, 1),  # reconfigured
        InitialPruningStep(10, 100, 0.7, 0.30, 3, True, 1),  # a tenth of the rounds
        InitialPruningStep(11, 100, 0.7, 0.30, 3, True, 1),
    ]
    for step in steps:
        view.initial_pruning_step(step)
    rounds = [int(re.search(r"IP round (\d+)/", line).group(1)) for line in out.getvalue().splitlines()]
    assert rounds == [3, 5, 10]
    assert out.getvalue().splitlines()[1] == (
        "initial pruning: IP round 5/100, density 0.7000, training accuracy 0.3000 (IP round 3), "
        "1 reconfiguration"
    )


def test_flower_log_passes_warnings_and_errors_once_and_nothing_else():
    view, out, err = plain_view()
    logger = logging.getLogger("flwr")
    before = list(logger.handlers)
    with flower_log(False, view):
        logger.setLevel(logging.DEBUG)
        logger.info("[ROUND 1/3]")
        logger.warning("round %d: training reply of node %d rejected: %s", 1, 5, "non-finite")
        logger.warning("round %d: training reply of node %d rejected: %s", 1, 5, "non-finite")
        logger.warning("DEPRECATED FEATURE: run_simulation")
        logger.error("the SuperLink went away")
    assert logger.handlers == before  # Flower's own handler is back
    assert err.getvalue().splitlines() == [
        "warning: round 1: training reply of node 5 rejected: non-finite",
        "error: the SuperLink went away",
    ]
    assert out.getvalue() == ""


def test_verbose_leaves_flowers_log_alone():
    logger = logging.getLogger("flwr")
    before = list(logger.handlers)
    with flower_log(True):
        assert logger.handlers == before


# -- fedprune report ------------------------------------------------------------------------------
LAYERS = {"conv1.weight": 144, "conv2.weight": 4608, "fc1.weight": 32768, "fc2.weight": 640}  # digits-cnn


def results_folder(folder: Path, method: str, accuracies: list[float], kept: float) -> Path:
    """A results folder of 3 rounds written as the ServerApp writes it (every column)."""
    folder.mkdir(parents=True)
    config = load_config(None, [f"pruning.method={method}", "federation.rounds=3"])
    (folder / "config.toml").write_text(config_toml(config.to_flat()))
    with (folder / "rounds.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RoundRow.columns())
        for r, accuracy in enumerate(accuracies):
            density = 1.0 if r == 0 else kept
            row = RoundRow(
                round=r,
                accuracy=accuracy,
                density=density,
                bytes_down=1000 + 100_000 * r,
                bytes_up=500 + 50_000 * r,
                dense_bytes=0 if r == 0 else 300_000,
                bound_bytes=0.0 if r == 0 else 140_000.0,
                modelled_round_time_s=1.0,
                elapsed_s=float(r),
            )
            writer.writerow(row.formatted())
    with (folder / "layers.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", *LAYERS])
        for r in range(len(accuracies)):
            share = 1.0 if r == 0 else kept
            writer.writerow([r, *(round(size * share) for size in LAYERS.values())])
    (folder / "summary.json").write_text('{"rounds": 3, "environment": {"python": "3.11.7", "cpus": "2"}}')
    return folder


def test_report_of_hand_made_results_folders(tmp_path):
    dense = results_folder(tmp_path / "runs" / "dense", "none", [0.1, 0.5, 0.7, 0.8], 1.0)
    pruned = results_folder(tmp_path / "runs" / "pruned", "prunefl", [0.1, 0.6, 0.75, 0.85], 0.5)
    result = CliRunner().invoke(app, ["report", str(dense), str(pruned), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = tmp_path / "out" / "report.md"
    assert f"report of 2 runs in {report}" in result.output
    text = report.read_text()
    plots = [
        "accuracy_per_round.png",
        "accuracy_vs_bytes.png",
        "accuracy_vs_modelled_time.png",
        "density_per_round.png",
        "bytes_per_round.png",
        "layer_density_dense.png",
        "layer_density_pruned.png",
    ]
    for name in plots:
        assert (tmp_path / "out" / "plots" / name).stat().st_size > 1000
        assert f"](plots/{name})" in text
    assert (tmp_path / "out" / "table.csv").is_file()
    # the target defaults to the best accuracy both runs reached (0.8), and dense FedAvg is the baseline
    assert "Target accuracy 80%" in text
    assert "**pruned** reached 80% test accuracy in round 3" in text
    # bytes to 80%: pruned sent (1500 + 150000 + 300000 + 450000) by round 3, as dense did
    assert "with 1.00x the bytes of dense FedAvg" in text
    assert "Environment of `dense` (summary.json)" in text


def test_report_of_one_run_goes_into_its_folder_and_bad_folders_get_one_line(tmp_path):
    run = results_folder(tmp_path / "run", "prunefl", [0.1, 0.2, 0.3, 0.4], 0.5)
    result = CliRunner().invoke(app, ["report", str(run), "--target", "0.3"])
    assert result.exit_code == 0, result.output
    text = (run / "report" / "report.md").read_text()
    assert "Target accuracy 30% set with --target" in text and "layer_density_run.png" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["report", str(empty)])
    assert result.exit_code == 2 and "is not a results folder of fedprune simulate" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["report", str(run), "--target", "1.5"])
    assert result.exit_code == 2 and "--target" in result.output


def test_layer_densities_are_kept_over_size(tmp_path):
    from simulations.report import layer_densities, load_run

    run = load_run(results_folder(tmp_path / "run", "prunefl", [0.1, 0.2, 0.3, 0.4], 0.5))
    densities = layer_densities(run)
    assert set(densities) == set(LAYERS)
    assert densities["conv1.weight"] == [1.0, 0.5, 0.5, 0.5]
    assert all(math.isclose(v, 0.5) for v in densities["fc1.weight"][1:])


# -- fedprune doctor and --version ----------------------------------------------------------------
def doctor(monkeypatch, data_dir: Path | None) -> tuple[int, dict[str, str]]:
    if data_dir is None:
        monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    else:
        monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    result = CliRunner().invoke(app, ["doctor"])
    items = {}
    for line in result.output.splitlines()[:-1]:
        status, rest = line[:4].strip(), line[6:]
        items[rest[:19].strip()] = f"{status} {rest[20:]}"
    return result.exit_code, items


def test_doctor_without_a_data_folder(monkeypatch):
    code, items = doctor(monkeypatch, None)
    assert code == 0
    for item in ("fedprune", "python", "torch", "cuda", "flwr", "ray", "cpus"):
        assert item in items
    assert items["torch"].startswith("ok") and "device" in items["torch"]
    assert items["data folder"].startswith("note none set") and DATA_DIR_ENV in items["data folder"]
    assert items["data: digits"].startswith("ok found")
    assert (
        items["data: mnist"].startswith("note not found") and "no data folder is set" in items["data: mnist"]
    )


def test_doctor_with_a_data_folder(monkeypatch, tmp_path):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (mnist / name).write_bytes(b"")
    (mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    (tmp_path / "femnist" / "data" / "train").mkdir(parents=True)
    (tmp_path / "femnist" / "data" / "test").mkdir(parents=True)
    (tmp_path / "femnist" / "data" / "train" / "all_data_0_niid_0_keep_0_train_9.json").write_text("{}")
    (tmp_path / "femnist" / "data" / "test" / "all_data_0_niid_0_keep_0_test_9.json").write_text("{}")
    code, items = doctor(monkeypatch, tmp_path)
    assert code == 0
    assert items["data folder"] == f"ok {tmp_path} (from ${DATA_DIR_ENV})"
    assert items["data: mnist"] == f"ok found: {mnist}"
    assert items["data: femnist"].startswith("ok found")
    assert (
        items["data: fashion-mnist"].startswith("note not found")
        and "missing in" in items["data: fashion-mnist"]
    )
    assert items["data: cifar10"].startswith("note not found")

    code, items = doctor(monkeypatch, tmp_path / "nowhere")
    assert code == 1
    assert items["data folder"].startswith("FAIL") and "no such folder" in items["data folder"]


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and re.fullmatch(r"fedprune \S+\n", result.output)


@pytest.mark.parametrize("command", ["simulate", "compare", "rethink", "bench"])
def test_every_run_command_has_verbose(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert "--verbose" in result.output


# -- the live view on a real terminal (tmux) ------------------------------------------------------
SHOW = """
from rich.console import Console
from client.app import app as client_app
from common.config import load_config
from server.app import run_federation
from simulations.live import RunView, flower_log
from tests.inprocess_grid import InProcessGrid

config = load_config(None, {settings!r})
view = RunView(Console(), "fedprune: the live view")
assert view.live, "not a terminal"
with view, flower_log(False, view):
    run_federation(InProcessGrid(client_app, 3), config, progress=view)
print("SHOWN")
"""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_the_live_view_in_a_terminal(tmp_path):
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "show.py"
    script.write_text(SHOW.format(settings=[*SHORT_RUN, f"output.dir={tmp_path}", "output.name=run"]))
    socket = f"fedprune-test-{os.getpid()}"  # a tmux server of this test's own
    tmux = ["tmux", "-L", socket]
    # the size rich reads first (pytest may export COLUMNS of its own terminal)
    size = "COLUMNS=150 LINES=40"
    command = f"cd {root} && {size} PYTHONPATH={root} {sys.executable} {script} 2>&1; sleep 120"
    subprocess.run([*tmux, "new-session", "-d", "-x", "150", "-y", "40", command], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 240
        while "SHOWN" not in screen and time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True
            ).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert "SHOWN" in screen, screen
    lines = screen.splitlines()
    assert lines[0] == "fedprune: the live view"
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["round", "accuracy"])
    assert [line.split()[0] for line in lines[header + 1 : header + 5]] == ["0", "1", "2", "3"]
    bar = next(line for line in lines if line.startswith("rounds"))
    assert "3/3" in bar and "ETA" in bar and "accuracy" in bar
    assert not any(line.startswith("initial pruning ") and "/" in line for line in lines[header:])
