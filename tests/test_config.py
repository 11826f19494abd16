"""Configuration: defaults, pyproject, overrides and clear errors for bad values."""

import tomllib
from pathlib import Path

import pytest

from common.config import AppConfig, default_flat, load_config, parse_override
from common.settings import ConfigError, flatten

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_default():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    assert declared == default_flat()


def test_defaults_are_the_embedded_default_run():
    config = load_config()
    assert config.data.dataset == "digits"
    assert config.pruning.method == "prunefl"
    assert config.simulation.num_clients == 10


def test_overrides_are_read_as_toml_values():
    assert parse_override("train.lr=0.5") == ("train.lr", 0.5)
    assert parse_override("evaluate.server=false") == ("evaluate.server", False)
    assert parse_override("data.dataset=digits") == ("data.dataset", "digits")
    config = load_config(None, ["train.lr=0.5", "pruning.prunefl.reconfig-interval=3"])
    assert config.train.lr == 0.5 and config.method.reconfig_interval == 3


def test_preset_files_override_only_what_they_set(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("[federation]\nrounds = 3\n[pruning.prunefl]\nmax-removal = 0.2\n")
    config = load_config(preset, ["federation.seed=4"])
    assert (config.federation.rounds, config.federation.seed, config.method.max_removal) == (3, 4, 0.2)
    assert config.train.lr == AppConfig.from_flat({}).train.lr


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("pruning.prunefl.max-density=0", "pruning.prunefl.max-density", "(0, 1]"),
        ("pruning.prunefl.max-density=1.5", "pruning.prunefl.max-density", "(0, 1]"),
        ("pruning.prunefl.reconfig-interval=0", "pruning.prunefl.reconfig-interval", ">= 1"),
        ("train.lr=-0.1", "train.lr", "> 0"),
        ("pruning.method=magic", "pruning.method", "one of"),
        ("model.name=resnet-9000", "model.name", "one of"),
        ("data.dataset=imagenet-22k", "data.dataset", "one of"),
        ("train.lr=fast", "train.lr", "a number"),
        ("federation.rounds=2.5", "federation.rounds", "an integer"),
        ("train.loss=mse", "train.loss", "one of"),
        ("train.lrr=0.1", "train.lrr", "did you mean 'train.lr'"),
        ("bogus=1", "bogus", "unknown"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert error.value.key == key
    assert allowed in str(error.value)
    assert repr(error.value.value) in str(error.value)


def test_simulation_checks():
    with pytest.raises(ConfigError, match="simulation.num-clients"):
        load_config(None, ["federation.min-clients=5", "simulation.num-clients=3"]).check_simulation()
    with pytest.raises(ConfigError, match="ip-client"):
        load_config(None, ["pruning.prunefl.ip-client=10"]).check_simulation()


def test_choosing_another_method_sets_aside_the_presets_settings_of_its_method(tmp_path):
    preset = tmp_path / "preset.toml"
    preset.write_text("[pruning.prunefl]\nreconfig-interval = 50\n[pruning.gibbs]\nbeta-end = 100.0\n")
    with pytest.raises(ConfigError) as caught:  # the preset alone contradicts itself (gibbs unused)
        load_config(preset)
    assert caught.value.key == "pruning.gibbs.beta-end"
    dense = load_config(preset, ["pruning.method=none"])
    assert dense.pruning.method == "none"
    gibbs = load_config(preset, ["pruning.method=gibbs"])
    assert gibbs.pruning.method == "gibbs"
    assert gibbs.to_flat()["pruning.gibbs.beta-end"] == 100.0
    with pytest.raises(ConfigError) as caught:  # what the user sets is never dropped
        load_config(preset, ["pruning.method=none", "pruning.prunefl.reconfig-interval=20"])
    assert caught.value.key == "pruning.prunefl.reconfig-interval"


def test_lr_warm_up_rises_linearly_over_the_first_rounds_then_follows_the_decay():
    from common.config import TrainSettings

    assert [TrainSettings(lr=0.05).lr_at(t) for t in (1, 2, 100)] == [0.05, 0.05, 0.05]  # off by default
    warm = TrainSettings(lr=0.05, lr_warmup_rounds=4)
    assert [warm.lr_at(t) for t in range(1, 7)] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05, 0.05])
    decayed = TrainSettings(lr=0.1, lr_half_life=10.0, lr_warmup_rounds=1)
    assert decayed.lr_at(1) == pytest.approx(0.1 * 0.5**0.1 / 2) and decayed.lr_at(10) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="train.lr-warmup-rounds"):
        load_config(overrides=["train.lr-warmup-rounds=-1"])
