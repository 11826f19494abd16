"""The benchmark: report figures from hand-made results folders, per-round files of real
(in-process) runs, and bench's reuse and resume of runs folders."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MetricRecord

from client.app import app as client_app
from common import keys
from common.config import AppConfig, load_config
from server.app import run_federation
from server.phases import ClientPhases, PhaseClock, round_phases, union_length
from server.progress import RunProgress
from server.results import config_toml, read_rounds
from server.validation import RejectedReply, client_phases
from simulations.bench import (
    Arm,
    BenchError,
    BenchPreset,
    method_config,
    plan_runs,
    read_overhead,
    run_bench,
)
from simulations.report import (
    PaperFigures,
    layout_of,
    load_run,
    modelled_times,
    paper_markdown,
    paper_rows,
    profiles_for,
    table_rows,
    write_report,
)
from tests.inprocess_grid import InProcessGrid

# -- report.py on a hand-made results folder --------------------------------------------------
# Raspberry-Pi-class profile, Conv-2 (PruneFL's published figures, common/profiles)
T0, COMP = 1.2492789765, {"conv1.weight": 0.0, "conv2.weight": 7.098850e-6, "fc1.weight": 1.927325e-7}
COMP["fc2.weight"] = 1.782308e-7
LINK = 1438432.0
STEPS = 5


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def hand_made_run(folder: Path, method: str, accuracies: list[str], summary: bool = True) -> Path:
    """A results folder of 3 rounds: rounds.csv, layers.csv, communication.csv, config.toml."""
    folder.mkdir(parents=True)
    config = load_config(
        None,
        [
            "data.dataset=femnist",
            "model.name=conv2",
            f"train.local-steps={STEPS}",
            "cost.profile=raspberry-pi-4-class",
            f"pruning.method={method}",
            "federation.rounds=3",
        ],
    )
    (folder / "config.toml").write_text(config_toml(config.to_flat()))
    write_csv(
        folder / "rounds.csv",
        ["round", "accuracy", "density", "bytes_down", "bytes_up", "modelled_round_time_s", "elapsed_s"],
        [
            [0, accuracies[0], 0.5, 1000, 2000, 12.5, 3.0],
            [1, accuracies[1], 0.5, 200000, 100000, 0, 4.0],
            [2, accuracies[2], 0.6, 300000, 150000, 0, 5.0],
            [3, accuracies[3], 0.6, 400000, 200000, 0, 6.0],
        ],
    )
    names = list(COMP)
    write_csv(
        folder / "layers.csv",
        ["round", *names],
        [
            [0, 500, 10000, 100000, 1000],
            [1, 500, 10000, 100000, 1000],
            [2, 600, 20000, 200000, 2000],
            [3, 600, 20000, 200000, 2000],
        ],
    )
    # per node and round: train bytes down + up (the slowest node sets the round's transfer)
    traffic = {
        1: {11: (100000, 50000), 12: (100000, 20000)},
        2: {11: (150000, 75000)},
        3: {12: (200000, 100000)},
    }
    rows = [[0, "setup", "down", 11, 0, 3000]]
    for server_round, nodes in traffic.items():
        for node, (down, up) in nodes.items():
            rows += [
                [server_round, "train", "down", node, 0, down],
                [server_round, "train", "up", node, 0, up],
            ]
    write_csv(
        folder / "communication.csv",
        ["round", "phase", "direction", "node_id", "partition_id", "bytes"],
        rows,
    )
    if summary:
        (folder / "summary.json").write_text('{"rounds": 3}')
    return folder


def compute(kept: dict[str, int]) -> float:
    return STEPS * (T0 + sum(COMP[name] * k for name, k in kept.items()))


def test_report_figures_match_a_hand_computed_run(tmp_path):
    run = load_run(hand_made_run(tmp_path / "prunefl", "prunefl", ["0.1", "0.5", "", "0.75"]))
    base = load_run(hand_made_run(tmp_path / "none", "none", ["0.1", "0.2", "0.3", "0.4"], summary=False))
    rows, profiles = table_rows([base, run], 0.7, only=["raspberry-pi-4-class"])
    assert profiles == ["raspberry-pi-4-class"]
    dense, pruned = rows
    small = {"conv1.weight": 500, "conv2.weight": 10000, "fc1.weight": 100000, "fc2.weight": 1000}
    large = {"conv1.weight": 600, "conv2.weight": 20000, "fc1.weight": 200000, "fc2.weight": 2000}
    # round r trains under the mask after round r - 1, plus its slowest node's bytes over the link
    expected = [
        12.5,  # round 0: the run's own profile, as recorded
        compute(small) + 150000 / LINK,
        compute(small) + 225000 / LINK,
        compute(large) + 300000 / LINK,
    ]
    assert pruned.modelled_to_target["raspberry-pi-4-class"] == pytest.approx(sum(expected), rel=1e-12)
    assert pruned.bytes_to_target == 3000 + 300000 + 450000 + 600000
    assert pruned.rounds_to_target == 3
    assert pruned.final_accuracy == 0.75 and pruned.final_density == 0.6
    assert (pruned.bytes_down, pruned.bytes_up) == (901000, 452000)
    assert pruned.complete and not dense.complete
    assert math.isnan(dense.bytes_to_target) and math.isnan(dense.modelled_to_target["raspberry-pi-4-class"])
    path = write_report(tmp_path / "report", [base, run], 0.7, "bench", "fedprune bench x", {"CPU": "test"})
    text = path.read_text()
    assert text.startswith("# bench\n\n**prunefl** reached 70% test accuracy in round 3")
    assert "while dense FedAvg did not within 3 rounds" in text
    assert "| none (incomplete) |" in text and "(modelled)" in text and "(measured)" in text
    assert {p.name for p in (tmp_path / "report" / "plots").iterdir()} == {
        "accuracy_per_round.png",
        "accuracy_vs_bytes.png",
        "accuracy_vs_modelled_time.png",
        "density_per_round.png",
        "bytes_per_round.png",
        "layer_density_none.png",
        "layer_density_prunefl.png",
    }
    with (tmp_path / "report" / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert float(table[1]["bytes_to_target"]) == 1353000


# -- phases ------------------------------------------------------------------------------------
def test_union_of_intervals_counts_overlaps_once():
    assert union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
    assert union_length([]) == 0


def test_phase_clock_times_nested_phases_exclusively():
    clock = PhaseClock()
    with clock.phase("decode"):
        with clock.phase("accounting"):
            pass
    total = sum(clock.seconds.values())
    assert set(clock.seconds) == {"decode", "accounting"} and total >= 0
    row = round_phases(
        1,
        10.0,
        {"decode": 1.0, "evaluate": 2.0},
        [
            ClientPhases(0.1, 0.1, 3.0, 0.2, 3.6, 100.0, 103.0),
            ClientPhases(0.0, 0.1, 2.0, 0.2, 2.5, 102.0, 104.0),
        ],
    )
    assert row.training_wall_s == 4.0 and row.client_train_s == 5.0 and row.server_s == 3.0


@pytest.mark.parametrize(
    ("metrics", "kind"),
    [
        ({keys.PHASE_TRAIN_S: 1.0}, "missing"),
        (
            {
                keys.PHASE_PREPARE_S: 0.0,
                keys.PHASE_DECODE_S: -1.0,
                keys.PHASE_TRAIN_S: 1.0,
                keys.PHASE_ENCODE_S: 0.0,
                keys.PHASE_TRAIN_START: 5.0,
                keys.PHASE_TRAIN_END: 6.0,
            },
            "bad-metric",
        ),
        (
            {
                keys.PHASE_PREPARE_S: 0.0,
                keys.PHASE_DECODE_S: 0.0,
                keys.PHASE_TRAIN_S: 1.0,
                keys.PHASE_ENCODE_S: 0.0,
                keys.PHASE_TRAIN_START: 5.0,
                keys.PHASE_TRAIN_END: 4.0,
            },
            "bad-metric",
        ),
    ],
)
def test_bad_phase_timings_are_rejected(metrics, kind):
    with pytest.raises(RejectedReply) as caught:
        client_phases(MetricRecord(metrics))
    assert caught.value.kind == kind


def test_a_reply_without_phase_timings_is_accepted():
    assert client_phases(MetricRecord({keys.TRAIN_LOSS: 1.0})) is None


# -- real runs, in process ---------------------------------------------------------------------
FAST = [
    "simulation.num-clients=3",
    "train.local-steps=2",
    "pruning.prunefl.initial-pruning=off",
    "pruning.prunefl.reconfig-interval=2",
    "output.checkpoint-every=1",
]


def in_process(config: AppConfig, checkpoint=None, progress=None):
    return run_federation(
        InProcessGrid(client_app, config.simulation.num_clients), config, checkpoint, progress
    )


class RoundsSeen(RunProgress):
    def __init__(self) -> None:
        self.rounds: list[int] = []

    def round_ended(self, row) -> None:  # type: ignore[no-untyped-def]
        self.rounds.append(row.round)


def test_layers_and_phases_files_of_a_run(tmp_path):
    config = load_config(None, [*FAST, "federation.rounds=3", f"output.dir={tmp_path}", "output.name=run"])
    seen = RoundsSeen()
    summary = in_process(config, progress=seen)
    folder = Path(summary.results_dir)
    assert seen.rounds == [0, 1, 2, 3]
    with (folder / "layers.csv").open() as f:
        layers = list(csv.DictReader(f))
    rounds = read_rounds(folder)
    names = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert [int(r["round"]) for r in layers] == [0, 1, 2, 3]
    assert list(layers[0]) == ["round", *names]
    with np.load(folder / "mask.npz", allow_pickle=False) as masks:
        sizes = {name: masks[name].size for name in names}
        assert [int(layers[-1][n]) for n in names] == [int(masks[n].sum()) for n in names]
    for layer_row, round_row in zip(layers, rounds, strict=True):
        kept = sum(int(layer_row[n]) for n in names)
        assert kept / sum(sizes.values()) == pytest.approx(float(round_row["density"]), abs=1e-6)
    assert [int(layers[0][n]) for n in names] == [sizes[n] for n in names]  # dense until round 2
    assert int(rounds[2]["reconfigured"]) == 1
    # the report's re-modelling under the run's own profile gives the server's own round times
    run = load_run(folder)
    layout = layout_of(run.config)
    own = next(p for p in profiles_for(run.config.model.name, layout) if p.name == run.config.cost.profile)
    recorded = np.array([float(r["modelled_round_time_s"]) for r in rounds])
    assert np.allclose(modelled_times(run, own, layout), recorded, rtol=1e-5)
    overhead = read_overhead(folder, "prunefl")
    assert overhead is not None and overhead.rounds == 3
    assert 0 < overhead.training_wall_s <= overhead.wall_s and overhead.client_train_s > 0
    with (folder / "phases.csv").open() as f:
        assert [int(r["clients"]) for r in csv.DictReader(f)] == [3, 3, 3]


def bench_preset(rounds: int) -> BenchPreset:
    overrides = {k: v for k, v in (item.split("=", 1) for item in FAST)}
    overrides = {k: int(v) if v.isdigit() else v for k, v in overrides.items()}
    return BenchPreset(name="tiny", overrides={**overrides, "federation.rounds": rounds}, target=0.5)


def test_bench_runs_reuses_and_resumes_its_runs(tmp_path):
    calls = []

    def runner(config, checkpoint, progress):
        calls.append((config.pruning.method, checkpoint.server_round if checkpoint else None))
        return in_process(config, checkpoint, progress)

    report = run_bench(bench_preset(2), ["prunefl"], [], tmp_path, runner, "fedprune bench tiny")
    assert calls == [("none", None), ("prunefl", None)]
    text = report.read_text()
    assert "## Framework overhead" in text and "fedprune bench tiny" in text
    none_rounds = read_rounds(tmp_path / "runs" / "none")
    prunefl_rounds = read_rounds(tmp_path / "runs" / "prunefl")
    # same data, partitions, initialisation and batches: identical until PruneFL's first reconfiguration
    assert none_rounds[1]["accuracy"] == prunefl_rounds[1]["accuracy"]

    calls.clear()
    run_bench(bench_preset(2), ["prunefl"], [], tmp_path, runner, "again")
    assert calls == []  # both finished runs reused

    (tmp_path / "runs" / "prunefl" / "summary.json").unlink()  # as if killed after its last checkpoint
    run_bench(bench_preset(2), ["prunefl"], [], tmp_path, runner, "again")
    assert calls == [("prunefl", 2)]
    assert (tmp_path / "runs" / "prunefl" / "summary.json").is_file()
    assert len(read_rounds(tmp_path / "runs" / "prunefl")) == 3

    with pytest.raises(BenchError, match="federation.rounds"):
        plan_runs({**bench_preset(3).overrides}, [Arm("none", "none")], tmp_path)


def test_other_methods_settings_are_dropped(tmp_path):
    shared = {"pruning.prunefl.reconfig-interval": 2, "pruning.magnitude.target-density": 0.2}
    none = method_config(shared, "none", tmp_path)
    magnitude = method_config(shared, "magnitude", tmp_path)
    assert "pruning.prunefl.reconfig-interval" not in none.to_flat()
    assert magnitude.to_flat()["pruning.magnitude.target-density"] == 0.2
    assert none.output.name == "none" and Path(none.output.dir) == tmp_path


def test_targets_are_judged_against_dense_fedavg(tmp_path):
    from simulations.bench import Targets, targets_markdown

    base = load_run(hand_made_run(tmp_path / "none", "none", ["0.1", "0.2", "0.3", "0.8"]))
    run = load_run(hand_made_run(tmp_path / "prunefl", "prunefl", ["0.1", "0.75", "", "0.9"]))
    rows, _ = table_rows([base, run], 0.7, only=["raspberry-pi-4-class"])
    preset = BenchPreset(name="t", target=0.7, targets=Targets(time_ratio=0.6, bytes_ratio=0.2))
    text = targets_markdown(preset, rows, [], "raspberry-pi-4-class")
    small = {"conv1.weight": 500, "conv2.weight": 10000, "fc1.weight": 100000, "fc2.weight": 1000}
    large = {"conv1.weight": 600, "conv2.weight": 20000, "fc1.weight": 200000, "fc2.weight": 2000}
    first = 12.5 + compute(small) + 150000 / LINK
    dense = first + compute(small) + 225000 / LINK + compute(large) + 300000 / LINK
    assert f"modelled time to 70% (raspberry-pi-4-class) **{first / dense:.3f}**" in text  # 0.576
    # bytes to 70%: through round 1 (3000 + 300000) against through round 3 (1353000): 0.224
    assert f"bytes to 70% **{303000 / 1353000:.3f}**" in text
    assert text.count("**met**") == 1 and text.count("**not met**") == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["no-such-bench"], "a bench preset file or one of"),
        (["quick", "--methods", "rethinking"], "methods that start from nothing"),
        (["quick", "--set", "train.lr=-1"], "'train.lr' = -1"),
    ],
)
def test_bench_refuses_bad_input_with_one_line(tmp_path, args, expected):
    from typer.testing import CliRunner

    from simulations.cli import app

    result = CliRunner().invoke(app, ["bench", *args, "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_baselines_take_the_final_density_of_the_method_they_follow(tmp_path):
    calls = []

    def runner(config, checkpoint, on_round):
        calls.append(config.pruning.method)
        return in_process(config, checkpoint, on_round)

    preset = dataclasses.replace(bench_preset(2), density_from="prunefl")
    report = run_bench(preset, ["snip", "prunefl"], [], tmp_path, runner, "fedprune bench tiny")
    assert calls == ["none", "prunefl", "snip"]  # the dependent runs after its source
    source = read_rounds(tmp_path / "runs" / "prunefl")
    snip = load_config(tmp_path / "runs" / "snip" / "config.toml")
    assert snip.method.target_density == pytest.approx(float(source[-1]["density"]), abs=1e-6)
    assert "pruned to `prunefl`'s final density" in report.read_text()
    calls.clear()
    run_bench(preset, ["snip", "prunefl"], [], tmp_path, runner, "again")
    assert calls == []  # all three reused, the dependent's density read again from its source
    with pytest.raises(BenchError, match="bench.density-from"):
        run_bench(preset, ["snip"], [], tmp_path / "other", runner, "x")
    # an explicit setting of the key wins over the dependency
    calls.clear()
    run_bench(preset, ["snip"], [("pruning.snip.target-density", 0.5)], tmp_path / "own", runner, "x")
    assert calls == ["none", "snip"]


def test_the_paper_table_gives_both_countings_of_initial_pruning(tmp_path):
    base = load_run(hand_made_run(tmp_path / "none", "none", ["0.1", "0.2", "0.75", "0.85"]))
    run = load_run(hand_made_run(tmp_path / "prunefl", "prunefl", ["0.1", "0.75", "", "0.85"]))
    paper = PaperFigures(
        reference="the paper",
        seconds={"none": {0.7: 1000.0, 0.8: 3000.0}, "prunefl": {0.7: 200.0, 0.8: 1000.0}},
        min_speedup={0.7: {"counted": 1.2, "not-counted": 100.0}},
    )
    rows = paper_rows([base, run], paper, "raspberry-pi-4-class")
    small = {"conv1.weight": 500, "conv2.weight": 10000, "fc1.weight": 100000, "fc2.weight": 1000}
    large = {"conv1.weight": 600, "conv2.weight": 20000, "fc1.weight": 200000, "fc2.weight": 2000}
    r1 = compute(small) + 150000 / LINK
    r2 = compute(small) + 225000 / LINK
    r3 = compute(large) + 300000 / LINK
    by = {(r.accuracy, r.label): r for r in rows}
    assert by[0.7, "prunefl"].seconds["counted"] == pytest.approx(12.5 + r1)  # round 0 is IP: 12.5 s
    assert by[0.7, "prunefl"].seconds["not-counted"] == pytest.approx(r1)
    assert by[0.7, "none"].seconds["counted"] == pytest.approx(12.5 + r1 + r2)
    assert by[0.8, "prunefl"].round == 3 and by[0.8, "prunefl"].bytes == 1353000
    assert by[0.8, "none"].seconds["not-counted"] == pytest.approx(r1 + r2 + r3)
    assert by[0.7, "prunefl"].paper_s == 200.0 and by[0.7, "prunefl"].final_density == 0.6
    text = paper_markdown(rows, paper, "raspberry-pi-4-class", {"none": "dense FedAvg"})
    counted = (12.5 + r1 + r2) / (12.5 + r1)
    plain = (r1 + r2) / r1
    assert f"| {counted:.2f}x |" in text and f"| {plain:.2f}x |" in text and "| 5.00x |" in text  # paper's
    assert (
        f"counted as round 0 (what a device spends): {counted:.2f}x (target: at least 1.2x): **met**" in text
    )
    assert f"{plain:.2f}x (target: at least 100x): **not met**, {100 / plain:.2f}x short" in text
    assert (
        "| dense FedAvg | 2 |" in text
        and "First to 70% in modelled time (IP counted): `prunefl`, `none`." in text
    )


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"seconds": {"none": {"70%": 1.0}}}, "paper.seconds.none"),
        ({"seconds": {"nope": {"0.7": 1.0}}}, "methods that start from nothing"),
        ({"min-speedup": {"0.7": {"sometimes": 2.0}}}, "counted"),
        ({"final-density": 2.0}, "paper.final-density"),
        ({"colour": "red"}, "reference, final-density"),
    ],
)
def test_bad_paper_tables_are_refused_naming_the_key(table, expected):
    from common.settings import ConfigError
    from simulations.bench import read_paper

    with pytest.raises(ConfigError, match=expected):
        read_paper(table)


def test_the_prunefl_femnist_preset_runs_the_papers_baselines_at_prunefls_density():
    from simulations.bench import load_bench_preset, shared_setting

    preset = load_bench_preset("prunefl-femnist")
    assert (
        set(preset.methods) == {"none", "prunefl", "snip", "magnitude"} and preset.density_from == "prunefl"
    )
    assert preset.paper is not None and preset.paper.accuracies == [0.7, 0.8]
    assert preset.profiles == ("raspberry-pi-4-class",)
    shared = shared_setting(preset)
    configs = {m: method_config(shared, m, Path("/tmp/x")) for m in preset.methods}
    # the paper's settings are untouched; only the round count is raised
    for config in configs.values():
        assert (config.train.lr, config.train.local_steps, config.train.batch_size) == (0.25, 5, 20)
        assert config.train.loss == "bce-one-hot" and config.train.lr_warmup_rounds == 0
        assert config.model.name == "conv2" and config.data.partitioning == "natural"
        assert config.federation.rounds >= 1000
    assert configs["prunefl"].method.reconfig_interval == 50
    schedule = configs["magnitude"].method.make_schedule(configs["magnitude"].federation.rounds)
    steps = [t for t in range(1, configs["magnitude"].federation.rounds + 1) if schedule.updates_at(t)]
    assert len(steps) == 20 and steps[-1] == configs["magnitude"].federation.rounds // 2


def test_the_paper_targets_are_for_the_method_the_paper_table_names():
    from simulations.bench import load_bench_preset, read_paper

    assert load_bench_preset("prunefl-femnist").paper.method == "prunefl"
    assert (
        read_paper({"method": "snip", "seconds": {"none": {"0.7": 1.0}, "magnitude": {"0.7": 2.0}}}).method
        == "snip"
    )


# -- arms: one method under settings of its own -------------------------------------------------
def test_an_arm_runs_its_method_with_its_own_settings_in_its_own_folder(tmp_path):
    calls = []

    def runner(config, checkpoint, progress):
        interval = getattr(config.method, "reconfig_interval", None)
        calls.append((config.output.name, config.pruning.method, interval))
        return in_process(config, checkpoint, progress)

    slow = Arm("prunefl-slow", "prunefl", {"pruning.prunefl.reconfig-interval": 5}, "reconfigures later")
    preset = dataclasses.replace(bench_preset(2), arms={slow.name: slow})
    report = run_bench(preset, ["prunefl", "prunefl-slow"], [], tmp_path, runner, "fedprune bench tiny")
    assert calls == [("none", "none", None), ("prunefl", "prunefl", 2), ("prunefl-slow", "prunefl", 5)]
    slow_config = load_config(tmp_path / "runs" / "prunefl-slow" / "config.toml")
    assert slow_config.method.reconfig_interval == 5
    text = report.read_text()
    assert (
        "Arm `prunefl-slow`: `prunefl` (reconfigures later), with `pruning.prunefl.reconfig-interval = 5`"
        in text
    )
    assert "| prunefl-slow |" in text
    # the same data, initialisation and batches: identical until the shared arm reconfigures (round 2)
    assert (
        read_rounds(tmp_path / "runs" / "prunefl")[1]["accuracy"]
        == read_rounds(tmp_path / "runs" / "prunefl-slow")[1]["accuracy"]
    )
    calls.clear()
    run_bench(preset, ["prunefl", "prunefl-slow"], [], tmp_path, runner, "again")
    assert calls == []  # every arm reused from its own folder


@pytest.mark.parametrize(
    ("arms", "expected"),
    [
        ({"fast": {"set": {}}}, "a table with a method"),
        ({"fast": {"method": "prunefl", "colour": "red"}}, "a table with a method"),
        ({"none": {"method": "prunefl"}}, "not dense FedAvg's nor another method's"),
        ({"snip": {"method": "prunefl"}}, "not dense FedAvg's nor another method's"),
        ({"a/b": {"method": "prunefl"}}, "it names a folder"),
        ({"fast": {"method": "rethinking"}}, "methods that start from nothing"),
        ({"fast": {"method": "prunefl", "set": {"output": {"dir": "x"}}}}, "outside pruning.prunefl."),
        (
            {"fast": {"method": "prunefl", "set": {"pruning": {"snip": {"target-density": 0.1}}}}},
            "arms.fast.set",
        ),
        ({"fast": {"method": "prunefl", "set": 3}}, "a table of settings"),
    ],
)
def test_bad_arms_are_refused_naming_the_key(arms, expected):
    from common.settings import ConfigError
    from simulations.bench import read_arms

    with pytest.raises(ConfigError, match=expected):
        read_arms(arms)


def test_an_unknown_entry_of_methods_names_the_arms_there_are(tmp_path):
    from common.settings import ConfigError

    preset = dataclasses.replace(bench_preset(2), arms={"fast": Arm("fast", "prunefl")})
    with pytest.raises(ConfigError, match=r"or the preset's arms \['fast'\]"):
        preset.resolve(["none", "slow"])
    with pytest.raises(ConfigError, match="each method once"):
        preset.resolve(["fast", "fast"])


def test_the_hetero_mnist_preset_runs_every_arm_on_one_fleet():
    from simulations.bench import arm_config, load_bench_preset, shared_setting

    preset = load_bench_preset("hetero-mnist")
    shared = shared_setting(preset)
    configs = {a.name: arm_config(shared, a, Path("/tmp/x")) for a in preset.resolve(preset.methods)}
    assert list(configs) == ["none", "prunefl", "prunefl-budget", "feddst"]
    assert [c.pruning.method for c in configs.values()] == ["none", "prunefl", "prunefl", "feddst"]
    for config in configs.values():
        config.check_simulation()
        assert (config.model.name, config.data.dataset, config.data.partitioning) == (
            "lenet5",
            "mnist",
            "dirichlet",
        )
        assert config.data.alpha == 0.3 and config.simulation.num_clients == 50
        assert config.federation.clients_per_round == 10
        assert config.simulation.profile_mix().names() == ["raspberry-pi-4-class", "jetson-orin-nano"]
    # only the budget arm has a budget; PruneFL without it plans for the server's one profile
    assert [c.fleet.round_budget for c in configs.values()] == [0.0, 0.0, 9.0, 0.0]
    assert preset.target == 0.97 and preset.profiles[0] == "fleet"


def test_the_fleet_column_sums_each_runs_own_recorded_round_times(tmp_path):
    from simulations.report import FLEET

    folder = hand_made_run(tmp_path / "prunefl", "prunefl", ["0.1", "0.75", "", "0.9"])
    plain = load_run(hand_made_run(tmp_path / "none", "none", ["0.1", "0.2", "0.3", "0.8"]))
    rows, names = table_rows([plain], 0.7, only=[FLEET, "raspberry-pi-4-class"])
    assert names == ["raspberry-pi-4-class"]  # a one-device run has no fleet column
    config = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(
        config.replace('profiles = ""', 'profiles = "raspberry-pi-4-class:0.5,jetson-orin-nano:0.5"')
    )
    with (folder / "rounds.csv").open(newline="") as f:
        recorded = list(csv.DictReader(f))
    for row, seconds in zip(recorded, ["12.5", "20", "30", "40"], strict=True):
        row["modelled_round_time_s"] = seconds  # the stragglers' times the server recorded
    write_csv(folder / "rounds.csv", list(recorded[0]), [list(r.values()) for r in recorded])
    fleet = load_run(folder)
    rows, names = table_rows([plain, fleet], 0.7, only=[FLEET, "raspberry-pi-4-class"])
    assert names == [FLEET, "raspberry-pi-4-class"]
    assert rows[1].modelled_to_target[FLEET] == pytest.approx(12.5 + 20)  # 70% in round 1
    assert rows[1].modelled_total[FLEET] == pytest.approx(12.5 + 20 + 30 + 40)
    assert rows[0].modelled_to_target[FLEET] == pytest.approx(12.5)  # its own record: 12.5, 0, 0, 0
    # the profile columns still re-model each run as one device type
    assert rows[1].modelled_to_target["raspberry-pi-4-class"] != rows[1].modelled_to_target[FLEET]
    text = write_report(tmp_path / "report", [plain, fleet], 0.7, "t", "cmd", {}, profiles_only=[FLEET])
    assert (tmp_path / "report" / "plots" / "accuracy_vs_modelled_time.png").is_file()
    assert "time to 70%, fleet (modelled)" in text.read_text()


def test_a_run_from_before_a_setting_existed_is_reused_while_the_setting_is_at_its_default(tmp_path):
    from simulations.bench import saved_config_difference

    shared = bench_preset(2).overrides
    config = method_config(shared, "prunefl", tmp_path)
    older = {k: v for k, v in config.to_flat().items() if k != "federation.server-threads"}
    (tmp_path / "config.toml").write_text(config_toml(older))
    assert saved_config_difference(tmp_path, config) is None
    changed = method_config({**shared, "federation.server-threads": 2}, "prunefl", tmp_path)
    assert saved_config_difference(tmp_path, changed) == "federation.server-threads = None there, 2 now"
    other = method_config({**shared, "train.lr": 0.2}, "prunefl", tmp_path)
    assert "train.lr" in str(saved_config_difference(tmp_path, other))


def test_a_run_moved_with_its_profile_file_is_still_a_run_of_that_profile(tmp_path):
    """A profile file is known by its name and contents, not its path: a claim's committed
    runs name the checkout they ran in, and are read on another clone."""
    from server.app import config_difference

    profile = (Path(__file__).parents[1] / "common" / "profiles" / "x86-2core-sandbox.toml").read_text()
    there, here = tmp_path / "there" / "claims.toml", tmp_path / "here" / "claims.toml"
    for path in (there, here):
        path.parent.mkdir()
        path.write_text(profile)
    shared = bench_preset(2).overrides
    saved = method_config({**shared, "cost.profile": str(there)}, "prunefl", tmp_path).to_flat()
    config = method_config({**shared, "cost.profile": str(here)}, "prunefl", tmp_path)
    assert config_difference(saved, config) is None
    here.write_text(profile + "\n# measured again\n")
    assert "cost.profile" in str(config_difference(saved, config))
    there.unlink()  # the saved checkout is gone: the file name is what is left to go by
    assert config_difference(saved, config) is None
    other = method_config({**shared, "cost.profile": str(tmp_path / "here" / "x.toml")}, "prunefl", tmp_path)
    assert "cost.profile" in str(config_difference(saved, other))
    bundled = method_config(shared, "prunefl", tmp_path)
    assert "cost.profile" in str(config_difference(saved, bundled))


def test_the_server_threads_setting_holds_for_the_server_and_not_beyond(monkeypatch):
    """fedprune simulate runs the ServerApp with federation.server-threads torch threads (0: a
    client's), and the caller's own count is back afterwards."""
    import torch

    import simulations.runner as runner

    seen = []

    def fake_simulation(**kwargs):
        seen.append(torch.get_num_threads())

    monkeypatch.setattr(runner, "run_simulation", fake_simulation)
    before = torch.get_num_threads()
    for threads, expected in ((0, 1), (2, 2)):
        config = load_config(None, [f"federation.server-threads={threads}"])
        with pytest.raises(runner.SimulationError):
            runner.simulate(config)
        assert seen[-1] == expected and torch.get_num_threads() == before
