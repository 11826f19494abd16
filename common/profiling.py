"""Measuring a device's cost-model coefficients by timing real local steps.

PruneFL's cost model (Jiang et al., TNNLS 2022, Sec. IV-B; see
:mod:`common.cost_model`) needs, per device and model, the mask-independent
seconds per local iteration ``t0`` and the seconds per kept weight per iteration
``comp_l`` of every prunable layer l. This module times the client's own training
step (:func:`common.training.train_locally`) under masks of several densities,
one layer at a time and all layers together, and fits

    time per iteration = t0 + sum_l comp_l * |M_l|

by least squares with non-negative slopes, as PruneFL fits its device prototype.

Robustness on a busy or throttling device:

* each configuration (a fixed random mask) is timed ``repeats`` times, in a new
  random order of the configurations per repeat, so that a slow spell of the
  machine does not fall on one configuration; the fit uses the median of the
  repeats;
* every timing runs after a few warm-up iterations under the same mask and lasts
  at least ``min_seconds`` (the number of iterations is calibrated once);
* the report gives the fit's error (RMSE of the medians, absolute and relative
  to the mean time) beside the timing noise (median over configurations of the
  relative median absolute deviation of the repeats), so that a poor fit can be
  told apart from a noisy machine.

With dense kernels (PyTorch's default on CPU) zeroed weights cost as much as kept
ones, and the fit says so: the slopes come out near zero and ``t0`` carries the
whole step. Widths (physically narrower models, for structured pruning) are not
measured: the registered models have no width parameter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .layout import ModelLayout
from .models import build_model
from .training import SgdSettings, make_loss, train_locally

DEFAULT_DENSITIES = (1.0, 0.5, 0.2, 0.05)


class ProfilingError(ValueError):
    """The model cannot be profiled as asked; the message says why."""


@dataclass(frozen=True)
class ProfileSettings:
    """How to measure: densities of the masks, repeats, length of each timing."""

    densities: tuple[float, ...] = DEFAULT_DENSITIES
    repeats: int = 5
    min_seconds: float = 0.2  # each timing lasts at least this long
    warmup_iterations: int = 3  # before each timing, under the same mask
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.densities or not all(0 < d <= 1 for d in self.densities):
            raise ProfilingError(f"densities {self.densities} must lie in (0, 1]")
        if self.repeats < 1:
            raise ProfilingError(f"repeats = {self.repeats} must be >= 1")
        if self.min_seconds <= 0 or self.warmup_iterations < 0:
            raise ProfilingError("min_seconds must be > 0 and warmup_iterations >= 0")


@dataclass(frozen=True)
class ProfileFit:
    """The fitted coefficients of one model on this device, and how well they fit."""

    t0: float
    per_weight: dict[str, float]
    samples: int  # configurations fitted (each the median of `repeats` timings)
    rmse_s: float  # root mean square error of the fit, seconds per iteration
    relative_error: float  # rmse / mean measured time
    mean_iteration_s: float
    repeats: int = 1
    iterations: int = 0  # iterations per timing
    timing_noise: float = math.nan  # median relative MAD of the repeats
    max_relative_residual: float = math.nan


@dataclass(frozen=True)
class ModelProfile:
    """A fit plus the conditions it was measured under (written to the profile file)."""

    model: str
    fit: ProfileFit
    batch_size: int
    input_shape: tuple[int, int, int]
    num_classes: int
    loss: str
    threads: int
    measured_on: str  # date


def random_mask(layout: ModelLayout, densities: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A mask with the given density per prunable layer (1.0 where not given)."""
    mask = layout.full_mask()
    for t in layout.prunable:
        d = densities.get(t.name, 1.0)
        if d < 1.0:
            mask[t.slice] = rng.random(t.size) < d
    return mask


def _repeat(batch: tuple[torch.Tensor, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield batch


def time_iterations(
    model: torch.nn.Module,
    layout: ModelLayout,
    mask: np.ndarray,
    batch: tuple[torch.Tensor, torch.Tensor],
    iterations: int,
    loss: str,
    num_classes: int,
) -> float:
    """Seconds per iteration of ``iterations`` real local SGD steps under ``mask``."""
    loss_fn = make_loss(loss, num_classes)
    start = time.perf_counter()
    train_locally(model, layout, mask, _repeat(batch), iterations, SgdSettings(lr=1e-6), loss_fn)
    return (time.perf_counter() - start) / iterations


def nonnegative_least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with the coefficients of all columns but the first kept >= 0."""
    active = list(range(design.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(design[:, active], target, rcond=None)
        full = np.zeros(design.shape[1])
        full[active] = coef
        negative = [i for i, c in zip(active, coef, strict=True) if i != 0 and c < 0]
        if not negative:
            return full
        active.remove(min(negative, key=lambda i: full[i]))


def configurations(layout: ModelLayout, densities: Sequence[float]) -> list[dict[str, float]]:
    """Dense, then per density: all layers at it, and each layer alone at it."""
    configs: list[dict[str, float]] = [{}]
    for d in densities:
        if d < 1.0:
            configs.append({t.name: d for t in layout.prunable})
            configs += [{t.name: d} for t in layout.prunable]
    return configs


def timing_noise(times: np.ndarray) -> float:
    """Median over configurations of MAD / median across repeats (0 with one repeat)."""
    medians = np.median(times, axis=1)
    mad = np.median(np.abs(times - medians[:, None]), axis=1)
    return float(np.median(mad / medians))


def fit_cost_model(layout: ModelLayout, kept: np.ndarray, times: np.ndarray, iterations: int) -> ProfileFit:
    """Fit t = t0 + sum_l comp_l |M_l| to the medians of ``times`` (configurations x repeats)."""
    design = np.column_stack([np.ones(len(kept)), kept.astype(float)])
    target = np.median(times, axis=1)
    coef = nonnegative_least_squares(design, target)
    residuals = design @ coef - target
    rmse = float(np.sqrt(np.mean(residuals**2)))
    return ProfileFit(
        t0=float(coef[0]),
        per_weight={t.name: float(c) for t, c in zip(layout.prunable, coef[1:], strict=True)},
        samples=len(target),
        rmse_s=rmse,
        relative_error=rmse / float(np.mean(target)),
        mean_iteration_s=float(np.mean(target)),
        repeats=times.shape[1],
        iterations=iterations,
        timing_noise=timing_noise(times),
        max_relative_residual=float(np.max(np.abs(residuals) / target)),
    )


def profile_model(
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    batch_size: int,
    loss: str = "cross-entropy",
    settings: ProfileSettings | None = None,
) -> ProfileFit:
    """Time local steps of ``model_name`` under varied masks and fit the cost model."""
    settings = settings or ProfileSettings()
    rng = np.random.default_rng(settings.seed)
    model = build_model(model_name, num_classes, input_shape, seed=settings.seed)
    layout = ModelLayout.from_model(model)
    generator = torch.Generator().manual_seed(settings.seed)
    batch = (
        torch.randn((batch_size, *input_shape), generator=generator),
        torch.randint(0, num_classes, (batch_size,), generator=generator),
    )
    try:
        dense = time_iterations(model, layout, layout.full_mask(), batch, 2, loss, num_classes)  # warm-up
    except RuntimeError as exc:
        raise ProfilingError(
            f"model {model_name!r} does not train on inputs of shape {input_shape} with {num_classes} "
            f"classes ({exc}); pass the shape of the data set it is meant for "
            "(--input-shape C,H,W --classes N)"
        ) from exc
    dense = time_iterations(model, layout, layout.full_mask(), batch, 3, loss, num_classes)
    iterations = max(3, math.ceil(settings.min_seconds / dense))

    configs = configurations(layout, settings.densities)
    masks = [random_mask(layout, c, rng) for c in configs]
    kept = np.array([layout.kept_per_layer(m) for m in masks])
    times = np.zeros((len(configs), settings.repeats))
    for r in range(settings.repeats):
        for i in rng.permutation(len(configs)):
            if settings.warmup_iterations:
                time_iterations(model, layout, masks[i], batch, settings.warmup_iterations, loss, num_classes)
            times[i, r] = time_iterations(model, layout, masks[i], batch, iterations, loss, num_classes)
    return fit_cost_model(layout, kept, times, iterations)


# -- the profile file -------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    """The [device] and [link] tables of a profile file, and comment lines for its header."""

    name: str
    description: str
    source: str
    bandwidth: float
    bandwidth_measured: bool
    link_note: str
    notes: tuple[str, ...] = field(default=())


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _model_lines(profile: ModelProfile) -> list[str]:
    fit = profile.fit
    return [
        "",
        f"[models.{profile.model}]",
        f"t0 = {fit.t0:.6e}",
        f"# fit: {fit.samples} mask configurations x {fit.repeats} repeats of {fit.iterations} iterations; "
        f"mean {fit.mean_iteration_s * 1e3:.3f} ms per iteration; RMSE {fit.rmse_s * 1e3:.3f} ms "
        f"({fit.relative_error:.1%}), largest residual {fit.max_relative_residual:.1%}; "
        f"timing noise {fit.timing_noise:.1%}",
        f"fit-rmse-s = {fit.rmse_s:.6e}",
        f"fit-relative-error = {fit.relative_error:.4f}",
        f"timing-noise = {fit.timing_noise:.4f}",
        f"mean-iteration-s = {fit.mean_iteration_s:.6e}",
        f"batch-size = {profile.batch_size}",
        f"input-shape = [{', '.join(str(s) for s in profile.input_shape)}]",
        f"num-classes = {profile.num_classes}",
        f"loss = {_toml_string(profile.loss)}",
        f"threads = {profile.threads}",
        f"measured-on = {_toml_string(profile.measured_on)}",
        f"[models.{profile.model}.layers]",
        *(f'"{layer}" = {value:.6e}' for layer, value in fit.per_weight.items()),
    ]


def profile_document(device: DeviceInfo, models: Sequence[ModelProfile], kept: Sequence[str] = ()) -> str:
    """A device-profile TOML file (see :mod:`common.cost_model`) for measured fits.

    ``kept`` are [models.*] sections of an earlier file of the same device, as
    text, for models not measured this time.
    """
    lines = [
        f"# {device.description}",
        "# MEASURED by `fedprune profile`: real local SGD steps timed under masks of several",
        "# densities, fitted to t = t0 + sum_l comp_l |M_l| (non-negative slopes).",
        *(f"# {note}" for note in device.notes),
        f"# Link: {device.link_note}",
        "",
        "[device]",
        f"name = {_toml_string(device.name)}",
        'kind = "measured"',
        f"description = {_toml_string(device.description)}",
        f"source = {_toml_string(device.source)}",
        "",
        "[link]",
        f"bandwidth = {device.bandwidth:.1f}",
        f"measured = {'true' if device.bandwidth_measured else 'false'}",
    ]
    for section in kept:
        lines += ["", section.strip("\n")]
    for profile in models:
        lines += _model_lines(profile)
    return "\n".join(lines) + "\n"


def model_sections(text: str) -> dict[str, str]:
    """The ``[models.NAME]`` sections of a profile file (with their layers), by model name."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            header = stripped.strip("[]")
            if header.startswith("models."):
                name = header.removeprefix("models.").removesuffix(".layers")
                current = name
                sections.setdefault(name, [])
            else:
                current = None
        if current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}
