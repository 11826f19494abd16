"""Invalid configurations through the real command: exit code 2, one clear line, no traceback.

Most cases call the ``fedprune`` command in this process (typer's CliRunner);
a few run it as a subprocess, exactly as a user would. A configuration that
wrongly passed every check would start a simulation: the in-process cases
replace the simulation by a failure, so such a bug fails fast instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import simulations.runner
from simulations.cli import app

ROOT = Path(__file__).resolve().parents[1]
MALFORMED_PROFILE = "[device\nname = 'x'\n"
PROFILE_WITHOUT_MODEL = """
[device]
name = "other-device"
kind = "measured"
[link]
bandwidth = 1000000.0
[models.conv2]
t0 = 0.01
[models.conv2.layers]
"conv1.weight" = 1e-9
"""

# (arguments, fragments the single error line must contain); {tmp} is a scratch folder
CASES: dict[str, tuple[list[str], list[str]]] = {
    # types
    "rounds-not-an-integer": (
        ["--set", "federation.rounds=ten"],
        ["'federation.rounds' = 'ten'", "an integer"],
    ),
    "rounds-fractional": (["--set", "federation.rounds=2.5"], ["'federation.rounds' = 2.5", "an integer"]),
    "bool-as-integer": (["--set", "evaluate.server=1"], ["'evaluate.server' = 1", "true or false"]),
    "lr-bool": (["--set", "train.lr=true"], ["'train.lr' = True", "a number"]),
    "loss-unknown": (["--set", "train.loss=mse"], ["'train.loss' = 'mse'", "one of 'cross-entropy'"]),
    # ranges
    "rounds-zero": (["--set", "federation.rounds=0"], ["'federation.rounds' = 0", ">= 1"]),
    "seed-negative": (["--set", "federation.seed=-1"], ["'federation.seed' = -1", ">= 0"]),
    "alpha-zero": (["--set", "data.alpha=0"], ["'data.alpha' = 0.0", "> 0"]),
    "test-fraction-one": (
        ["--set", "data.client-test-fraction=1"],
        ["client-test-fraction' = 1.0", "[0, 1)"],
    ),
    "momentum-one": (["--set", "train.momentum=1"], ["'train.momentum' = 1.0", "[0, 1)"]),
    "client-cpus-zero": (["--set", "simulation.client-cpus=0"], ["'simulation.client-cpus' = 0.0", "> 0"]),
    "client-gpus-negative": (
        ["--set", "simulation.client-gpus=-0.5"],
        ["'simulation.client-gpus' = -0.5", ">= 0"],
    ),
    "device-unknown": (
        ["--set", "train.device=gpu"],
        ["'train.device' = 'gpu'", "auto, cpu, cuda, cuda:N, mps"],
    ),
    "checkpoint-every-negative": (
        ["--set", "output.checkpoint-every=-2"],
        ["'output.checkpoint-every' = -2", ">= 0"],
    ),
    "max-removal-one": (["--set", "pruning.prunefl.max-removal=1"], ["max-removal' = 1.0", "[0, 1)"]),
    # robustness (docs/robustness.md)
    "aggregation-unknown": (
        ["--set", "federation.aggregation=krum"],
        ["'federation.aggregation' = 'krum'", "one of 'mean', 'clip', 'trimmed-mean', 'median'"],
    ),
    "trim-fraction-half": (
        ["--set", "federation.trim-fraction=0.5"],
        ["'federation.trim-fraction' = 0.5", "[0, 0.5)"],
    ),
    "clip-factor-zero": (["--set", "federation.clip-factor=0"], ["'federation.clip-factor' = 0.0", "> 0"]),
    "outlier-factor-negative": (
        ["--set", "federation.outlier-factor=-1"],
        ["'federation.outlier-factor' = -1.0", "> 0"],
    ),
    "statistic-factor-below-one": (
        ["--set", "federation.statistic-factor=0.5"],
        ["'federation.statistic-factor' = 0.5", ">= 1"],
    ),
    "eval-fraction-above-one": (
        ["--set", "evaluate.client-fraction=1.5"],
        ["client-fraction' = 1.5", "[0, 1]"],
    ),
    "output-name-with-slash": (["--set", "output.name=a/b"], ["'output.name' = 'a/b'", "plain folder name"]),
    # unknown keys and names
    "key-typo": (["--set", "train.lrr=0.1"], ["'train.lrr' = 0.1", "did you mean 'train.lr'"]),
    "key-unknown": (["--set", "bogus=1"], ["'bogus' = 1", "[tool.flwr.app.config]"]),
    "method-unknown": (["--set", "pruning.method=magic"], ["'pruning.method' = 'magic'", "one of"]),
    "model-unknown": (["--set", "model.name=gpt"], ["'model.name' = 'gpt'", "one of"]),
    "dataset-unknown": (["--set", "data.dataset=imagenet"], ["'data.dataset' = 'imagenet'", "one of"]),
    "override-without-value": (["--set", "train.lr"], ["'--set' = 'train.lr'", "key=value"]),
    # contradictions between sections
    "clients-per-round-above-clients": (
        ["--set", "federation.clients-per-round=12"],
        ["'federation.clients-per-round' = 12", "at most simulation.num-clients (10)"],
    ),
    "min-clients-above-clients": (
        ["--set", "federation.min-clients=11"],
        ["'federation.min-clients' = 11", "at most simulation.num-clients (10)"],
    ),
    "min-clients-above-per-round": (
        ["--set", "federation.clients-per-round=3", "--set", "federation.min-clients=4"],
        ["'federation.min-clients' = 4", "at most federation.clients-per-round (3)"],
    ),
    "ip-client-beyond-clients": (
        ["--set", "pruning.prunefl.ip-client=10"],
        ["'pruning.prunefl.ip-client' = 10", "below simulation.num-clients (10)"],
    ),
    "target-density-without-pruning": (
        ["--set", "pruning.method=none", "--set", "pruning.prunefl.max-density=0.2"],
        ["'pruning.prunefl.max-density' = 0.2", "pruning.method = 'none' ignores it"],
    ),
    "nothing-evaluated": (
        ["--set", "evaluate.server=false"],
        ["'evaluate.client-fraction' = 0.0", "otherwise no round is evaluated"],
    ),
    "evaluated-after-the-last-round": (
        [
            "--set",
            "evaluate.server=false",
            "--set",
            "evaluate.client-fraction=0.5",
            "--set",
            "evaluate.every=50",
        ],
        ["'evaluate.every' = 50", "at most federation.rounds (40)"],
    ),
    # missing and malformed files
    "profile-missing": (
        ["--set", "cost.profile={tmp}/nowhere.toml"],
        ["'cost.profile' = '{tmp}/nowhere.toml'", "does not exist"],
    ),
    "profile-malformed": (
        ["--set", "cost.profile={tmp}/malformed.toml"],
        ["'cost.profile'", "not valid TOML"],
    ),
    "profile-without-the-model": (
        ["--set", "cost.profile={tmp}/conv2-only.toml"],
        ["'cost.profile'", "has no timing for model 'digits-cnn'"],
    ),
    "data-dir-missing": (
        ["--set", "data.dir={tmp}/no-data"],
        ["'data.dir' = '{tmp}/no-data'", "an existing folder"],
    ),
    "preset-missing": (
        ["--config", "{tmp}/none.toml"],
        ["'--config' = '{tmp}/none.toml'", "an existing TOML file"],
    ),
    "preset-malformed": (["--config", "{tmp}/malformed.toml"], ["'--config'", "a valid TOML file"]),
    "resume-nothing": (["--resume", "{tmp}/no-run"], ["'--resume'", "a results folder of fedprune simulate"]),
    "resume-with-overrides": (["--resume", "{tmp}", "--set", "train.lr=0.1"], ["'--resume'", "alone"]),
    "resume-without-checkpoint": (["--resume", "{tmp}/run-without-checkpoint"], ["no checkpoint in"]),
}


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "malformed.toml").write_text(MALFORMED_PROFILE)
    (tmp_path / "conv2-only.toml").write_text(PROFILE_WITHOUT_MODEL)
    run = tmp_path / "run-without-checkpoint"
    run.mkdir()
    (run / "config.toml").write_text("output.checkpoint-every = 0\n")
    (run / "rounds.csv").write_text("round\n")
    return tmp_path


def check_single_error_line(output: str, fragments: list[str]) -> None:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in output


@pytest.mark.parametrize("case", list(CASES))
def test_an_invalid_configuration_gives_one_clear_line(case, scratch, monkeypatch):
    def started(*_args, **_kwargs):
        raise AssertionError(f"{case}: the simulation started")

    monkeypatch.setattr(simulations.runner, "simulate", started)
    args, fragments = CASES[case]
    result = CliRunner().invoke(app, ["simulate", *(a.replace("{tmp}", str(scratch)) for a in args)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""
    check_single_error_line(result.stderr, [f.replace("{tmp}", str(scratch)) for f in fragments])


@pytest.mark.parametrize("case", ["target-density-without-pruning", "profile-malformed"])
def test_the_real_command_stops_the_same_way(case, scratch):
    args, fragments = CASES[case]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.cli",
            "simulate",
            *(a.replace("{tmp}", str(scratch)) for a in args),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    check_single_error_line(result.stderr, [f.replace("{tmp}", str(scratch)) for f in fragments])


def test_a_setting_of_another_method_at_its_default_passes():
    """``flwr run`` hands the app every key of pyproject.toml, other methods' defaults included."""
    from common.config import AppConfig, default_flat

    flat = {**default_flat(), "pruning.method": "none"}
    assert "pruning.prunefl.max-density" in flat
    assert AppConfig.from_flat(flat).pruning.method == "none"
