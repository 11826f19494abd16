"""The data keys of the configuration, what the server sends clients, and the presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import default_flat, load_config, read_preset
from common.layout import ModelLayout
from common.models import build_model
from common.settings import ConfigError
from common.task import TaskSpec
from server.app import cost_model_for, preflight, task_for_run

from .data_paths import require

PRESETS = sorted((Path(__file__).resolve().parents[1] / "simulations").glob("*.toml"))


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["data.dataset=mnist", "data.partitioning=natural"], "data.partitioning", "femnist"),
        (["data.dataset=mnist", "data.classes-per-client=11"], "data.classes-per-client", "[1, 10]"),
        (["data.shards-per-client=0"], "data.shards-per-client", ">= 1"),
        (["data.partitioning=by-writer"], "data.partitioning", "pathological"),
        (["data.download=yes"], "data.download", "true or false"),
    ],
)
def test_bad_data_settings_name_the_key_and_what_is_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert caught.value.key == key and allowed in caught.value.allowed


def test_the_server_sends_every_data_setting():
    config = load_config(
        None,
        [
            "data.dataset=femnist",
            "data.partitioning=natural",
            "data.classes-per-client=5",
            "data.shards-per-client=3",
            "data.download=true",
            "model.name=conv2",
        ],
    )
    layout = ModelLayout.from_model(build_model("conv2", 62, (1, 28, 28)))
    task = task_for_run(config, layout)
    parsed = TaskSpec.from_message_config(task.to_flat())
    assert (parsed.partitioning, parsed.classes_per_client, parsed.shards_per_client, parsed.download) == (
        "natural",
        5,
        3,
        True,
    )


def test_missing_data_stops_the_run_before_it_starts(tmp_path):
    config = load_config(None, ["data.dataset=mnist", f"data.dir={tmp_path}", "model.name=digits-cnn"])
    with pytest.raises(ConfigError) as caught:
        preflight(config)
    assert caught.value.key == "data.dataset" and "train-images-idx3-ubyte" in caught.value.allowed


def test_a_model_too_big_for_the_data_stops_the_run():
    with pytest.raises(ConfigError) as caught:
        preflight(load_config(None, ["model.name=vgg11"]))  # digits are 8x8
    assert caught.value.key == "model.name" and "32x32" in caught.value.allowed


def test_more_clients_than_writers_stops_the_run():
    root = require("femnist")
    config = load_config(
        None,
        [
            "data.dataset=femnist",
            f"data.dir={root}",
            "data.partitioning=natural",
            "model.name=conv2",
            "simulation.num-clients=200",
            "cost.profile=raspberry-pi-4-class",
        ],
    )
    with pytest.raises(ConfigError) as caught:
        preflight(config)
    assert caught.value.key == "data.partitioning" and "105 writers into 200 clients" in caught.value.allowed


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_set_only_what_differs_and_fit_their_cost_profile(preset):
    defaults = default_flat()
    for key, value in read_preset(preset).items():
        assert defaults[key] != value, f"{preset.name} sets {key} to its default"
    config = load_config(preset)
    config.check_simulation()
    from common.data import DATASETS

    source = DATASETS[config.data.dataset]
    layout = ModelLayout.from_model(build_model(config.model.name, source.num_classes, source.input_shape))
    cost_model_for(config, layout)  # the profile has figures for every prunable layer


def test_the_presets_named_in_the_issue_exist():
    assert {p.stem for p in PRESETS} >= {"prunefl-femnist", "prunefl-cifar10", "lenet5-mnist"}
    femnist = load_config(PRESETS[[p.stem for p in PRESETS].index("prunefl-femnist")])
    assert (femnist.model.name, femnist.train.lr, femnist.train.local_steps, femnist.train.batch_size) == (
        "conv2",
        0.25,
        5,
        20,
    )
    assert (femnist.method.reconfig_interval, femnist.simulation.num_clients, femnist.train.loss) == (
        50,
        10,
        "bce-one-hot",
    )
