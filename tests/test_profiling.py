"""Device profiles: the fit of PruneFL's linear cost model, the file, the command."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.cost_model import CostModel, load_profile
from common.layout import ModelLayout
from common.models import build_model
from simulations.profiling import (
    DeviceInfo,
    ModelProfile,
    ProfileFit,
    ProfileSettings,
    ProfilingError,
    configurations,
    fit_cost_model,
    model_sections,
    narrowed,
    profile_document,
    timing_noise,
    width_configurations,
)
from tests.conftest import TinyBatchNormNet
from tests.test_cli import fedprune


def test_configurations_are_dense_then_all_layers_and_each_layer_per_density(tiny):
    _, layout = tiny  # two prunable layers
    configs = configurations(layout, (1.0, 0.5, 0.2))
    assert configs[0] == {}
    assert configs[1:4] == [{"fc1.weight": 0.5, "fc2.weight": 0.5}, {"fc1.weight": 0.5}, {"fc2.weight": 0.5}]
    assert len(configs) == 1 + 2 * 3


def test_the_fit_recovers_exact_coefficients_and_ignores_an_outlier_repeat(tiny):
    _, layout = tiny  # fc1: 12 prunable weights, fc2: 6
    kept = np.array([[12, 6], [6, 3], [6, 6], [12, 3], [2, 1]])
    t0, comp = 1e-3, np.array([2e-5, 5e-5])
    exact = t0 + kept @ comp
    times = np.column_stack([exact, exact, exact])
    times[1, 2] = exact[1] * 10  # one repeat of one configuration ran while the machine was busy
    fit = fit_cost_model(layout, kept, times, iterations=7)
    assert fit.t0 == pytest.approx(t0, rel=1e-9)
    assert fit.per_weight["fc1.weight"] == pytest.approx(2e-5, rel=1e-9)
    assert fit.per_weight["fc2.weight"] == pytest.approx(5e-5, rel=1e-9)
    assert fit.rmse_s == pytest.approx(0, abs=1e-15) and fit.max_relative_residual < 1e-9
    assert (fit.samples, fit.repeats, fit.iterations) == (5, 3, 7)


def test_slopes_are_never_negative(tiny):
    _, layout = tiny
    kept = np.array([[12, 6], [6, 6], [12, 3], [3, 3]])
    times = (2e-3 - kept[:, :1] * 1e-5 + kept[:, 1:] * 1e-5).repeat(2, axis=1)  # fc1 "saves" time
    fit = fit_cost_model(layout, kept, times, iterations=1)
    assert fit.per_weight["fc1.weight"] == 0.0 and fit.per_weight["fc2.weight"] > 0


def test_the_constant_is_never_negative_either(tiny):
    _, layout = tiny
    kept = np.array([[12, 6], [6, 6], [12, 3], [3, 3]], dtype=float)
    times = (kept @ np.array([1e-4, 1e-4]) - 1e-4)[:, None].repeat(2, axis=1)
    fit = fit_cost_model(layout, kept.astype(int), times, iterations=1)
    assert fit.t0 == 0.0 and min(fit.per_weight.values()) >= 0


def test_timing_noise_is_the_median_relative_deviation_of_the_repeats():
    times = np.array([[1.0, 1.0, 1.0], [2.0, 2.2, 1.8], [4.0, 4.0, 8.0]])
    # relative MADs: 0, 0.2/2 = 0.1, 0 -> median 0
    assert timing_noise(times) == 0.0
    assert timing_noise(np.array([[1.0, 1.1, 0.9], [2.0, 2.2, 1.8]])) == pytest.approx(0.1)


def test_bad_settings_are_refused():
    with pytest.raises(ProfilingError, match="densities"):
        ProfileSettings(densities=(0.0,))
    with pytest.raises(ProfilingError, match="repeats"):
        ProfileSettings(repeats=0)


def test_a_narrowed_model_keeps_a_width_of_each_layers_outputs_and_still_runs():
    model = build_model("digits-cnn", 10, (1, 8, 8), seed=0)
    layout = ModelLayout.from_model(model)
    narrow = narrowed(
        model, layout, {"conv1.weight": 0.5, "conv2.weight": 0.25, "fc1.weight": 0.5}, (1, 8, 8)
    )
    shapes = {name: tuple(p.shape) for name, p in narrow.named_parameters() if name.endswith("weight")}
    # conv1 16 -> 8 channels; conv2 32 -> 8 from 8 inputs; fc1 512 -> 8*4*4 = 128 inputs, 64 -> 32
    # outputs; fc2 keeps its 10 classes
    assert shapes == {
        "conv1.weight": (8, 1, 3, 3),
        "conv2.weight": (8, 8, 3, 3),
        "fc1.weight": (32, 128),
        "fc2.weight": (10, 32),
    }
    assert narrow(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert model.conv1.out_channels == 16  # the original is untouched
    assert len(width_configurations(layout, (1.0, 0.5, 0.25))) == 1 + 2 * (1 + 3)


def test_a_model_with_batchnorm_narrows_with_its_batchnorm():
    model = TinyBatchNormNet()
    narrow = narrowed(model, ModelLayout.from_model(model), {"conv.weight": 0.5}, (1, 4, 4))
    # conv 2 -> 1 channel, its BatchNorm with it, fc 32 -> 16 inputs; fc keeps its 3 outputs
    assert (narrow.conv.out_channels, narrow.bn.num_features) == (1, 1)
    assert tuple(narrow.fc.weight.shape) == (3, 16)
    assert narrow(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    assert model.conv.out_channels == 2  # the original is untouched


def _profile(name: str, layout: ModelLayout, t0: float) -> ModelProfile:
    fit = ProfileFit(
        t0=t0,
        per_weight={t.name: 1e-7 for t in layout.prunable},
        samples=9,
        rmse_s=1e-4,
        relative_error=0.05,
        mean_iteration_s=2e-3,
        repeats=5,
        iterations=100,
        timing_noise=0.02,
        max_relative_residual=0.1,
    )
    return ModelProfile(name, fit, 32, (1, 8, 8), 10, "cross-entropy", 1, "2026-01-01", fit, (1.0, 0.5))


def test_a_written_profile_is_read_by_the_cost_model_and_keeps_other_models(tiny, tmp_path):
    _, layout = tiny
    device = DeviceInfo("dev", "a device", "fedprune profile", 1e6, False, "assumed", ("shared machine",))
    first = profile_document(device, [_profile("a", layout, 1e-3), _profile("b", layout, 2e-3)])
    sections = model_sections(first)
    assert set(sections) == {"a", "b"} and "[models.a.layers]" in sections["a"]
    assert "[models.b.structured.layers]" in sections["b"]
    # Re-measuring model a keeps b as it was.
    second = profile_document(device, [_profile("a", layout, 3e-3)], kept=[sections["b"]])
    path = tmp_path / "dev.toml"
    path.write_text(second)
    profile = load_profile(str(path))
    assert profile.kind == "measured" and profile.bandwidth_measured is False
    assert profile.models["a"].t0 == 3e-3 and profile.models["b"].t0 == 2e-3
    assert "# shared machine" in second and "timing noise 2.0%" in second
    cost = CostModel.from_profile(profile, "a", layout, 5, None, 8.0)
    assert cost.compute_time(np.array([12, 6])) == pytest.approx(5 * (3e-3 + 18e-7))


def test_fedprune_profile_measures_and_writes_a_profile(tmp_path):
    out = tmp_path / "here.toml"
    args = [
        "--repeats",
        "2",
        "--densities",
        "1,0.5",
        "--widths",
        "1,0.5",
        "--min-seconds",
        "0.01",
        "--threads",
        "1",
    ]
    result = fedprune("profile", "-o", str(out), "--note", "a test", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "(masks): t0" in result.stderr and "(widths): t0" in result.stderr and "timing noise" in result.stderr
    )
    profile = load_profile(str(out))
    assert profile.name == "here" and set(profile.models) == {"digits-cnn"}
    assert "[models.digits-cnn.structured]" in out.read_text()
    # a second measurement into the same file keeps the header's notes and adds its own
    again = fedprune("profile", "-o", str(out), "--note", "second", *args, "--skip-widths")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "# a test" in out.read_text() and "# second" in out.read_text()
    timing = profile.models["digits-cnn"]
    assert timing.t0 >= 0 and all(v >= 0 and math.isfinite(v) for v in timing.per_weight.values())
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    dense = CostModel.from_profile(profile, "digits-cnn", layout, 1, None, 8.0)
    assert dense.compute_time(layout.kept_per_layer(layout.full_mask())) > 0


def test_fedprune_profile_says_when_the_model_does_not_fit_the_inputs(tmp_path):
    # the default data set (digits) has 8x8 images; VGG-11 needs 32x32
    result = fedprune("profile", "-o", str(tmp_path / "x.toml"), "--set", "model.name=vgg11")
    assert result.returncode == 2 and "--input-shape" in result.stderr
    assert "Traceback" not in result.stderr
