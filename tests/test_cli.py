"""The fedprune command: clear errors for a user's mistakes, no traceback."""

import subprocess
import sys

import pytest


def fedprune(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.lr=-0.1"], "'train.lr' = -0.1"),
        (["--set", "pruning.prunefl.max-density=2"], "density in (0, 1]"),
        (["--set", "pruning.prunefl.reconfig-interval=0"], "reconfig-interval"),
        (["--set", "pruning.method=magnitudes"], "pruning.method"),
        (["--set", "model.name=gpt"], "model.name"),
        (["--set", "data.dataset=imagenet"], "data.dataset"),
        (["--set", "train.lr"], "key=value"),
        (["--set", "cost.profile=nowhere"], "cost.profile"),
        (["--config", "no-such-preset.toml"], "an existing TOML file"),
    ],
)
def test_bad_input_stops_before_any_client_with_one_clear_line(args, expected):
    result = fedprune("simulate", *args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_simulation_through_ray(tmp_path):
    """A real run on Flower's simulation engine with 3 clients on Ray."""
    result = fedprune(
        "simulate",
        "--set",
        "simulation.num-clients=3",
        "--set",
        "federation.rounds=2",
        "--set",
        "train.local-steps=2",
        "--set",
        "pruning.prunefl.ip-max-rounds=20",
        "--set",
        "pruning.prunefl.ip-reconfig-interval=5",
        "--set",
        f"output.dir={tmp_path}",
        "--set",
        "output.name=ray",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    outcome = "fedprune: prunefl on digits, 2 rounds: final accuracy"
    assert lines[-1].startswith(outcome)
    assert sum(line.startswith(outcome) for line in lines) == 1  # stated once
    rows = (tmp_path / "ray" / "rounds.csv").read_text().splitlines()
    assert len(rows) == 4  # header, rounds 0-2
    # stdout is a pipe: plain lines, one per round under the table's header; no Flower log at all
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["round", "accuracy"])
    assert [line.split()[0] for line in lines[header + 1 : -1]] == ["0", "1", "2"]
    assert "\x1b[" not in result.stdout + result.stderr
    for flower in ("DEPRECATED FEATURE", "fraction_evaluate", "[ROUND", "Final results", "INFO"):
        assert flower not in result.stdout + result.stderr
