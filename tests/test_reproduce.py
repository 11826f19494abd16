"""``fedprune reproduce``: the claim presets, the pass/miss judgement on hand-made results, and a
tiny real claim (two seeds, a rethinking arm started from another arm) run, reused and reported."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.app import app as client_app
from common.config import AppConfig
from common.settings import ConfigError
from server.app import run_federation
from simulations.cli import app
from simulations.report import ArmResult, ClaimSpec, Criterion, claim_markdown, judge, read_claim, verdict
from simulations.reproduce import (
    arm_config,
    claim_layers,
    claim_names,
    load_claim,
    parse_seeds,
    run_claim,
    seed_dir,
)
from tests.inprocess_grid import InProcessGrid

CLAIMS = ["droppruning-lenet5", "rethinking-l1", "tgf-half-flops", "gibbs-90"]


# -- the bundled presets ----------------------------------------------------------------------
def test_the_four_claims_are_bundled_and_valid():
    assert claim_names() == sorted(CLAIMS)
    for name in CLAIMS:
        claim = load_claim(name)
        assert len(claim.spec.seeds) >= 2 and claim.spec.criteria
        assert claim.spec.scaled and claim.spec.differs and claim.full
        shared, later = claim_layers(claim, [], full=False)
        for arm in claim.arms:
            config = arm_config(shared, arm, seed_dir(Path("/tmp/r"), 1), 1, later)
            assert config.pruning.method == arm.method and config.federation.seed == 1
            assert config.simulation.num_clients == 10 and config.data.partitioning == "iid"
            assert config.output.name == arm.label


def test_full_restores_the_papers_models():
    models = {}
    for name in CLAIMS:
        claim = load_claim(name)
        shared, later = claim_layers(claim, [], full=True)
        models[name] = {arm_config(shared, a, Path("/tmp/r"), 0, later).model.name for a in claim.arms}
    assert models == {
        "droppruning-lenet5": {"lenet5"},
        "rethinking-l1": {"vgg16"},
        "tgf-half-flops": {"resnet56"},
        "gibbs-90": {"resnet20"},
    }


def test_arms_keys_then_full_then_set_win_and_other_methods_keys_are_dropped():
    claim = load_claim("droppruning-lenet5")
    shared, later = claim_layers(
        claim, [("federation.rounds", 4), ("pruning.magnitude.begin-round", 2)], True
    )
    magnitude = arm_config(shared, claim.arm("magnitude"), Path("/tmp/r"), 0, later).to_flat()
    drop = arm_config(shared, claim.arm("droppruning"), Path("/tmp/r"), 0, later).to_flat()
    assert magnitude["federation.rounds"] == 4 and magnitude["pruning.magnitude.begin-round"] == 2
    assert magnitude["pruning.magnitude.target-density"] == pytest.approx(1 / 14.3, abs=1e-4)
    assert not any(k.startswith("pruning.magnitude.") for k in drop)


def test_a_rethinking_arm_starts_from_its_source_arm_in_the_same_seed():
    claim = load_claim("rethinking-l1")
    shared, later = claim_layers(claim, [], False)
    config = arm_config(shared, claim.arm("scratch-b"), seed_dir(Path("/tmp/r"), 3), 3, later)
    flat = config.to_flat()
    assert flat["pruning.rethinking.source"] == "/tmp/r/runs/seed-3/l1-filter"
    assert flat["pruning.rethinking.reinit-seed"] == 1003 and flat["pruning.rethinking.regime"] == "scratch-b"


CLAIM_TABLE = {"paper": "x", "criteria": [{"kind": "accuracy-gap", "subject": "a", "reference": "b"}]}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"criteria": []}, "claim.criteria"),
        ({"criteria": [{"kind": "speed", "subject": "a"}]}, "claim.criteria[0].kind"),
        (
            {"criteria": [{"kind": "accuracy-gap", "subject": "c", "reference": "b"}]},
            "claim.criteria[0].subject",
        ),
        (
            {"criteria": [{"kind": "accuracy-gap", "subject": "a", "reference": "a"}]},
            "claim.criteria[0].reference",
        ),
        ({"criteria": [{"kind": "flops-ratio", "subject": "a", "max": 2}]}, "claim.criteria[0].max"),
        ({"seeds": [0, 0]}, "claim.seeds"),
        ({"paper-accuracy": {"z": 90}}, "claim.paper-accuracy.z"),
        ({"step-time": ["z"]}, "claim.step-time"),
        ({"colour": "red"}, "'claim'"),
    ],
)
def test_bad_claim_tables_are_refused_naming_the_key(change, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        read_claim({**CLAIM_TABLE, **change}, ["a", "b"])


def test_an_arm_can_only_start_from_an_earlier_arm(tmp_path):
    preset = tmp_path / "bad.toml"
    preset.write_text(
        '[arms.b]\nmethod = "rethinking"\nsource = "a"\n[arms.a]\nmethod = "none"\n'
        '[claim]\npaper = "x"\n[[claim.criteria]]\nkind = "accuracy-gap"\nsubject = "a"\nreference = "b"\n'
    )
    with pytest.raises(ConfigError, match="arms.b.source"):
        load_claim(str(preset))


# -- the judgement, on hand-made results -------------------------------------------------------
def result(label: str, seed: int, accuracy: float, density: float = 1.0, flops: float = 1.0, complete=True):
    return ArmResult(label, seed, complete, 10, 10, accuracy, density, flops)


def results(**arms: list[float]) -> dict[str, dict[int, ArmResult]]:
    return {label: {s: result(label, s, a) for s, a in enumerate(values)} for label, values in arms.items()}


def spec(*criteria: Criterion) -> ClaimSpec:
    return ClaimSpec(paper="the paper's figure", seeds=(0, 1), criteria=criteria)


def test_within_half_a_point_passes_on_the_mean_even_when_one_seed_misses():
    within = Criterion("accuracy-gap", "drop", "none", min_gap=-0.5)
    # seed 0: -0.8 points, seed 1: +0.2 points; mean gap -0.3 points
    (j,) = judge(spec(within), results(drop=[0.980, 0.990], none=[0.988, 0.988]))
    assert j.value == pytest.approx(-0.3) and j.passed is True and j.margin == pytest.approx(0.2)
    assert j.per_seed == pytest.approx({0: -0.8, 1: 0.2})
    (j,) = judge(spec(within), results(drop=[0.975, 0.985], none=[0.988, 0.988]))
    assert j.value == pytest.approx(-0.8) and j.passed is False and j.margin == pytest.approx(-0.3)


def test_above_is_strict_and_at_least_is_not():
    above = Criterion("accuracy-gap", "a", "b", min_gap=0.0, strict=True)
    at_least = Criterion("accuracy-gap", "a", "b", min_gap=0.0)
    tied = results(a=[0.5, 0.6], b=[0.6, 0.5])
    assert [j.passed for j in judge(spec(above, at_least), tied)] == [False, True]


def test_flops_and_density_limits():
    table = {
        "tgf": {0: result("tgf", 0, 0.9, flops=0.48), 1: result("tgf", 1, 0.9, flops=0.53)},
        "drop": {0: result("drop", 0, 0.9, density=0.07), 1: result("drop", 1, 0.9, density=0.0699)},
    }
    flops, density = judge(
        spec(Criterion("flops-ratio", "tgf", max=0.5), Criterion("density", "drop", max=0.06993)), table
    )
    assert (
        flops.value == pytest.approx(0.505)
        and flops.passed is False
        and flops.margin == pytest.approx(-0.005)
    )
    assert density.value == pytest.approx(0.06995) and density.passed is False


def test_a_missing_or_running_seed_is_not_measurable_and_the_verdict_waits():
    within = Criterion("accuracy-gap", "a", "b", min_gap=-0.5)
    table = results(a=[0.9, 0.9], b=[0.9, 0.9])
    table["a"][1] = result("a", 1, 0.9, complete=False)
    (j,) = judge(spec(within), table)
    assert math.isnan(j.value) and j.passed is None
    assert verdict([j]) == "NOT MEASURABLE YET"
    passing, failing = judge(
        spec(within, Criterion("accuracy-gap", "a", "b", min_gap=1.0)), results(a=[0.9, 0.9], b=[0.9, 0.9])
    )
    assert (
        verdict([passing]) == "PASS"
        and verdict([passing, failing]) == "MISS"
        and verdict([j, failing]) == "MISS"
    )
    # a pass or a miss needs the mean of two seeds
    assert verdict([passing], seeds=1).startswith("NOT MEASURABLE")
    assert verdict([failing], seeds=1).startswith("NOT MEASURABLE")


def test_the_report_opens_with_the_answer():
    criterion = Criterion("accuracy-gap", "a", "b", min_gap=-0.5, says="a within 0.5 points of b")
    table = results(a=[0.90, 0.91], b=[0.92, 0.93])
    text = claim_markdown(
        "fedprune reproduce x",
        ClaimSpec(
            paper="the paper's figure",
            criteria=(criterion,),
            scaled="smaller model",
            differs="federated",
            paper_accuracy={"a": 93.41},
        ),
        {"a": "gibbs", "b": "magnitude"},
        table,
        judge(spec(criterion), table),
        [],
        [],
        [],
        command="fedprune reproduce x",
        environment={"fedprune commit": "abc"},
        scale_note="smaller model",
    )
    lines = text.splitlines()
    assert lines[2] == "**Scaled down:** smaller model" and lines[4] == "## Answer"
    assert "**Paper:** the paper's figure" in lines[6] and "**MISS**" in lines[7]
    assert "**-2.00 points**" in lines[8] and "short by 1.50 points" in lines[8]
    assert text.index("## Answer") < text.index("## Table") < text.index("## Plots") < text.index("## Set-up")
    assert "What differs from the paper" in text and "fedprune commit: abc" in text
    assert "| `a` (gibbs) | 0.9000 | 0.9100 | **0.9050** |" in text
    assert "`a` 93.41% (fedprune 90.50%)" in text  # the paper's unit beside fedprune's


# -- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["no-such-claim"], "a claim preset file or one of"),
        (["gibbs-90", "--seeds", "0,0"], "distinct integers"),
        (["gibbs-90", "--seeds", "a"], "distinct integers"),
        (["droppruning-lenet5", "--set", "train.lr=-1"], "'train.lr' = -1"),
        (["gibbs-90", "--report-only"], "it holds none"),  # no report of nothing over one there
    ],
)
def test_reproduce_refuses_bad_input_with_one_line(tmp_path, args, expected):
    outcome = CliRunner().invoke(app, ["reproduce", *args, "-o", str(tmp_path)])
    assert outcome.exit_code == 2
    assert expected in outcome.output and "Traceback" not in outcome.output
    assert not (tmp_path / "runs").exists()


def test_seeds_parse():
    assert parse_seeds("0,1,7") == (0, 1, 7)


# -- a tiny real claim ------------------------------------------------------------------------
TINY = """
[bench]
target = 0.5
[set]
simulation.num-clients = 3
federation.rounds = 2
train.local-steps = 2
output.checkpoint-every = 1
[arms.none]
method = "none"
[arms.magnitude]
method = "magnitude"
pruning.magnitude.target-density = 0.5
pruning.magnitude.schedule = "one-shot"
[arms.l1]
method = "l1-filter"
pruning.l1-filter.target-density = 0.5
[arms.scratch-b]
method = "rethinking"
source = "magnitude"
federation.rounds = 1
pruning.rethinking.regime = "scratch-b"
[claim]
paper = "magnitude pruning to half loses nothing"
seeds = [0, 1]
scaled = "digits, 3 clients, 2 rounds"
differs = "everything"
step-time = ["l1"]
[[claim.criteria]]
kind = "accuracy-gap"
subject = "magnitude"
reference = "none"
min-gap = -100.0
[[claim.criteria]]
kind = "density"
subject = "magnitude"
max = 0.6
"""


def test_a_tiny_claim_runs_two_seeds_reuses_its_runs_and_judges_the_mean(tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    calls = []

    def runner(config: AppConfig, checkpoint=None, progress=None):
        calls.append((config.output.name, config.federation.seed))
        return run_federation(
            InProcessGrid(client_app, config.simulation.num_clients), config, checkpoint, progress
        )

    claim = load_claim(str(preset))
    report = run_claim(claim, (0, 1), [], tmp_path / "out", runner, "fedprune reproduce tiny.toml")
    assert calls == [(a, s) for s in (0, 1) for a in ("none", "magnitude", "l1", "scratch-b")]
    text = report.read_text()
    assert "## Answer" in text and "**PASS**" in text and "fedprune reproduce tiny.toml" in text
    from common.provenance import git_commit

    # which commit ran which run, from the runs' own summaries (here: all of them this checkout)
    assert f"Runs' fedprune commits: {git_commit()} (seed 0 none, seed 0 magnitude" in text
    # the shrunk client model of the L1-filter run (half of every group's channels) is timed
    assert "Measured training step of `l1`'s final client model (seed 0, batch 32, one thread)" in text
    # scratch-B trains min(2, FLOPs ratio) x the configured round: 2 rounds
    rounds = (tmp_path / "out" / "runs" / "seed-1" / "scratch-b" / "rounds.csv").read_text().splitlines()
    assert len(rounds) == 1 + 3
    with (tmp_path / "out" / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    means = {r["arm"]: r for r in rows if r["seed"] == "mean"}
    per_seed = [r for r in rows if r["arm"] == "magnitude" and r["seed"] != "mean"]
    assert float(means["magnitude"]["final_accuracy"]) == pytest.approx(
        sum(float(r["final_accuracy"]) for r in per_seed) / 2
    )
    assert float(means["magnitude"]["final_density"]) == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "out" / "plots" / "final_accuracy.png").is_file()

    calls.clear()
    run_claim(claim, (0, 1), [], tmp_path / "out", runner, "again")
    assert calls == []  # every run reused

    # what git keeps of the runs (.gitignore: no checkpoints, model files or run plots), on
    # another machine: reused, scratch-b's source read from its mask, the shrunk model timed
    committed = tmp_path / "clone"
    shutil.copytree(
        tmp_path / "out", committed, ignore=shutil.ignore_patterns("checkpoints", "model.npz", "*.png")
    )
    text = run_claim(claim, (0, 1), [], committed, runner, "on a clone").read_text()
    assert calls == [] and "Measured training step of `l1`'s final client model" in text

    # --report-only: the report of the runs there, with a seed that has not run, nothing run
    from simulations.reproduce import report_claim

    partial = report_claim(claim, (0, 1, 2), tmp_path / "out", "look", into=tmp_path / "look")
    text = partial.read_text()
    assert (
        "**NOT MEASURABLE YET**" in text and "`none` seed 2" in text and "not every seed has finished" in text
    )
    assert calls == [] and not (tmp_path / "out" / "runs" / "seed-2").exists()


def test_arms_selects_some_arms_in_the_claims_order_with_their_sources():
    from simulations.reproduce import only_arms

    gibbs = only_arms(load_claim("gibbs-90"), "l1-filter,gibbs-filter")
    assert [a.label for a in gibbs.arms] == ["gibbs-filter", "l1-filter"]
    with pytest.raises(ConfigError, match="l1-filter"):
        only_arms(load_claim("rethinking-l1"), "scratch-b")
    with pytest.raises(ConfigError, match="--arms"):
        only_arms(load_claim("rethinking-l1"), "no-such-arm")


def test_gibbs_90s_kernel_baseline_is_kernel_magnitude_pruning_at_every_step():
    """beta 1e4 with coupling 1: every sampled mask is the deterministic kernel mask (10% of the
    kernels of largest mean w^2, all-or-nothing), i.e. kernel-wise magnitude pruning."""
    import torch

    from common.pruning.gibbs_sampling import deterministic_mask, sample_mask

    flat = load_claim("gibbs-90").arm("magnitude-kernel").overrides
    beta, coupling = flat["pruning.gibbs.beta-end"], flat["pruning.gibbs.kernel-coupling"]
    assert flat["pruning.gibbs.beta-start"] == beta and flat["pruning.gibbs.mode"] == "kernel"
    weight = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        sampled = sample_mask(weight, 9, 0.1, beta, coupling, True, torch.Generator().manual_seed(seed))
        assert torch.equal(sampled.bool(), deterministic_mask(weight, 9, 0.1))
