"""PruneFL's cost model and the bundled device profiles."""

import numpy as np
import pytest

from common.cost_model import CostModel, ProfileError, bundled_profiles, load_profile
from common.layout import ModelLayout
from common.models import build_model


def test_raspberry_pi_profile_reproduces_prunefl_conv2_figures():
    layout = ModelLayout.from_model(build_model("conv2", 62, (1, 28, 28)))
    cost = CostModel.from_profile(load_profile("raspberry-pi-4-class"), "conv2", layout, 5, None, 8.0)
    dense = layout.kept_per_layer(layout.full_mask())
    # the paper: a dense Conv-2 round takes about 51 s, 37 s of it communication; T0 bounds
    # the speed-up at about 8.2x
    assert cost.round_time(dense) == pytest.approx(51.1, abs=0.1)
    assert cost.comm_per_value * dense.sum() == pytest.approx(36.7, abs=0.1)
    assert cost.round_time(dense) / cost.constant == pytest.approx(8.2, abs=0.05)


def test_coefficients_follow_the_equation():
    cost = CostModel(local_steps=5, t0=0.1, comp=np.array([1e-6, 2e-6]), bandwidth=1e6, bytes_per_value=8)
    np.testing.assert_allclose(cost.coefficients(), [8e-6 + 5e-6, 8e-6 + 1e-5])
    assert cost.constant == pytest.approx(0.5)
    assert cost.compute_time(np.array([10, 0]), iterations=2) == pytest.approx(2 * (0.1 + 1e-5))
    assert cost.transfer_time(2e6) == 2.0
    round_trip = CostModel.from_config(cost.to_config(), 2)
    assert round_trip.t0 == cost.t0 and np.array_equal(round_trip.comp, cost.comp)


def test_bundled_profiles_load():
    assert {"raspberry-pi-4-class", "x86-2core-sandbox"} <= set(bundled_profiles())
    for name in bundled_profiles():
        load_profile(name)


def test_profile_errors_are_clear(tmp_path):
    with pytest.raises(ProfileError, match="neither a file nor a bundled profile"):
        load_profile("no-such-device")
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nkind = "guessed"\n[link]\nbandwidth = 1e6\n')
    with pytest.raises(ProfileError, match="device.kind"):
        load_profile(str(bad))
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    with pytest.raises(ProfileError, match="no timing for model 'conv4'"):
        load_profile("raspberry-pi-4-class").timing("conv4", layout)


def test_jetson_profile_is_the_pi_profile_over_its_stated_ratio():
    pi, jetson = load_profile("raspberry-pi-4-class"), load_profile("jetson-orin-nano")
    assert jetson.kind == "derived" and jetson.bandwidth == pi.bandwidth
    assert set(jetson.models) == set(pi.models) >= {"conv2", "vgg11", "lenet5", "digits-cnn"}
    for name, timing in pi.models.items():
        derived = jetson.models[name]
        assert derived.kind == "derived"
        assert derived.t0 == pytest.approx(timing.t0 / 1.5, rel=1e-5)
        for layer, value in timing.per_weight.items():
            assert derived.per_weight[layer] == pytest.approx(value / 1.5, rel=1e-5, abs=1e-15)


def test_lenet5_timing_is_conv2_seconds_per_flop_times_lenet5_flops():
    """conv2 of LeNet-5 on MNIST: 64 output positions, batch 32; Conv-2's conv2: 196, batch 20."""
    pi = load_profile("raspberry-pi-4-class")
    assert pi.models["conv2"].kind == "published" and pi.models["lenet5"].kind == "derived"
    per_flop = 7.098850e-6 / (6 * 196 * 20)
    assert pi.models["lenet5"].per_weight["conv2.weight"] == pytest.approx(per_flop * 6 * 64 * 32, rel=1e-6)
    assert pi.models["lenet5"].per_weight["fc1.weight"] == pytest.approx(1.927325e-7 / 20 * 32, rel=1e-6)
    t0 = 1.2492789765 * (11520 + 3200 + 500 + 10) * 32 / ((25088 + 12544 + 2048 + 62) * 20)
    assert pi.models["lenet5"].t0 == pytest.approx(t0, rel=1e-6)


def test_a_model_table_kind_must_be_known(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[device]\nkind = "published"\n[link]\nbandwidth = 1e6\n'
        '[models.m]\nt0 = 1.0\nkind = "guessed"\n[models.m.layers]\n"w" = 0.0\n'
    )
    with pytest.raises(ProfileError, match="models.m.kind"):
        load_profile(str(bad))
