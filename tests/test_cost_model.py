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
    with pytest.raises(ProfileError, match="no timing for model 'digits-cnn'"):
        load_profile("raspberry-pi-4-class").timing("digits-cnn", layout)
