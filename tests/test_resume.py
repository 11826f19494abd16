"""Checkpoints and resume: a killed run continues to the same final model, bit for bit."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from client.app import app as client_app
from common.config import AppConfig, load_config
from common.settings import ConfigError
from server.app import RunError, check_fits, run_federation
from server.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    CheckpointPlanner,
    CheckpointSchedule,
    checkpoint_rounds,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from server.results import read_rounds
from tests.inprocess_grid import InProcessGrid

FAST = ["train.local-steps=2", "output.checkpoint-every=2"]
NO_IP = "pruning.prunefl.initial-pruning=off"  # round 0 is not what resuming is about; it is slow


class Killed(RuntimeError):
    """Stands for the server process dying."""


class KilledGrid(InProcessGrid):
    """Dies when asked to send the first message of round ``kill_at``."""

    def __init__(self, *args, kill_at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kill_at = kill_at

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.group_id == str(self.kill_at):
            raise Killed(f"killed in round {self.kill_at}")
        return super().send_and_receive(messages, timeout=timeout)


def config_for(folder: Path, overrides: list[str], num_nodes: int = 3) -> AppConfig:
    return load_config(
        None,
        [f"output.dir={folder}", "output.name=run", f"simulation.num-clients={num_nodes}", *FAST, *overrides],
    )


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def assert_same_arrays(a: Path, b: Path) -> None:
    first, second = arrays(a), arrays(b)
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name]), name


@pytest.mark.parametrize(
    ("overrides", "kill_at", "restart_round"),
    [
        # every client every round: clients accumulate importance between reconfigurations
        # (rounds 2 and 4), so the checkpoint due at round 3 waits for round 4
        (
            [
                "federation.rounds=5",
                "pruning.prunefl.reconfig-interval=2",
                "output.checkpoint-every=3",
                NO_IP,
            ],
            5,
            4,
        ),
        # 2 of 3 clients per round: the server's importance sum is non-zero at round 4
        (
            [
                "federation.rounds=5",
                "federation.clients-per-round=2",
                "pruning.prunefl.reconfig-interval=3",
                NO_IP,
            ],
            5,
            4,
        ),
        # dense FedAvg with federated evaluation only, bfloat16 values on the wire
        (
            [
                "federation.rounds=4",
                "pruning.method=none",
                "evaluate.server=false",
                "evaluate.client-fraction=0.5",
                "wire.values=bfloat16",
            ],
            4,
            2,
        ),
        # methods with state of their own or client-side randomness: TGF's averaged gates
        # (restart inside the gate search), Gibbs' annealed beta and client-sampled masks,
        # DropPruning's stochastic drop-out and drop-in
        (
            [
                "federation.rounds=4",
                "pruning.method=tgf",
                "pruning.tgf.search-fraction=0.75",
                "output.checkpoint-every=2",
            ],
            4,
            2,
        ),
        (["federation.rounds=4", "pruning.method=gibbs", "output.checkpoint-every=2"], 4, 2),
        (["federation.rounds=4", "pruning.method=droppruning", "output.checkpoint-every=2"], 4, 2),
    ],
    ids=["prunefl-full", "prunefl-sampled", "dense", "tgf", "gibbs", "droppruning"],
)
def test_a_killed_run_resumes_to_the_same_final_model(tmp_path, overrides, kill_at, restart_round):
    reference = config_for(tmp_path / "reference", overrides)
    run_federation(InProcessGrid(client_app, 3), reference)
    config = config_for(tmp_path / "killed", overrides)
    with pytest.raises(Killed):
        run_federation(KilledGrid(client_app, 3, kill_at=kill_at), config)

    folder = tmp_path / "killed" / "run"
    checkpoint = latest_checkpoint(folder)
    assert checkpoint.server_round == restart_round
    assert checkpoint_rounds(folder) == [restart_round]  # older ones were removed
    # a fresh set of nodes, as after a restart: every node has lost its mask and sums
    summary = run_federation(InProcessGrid(client_app, 3), config, resume=checkpoint)

    ref_folder = tmp_path / "reference" / "run"
    assert_same_arrays(ref_folder / "model.npz", folder / "model.npz")
    assert_same_arrays(ref_folder / "mask.npz", folder / "mask.npz")
    ref_rows, rows = read_rounds(ref_folder), read_rounds(folder)
    assert [r["round"] for r in rows] == [str(r) for r in range(reference.federation.rounds + 1)]
    same = (
        "accuracy",
        "loss",
        "density",
        "clients",
        "train_loss",
        "reconfigured",
        "values_down",
        "values_up",
    )
    for ref_row, row in zip(ref_rows, rows, strict=True):
        assert {k: row[k] for k in same} == {k: ref_row[k] for k in same}
    # rows up to the checkpoint are the ones written before the kill (only wall times differ)
    timeless = [{k: v for k, v in r.items() if k not in ("wall_time_s", "elapsed_s")} for r in rows]
    ref_timeless = [{k: v for k, v in r.items() if k not in ("wall_time_s", "elapsed_s")} for r in ref_rows]
    assert timeless[: restart_round + 1] == ref_timeless[: restart_round + 1]
    if float(rows[restart_round]["density"]) < 1:
        # the restarted nodes hold no mask: the first round after the restart sends it to all
        assert int(rows[restart_round + 1]["mask_down"]) > 0
    ref_summary = json.loads((ref_folder / "summary.json").read_text())
    assert (summary.final_density, summary.final_accuracy) == (
        ref_summary["final_density"],
        ref_summary["final_accuracy"],
    )
    with (folder / "communication.csv").open() as f:
        rounds_logged = {int(r["round"]) for r in csv.DictReader(f)}
    assert rounds_logged == set(range(reference.federation.rounds + 1))


def test_resuming_a_finished_run_only_rewrites_its_outputs(tmp_path):
    config = config_for(tmp_path, ["federation.rounds=2", "pruning.method=none"])
    run_federation(InProcessGrid(client_app, 3), config)
    folder = tmp_path / "run"
    model = arrays(folder / "model.npz")
    (folder / "model.npz").unlink()  # as if killed right after the final checkpoint
    checkpoint = latest_checkpoint(folder)
    assert checkpoint.server_round == 2
    grid = InProcessGrid(client_app, 3)
    run_federation(grid, config, resume=checkpoint)
    assert {m.metadata.message_type for m in grid.sent} == {"query.describe"}  # no training
    resumed = arrays(folder / "model.npz")
    assert all(np.array_equal(model[k], resumed[k]) for k in model)
    assert len(read_rounds(folder)) == 3


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    config = config_for(tmp_path, ["federation.rounds=2", "pruning.method=none"])
    run_federation(InProcessGrid(client_app, 3), config)
    checkpoint = latest_checkpoint(tmp_path / "run")
    other = config_for(tmp_path, ["federation.rounds=2", "pruning.method=none", "train.lr=0.1"])
    layout_config = config_for(tmp_path, ["federation.rounds=2", "pruning.method=none"])
    from server.app import preflight

    layout = preflight(layout_config)
    check_fits(checkpoint, layout_config, layout)
    with pytest.raises(RunError, match="train.lr = 0.05"):
        check_fits(checkpoint, other, layout)


def test_a_checkpoint_from_before_a_setting_existed_fits_while_the_setting_is_at_its_default(tmp_path):
    from server.app import preflight

    config = config_for(tmp_path, ["federation.rounds=2", "pruning.method=none"])
    run_federation(InProcessGrid(client_app, 3), config)
    checkpoint = latest_checkpoint(tmp_path / "run")
    saved = checkpoint.state["config"]
    del saved["federation.server-threads"]  # as written by a fedprune without that setting
    layout = preflight(config)
    check_fits(checkpoint, config, layout)
    changed = config_for(
        tmp_path, ["federation.rounds=2", "pruning.method=none", "federation.server-threads=2"]
    )
    with pytest.raises(RunError, match="federation.server-threads = None there, 2 now"):
        check_fits(checkpoint, changed, layout)
    # when the server evaluates changes no figure: a run may resume with the other setting
    check_fits(
        checkpoint,
        config_for(tmp_path, ["federation.rounds=2", "pruning.method=none", "evaluate.overlap=false"]),
        layout,
    )


DENSE = [
    "federation.rounds=4",
    "pruning.method=none",
    "evaluate.server=false",
    "evaluate.client-fraction=0.5",
]


def test_output_resume_continues_the_named_run_to_the_same_final_model(tmp_path):
    """``flwr run`` with ``output.resume``: the run config names the folder, nothing else changes.

    The second run is started as an operator would start it again: the same run
    configuration (here even with another ``output.dir`` and ``output.name``) plus
    ``output.resume``; it writes into the resumed folder, not into a new one.
    """
    reference = config_for(tmp_path / "reference", DENSE)
    run_federation(InProcessGrid(client_app, 3), reference)
    config = config_for(tmp_path / "killed", DENSE)
    with pytest.raises(Killed):
        run_federation(KilledGrid(client_app, 3, kill_at=4), config)
    folder = tmp_path / "killed" / "run"
    again = config_for(tmp_path / "elsewhere", [*DENSE, f"output.resume={folder}"])
    summary = run_federation(InProcessGrid(client_app, 3), again)

    assert summary.results_dir == str(folder) and not (tmp_path / "elsewhere").exists()
    ref_folder = tmp_path / "reference" / "run"
    assert_same_arrays(ref_folder / "model.npz", folder / "model.npz")
    assert_same_arrays(ref_folder / "mask.npz", folder / "mask.npz")
    assert [r["round"] for r in read_rounds(folder)] == ["0", "1", "2", "3", "4"]
    assert [r["loss"] for r in read_rounds(folder)] == [r["loss"] for r in read_rounds(ref_folder)]


def test_output_resume_of_a_folder_that_is_no_results_folder_is_a_config_error(tmp_path):
    config = config_for(tmp_path, [*DENSE, f"output.resume={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="output.resume"):
        run_federation(InProcessGrid(client_app, 3), config)


def test_output_resume_with_another_configuration_is_refused(tmp_path):
    config = config_for(tmp_path, ["federation.rounds=2", "pruning.method=none"])
    run_federation(InProcessGrid(client_app, 3), config)
    other = config_for(
        tmp_path,
        ["federation.rounds=2", "pruning.method=none", "train.lr=0.1", f"output.resume={tmp_path}/run"],
    )
    with pytest.raises(RunError, match="train.lr"):
        run_federation(InProcessGrid(client_app, 3), other)


def test_output_resume_must_be_a_plain_path():
    for bad in (" results/run", "results/run/.."):
        with pytest.raises(ConfigError, match="output.resume"):
            AppConfig.from_flat({"output.resume": bad})
    assert load_config(None, []).output.resume == ""


# -- the checkpoint files ----------------------------------------------------------------------------
def test_state_round_trips_through_arrays_and_json(tmp_path):
    state = {
        "model": {"floats": np.arange(5, dtype=np.float32), "mask": np.array([True, False])},
        "rows": [{"round": 0, "accuracy": math.nan, "loss": 1.5}],
        "scalars": {"inf": math.inf, "text": "x", "flag": True, "none": None, "n": np.int64(3)},
    }
    write_checkpoint(tmp_path, 4, state)
    back = read_checkpoint(tmp_path / CHECKPOINT_DIR / "round-000004").state
    assert np.array_equal(back["model"]["floats"], state["model"]["floats"])
    assert back["model"]["floats"].dtype == np.float32 and back["model"]["mask"].dtype == bool
    assert math.isnan(back["rows"][0]["accuracy"]) and back["rows"][0]["loss"] == 1.5
    assert back["scalars"] == {"inf": math.inf, "text": "x", "flag": True, "none": None, "n": 3}


def test_only_complete_checkpoints_count_and_older_ones_go(tmp_path):
    write_checkpoint(tmp_path, 2, {"x": np.zeros(3)})
    write_checkpoint(tmp_path, 4, {"x": np.ones(3)})
    assert checkpoint_rounds(tmp_path) == [4]
    # a write killed before its rename leaves a temporary folder, which is ignored
    partial = tmp_path / CHECKPOINT_DIR / ".tmp-round-000006-123"
    partial.mkdir()
    (partial / "arrays.npz").write_bytes(b"PK\x03\x04 truncated")
    assert latest_checkpoint(tmp_path).server_round == 4
    assert np.array_equal(latest_checkpoint(tmp_path).state["x"], np.ones(3))


def test_nothing_that_needs_pickling_is_written_or_read(tmp_path):
    with pytest.raises(ValueError, match="dtype object"):
        write_checkpoint(tmp_path, 1, {"bad": np.array([{"a": 1}], dtype=object)})
    folder = tmp_path / CHECKPOINT_DIR / "round-000002"
    folder.mkdir(parents=True)
    # an object array inside the .npz is pickled data: reading it must fail, not unpickle
    np.savez(folder / "arrays.npz", evil=np.array([{"a": 1}], dtype=object))
    (folder / "state.json").write_text('{"format": 1, "round": 2, "state": {"x": {"__array__": "evil"}}}')
    with pytest.raises(CheckpointError, match="cannot be read"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("every", "last", "holding", "expected"),
    [
        (2, 7, set(), [0, 2, 4, 6, 7]),
        (0, 7, set(), []),
        # clients hold importance after rounds 1, 2, 4, 5: checkpoints wait for 3 and 6
        (2, 7, {1, 2, 4, 5}, [0, 3, 6, 7]),
        (3, 7, {1, 2, 3, 4, 5, 6, 7}, [0, 7]),
    ],
)
def test_checkpoint_schedule(every, last, holding, expected):
    planner = CheckpointPlanner(CheckpointSchedule(every, last))
    assert [r for r in range(last + 1) if planner.due(r, r in holding)] == expected
