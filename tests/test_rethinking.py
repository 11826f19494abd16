"""Rethinking's regimes on a results folder written by hand, and the comparison runner."""

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from client.app import app as client_app
from common.config import AppConfig, read_preset
from common.flops import forward_macs, positions_for
from common.layout import ModelLayout
from common.models import build_model
from common.pruning import METHODS, MethodEnv
from common.pruning.rethinking import Rethinking, RethinkingSettings, sparse_he_normal
from common.settings import ConfigError
from server.app import run_federation
from server.results import ResultsWriter, config_toml
from simulations.compare import compare, format_table, method_configs, preset_method_keys
from tests.inprocess_grid import InProcessGrid

SHAPE = (1, 8, 8)
SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"

pytestmark = pytest.mark.usefixtures("one_thread")


def _env(rounds: int = 10) -> MethodEnv:
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, SHAPE))
    return MethodEnv(layout, rounds, 2, True, 0, "digits-cnn", 10, SHAPE, 32)


@pytest.fixture
def source(tmp_path) -> Path:
    """A results folder as a finished digits-cnn run with seed 5 leaves it: half of fc1 pruned."""
    env = _env()
    layout = env.layout
    model = build_model("digits-cnn", 10, SHAPE, seed=11)  # its "trained" weights
    floats, ints = layout.flatten(model.state_dict())
    mask = layout.full_mask()
    fc1 = next(t for t in layout.prunable if t.name == "fc1.weight")
    mask[fc1.offset : fc1.offset + fc1.size // 2] = False
    writer = ResultsWriter(tmp_path / "run")
    writer.write_model(layout, floats, ints, mask)
    flat = AppConfig.from_flat({"federation.seed": 5, "pruning.method": "magnitude"}).to_flat()
    (tmp_path / "run" / "config.toml").write_text(config_toml(flat))
    return tmp_path / "run"


def _method(source: Path, regime: str, rounds: int = 10) -> Rethinking:
    return Rethinking(RethinkingSettings(source=str(source), regime=regime), _env(rounds))


def test_each_regime_starts_from_the_right_weights(source):
    layout = _env().layout
    inherited = layout.flatten(build_model("digits-cnn", 10, SHAPE, seed=11).state_dict())[0]
    original = layout.flatten(build_model("digits-cnn", 10, SHAPE, seed=5).state_dict())[0]
    starts = {}
    for regime in ("finetune", "lottery", "random-reinit", "scratch-e"):
        result = _method(source, regime).initial_mask(original, layout.full_mask(), None)
        assert layout.density(result.mask) == pytest.approx(1 - 0.5 * 32768 / layout.num_prunable)
        assert np.all(result.floats[~result.mask] == 0)
        starts[regime] = result.floats
    kept = starts["finetune"] != 0
    np.testing.assert_array_equal(starts["finetune"][kept], inherited[kept])
    mask = _method(source, "lottery").source.mask
    np.testing.assert_array_equal(starts["lottery"][mask], original[mask])  # the run's own init, seed 5
    assert not np.array_equal(starts["random-reinit"][mask], original[mask])


def test_scratch_init_is_he_normal_with_the_sparse_fan_in():
    layout = ModelLayout.from_model(nn.Linear(2000, 400, bias=False))
    mask = layout.full_mask()
    rows = mask.reshape(400, 2000)
    rows[:200, 500:] = False  # half the units keep 500 inputs, the others 2000
    drawn = sparse_he_normal(layout, mask, np.zeros(layout.num_floats, np.float32), 0).reshape(400, 2000)
    assert drawn[:200, :500].std() == pytest.approx(np.sqrt(2 / 500), rel=0.02)
    assert drawn[200:].std() == pytest.approx(np.sqrt(2 / 2000), rel=0.02)
    assert np.all(drawn[:200, 500:] == 0)


def test_scratch_b_scales_the_rounds_by_the_flops_ratio_with_a_cap(source):
    env = _env()
    method = _method(source, "scratch-b", rounds=10)
    positions = positions_for("digits-cnn", 10, SHAPE)
    ratio = forward_macs(env.layout, env.layout.full_mask(), positions) / forward_macs(
        env.layout, method.source.mask, positions
    )
    assert method.flops_ratio() == pytest.approx(ratio) and ratio > 1
    assert method.planned_rounds(10) == int(np.ceil(10 * min(2.0, ratio)))
    assert _method(source, "scratch-e").planned_rounds(10) == 10


def test_only_finetuning_needs_the_source_runs_weights(source):
    """A committed run keeps its mask, not its model: every regime but finetune starts from it."""
    (source / "model.npz").unlink()
    layout = _env().layout
    for regime in ("scratch-e", "scratch-b", "lottery", "random-reinit"):
        method = _method(source, regime)
        result = method.initial_mask(np.zeros(layout.num_floats, np.float32), layout.full_mask(), None)
        np.testing.assert_array_equal(result.mask, method.source.mask)
    with pytest.raises(ConfigError, match="model.npz"):
        _ = _method(source, "finetune").source


def test_a_source_that_does_not_fit_is_a_config_error(source, tmp_path):
    with pytest.raises(ConfigError, match="pruning.rethinking.source"):
        _ = _method(tmp_path / "nowhere", "finetune").source
    masks = dict(np.load(source / "mask.npz", allow_pickle=False))
    masks["fc1.weight"] = masks["fc1.weight"][:, :10]
    np.savez(source / "mask.npz", **masks)
    with pytest.raises(ConfigError, match="fc1.weight"):
        _ = _method(source, "finetune").source


def test_every_method_has_a_preset_for_mnist_and_lenet5():
    for name in METHODS:
        flat = {"pruning.method": "prunefl", **read_preset(SIMULATIONS / f"{name}.toml")}  # prunefl: default
        assert flat["pruning.method"] == name
        assert (flat["data.dataset"], flat["model.name"]) == ("mnist", "lenet5")
        config = AppConfig.from_flat(flat)
        assert (config.pruning.method, config.simulation.num_clients) == (name, 10)
    assert set(preset_method_keys("magnitude")) == {
        f"pruning.magnitude.{k}" for k in ("schedule", "end-round")
    }


def test_compare_runs_methods_on_identical_settings_and_prints_one_table(tmp_path):
    base = {
        "federation.rounds": 2,
        "train.local-steps": 1,
        "simulation.num-clients": 2,
        "evaluate.server": True,
    }
    with_presets = method_configs(base, ["magnitude"], tmp_path)[0]
    assert with_presets.method.schedule == "polynomial" and with_presets.federation.rounds == 2
    configs = method_configs(base, ["none", "magnitude"], tmp_path, use_presets=False)
    assert [c.pruning.method for c in configs] == ["none", "magnitude"]
    assert configs[0].to_flat()["data.dataset"] == configs[1].to_flat()["data.dataset"]

    def in_process(config):
        return run_federation(InProcessGrid(client_app, 2), config)

    rows = compare(configs, in_process)
    table = format_table(rows)
    assert table.splitlines()[0].split()[:2] == ["method", "final"] and "FLOPs/client step" in table
    none, magnitude = rows
    assert none.final_density == 1.0 and none.flops_per_step == none.dense_flops_per_step == 6 * 337_536 * 32
    assert magnitude.final_density == pytest.approx(0.1, abs=0.005)
    assert magnitude.flops_per_step < 0.2 * none.flops_per_step and magnitude.bytes_total < none.bytes_total


def test_the_server_starts_from_the_regimes_weights(source):
    """The weights ``initial_mask`` returns are the run's start, not only its mask (finetune: inherited)."""
    from server.global_model import GlobalModel
    from server.initial_pruning import run_initial_pruning

    layout = _env().layout
    inherited = layout.flatten(build_model("digits-cnn", 10, SHAPE, seed=11).state_dict())[0]
    fresh, ints = layout.flatten(build_model("digits-cnn", 10, SHAPE, seed=5).state_dict())
    model = GlobalModel(layout, fresh.copy(), ints, layout.full_mask())
    method = _method(source, "finetune")
    config = AppConfig.from_flat({"pruning.method": "rethinking"})
    report = run_initial_pruning(config, method, model, None, None, None, None, None)  # type: ignore[arg-type]
    assert report.where == "none"
    np.testing.assert_array_equal(model.mask, method.source.mask)
    np.testing.assert_array_equal(model.floats[model.mask], inherited[model.mask])
