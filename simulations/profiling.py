"""Measuring a device's cost-model coefficients by timing real local steps.

PruneFL's cost model (Jiang et al., TNNLS 2022, Sec. IV-B; see
:mod:`common.cost_model`) needs, per device and model, the mask-independent
seconds per local iteration ``t0`` and the seconds per kept weight per iteration
``comp_l`` of every prunable layer l. This module times the client's own training
step (:func:`common.training.train_locally`) under masks of several densities,
one layer at a time and all layers together, and fits

    time per iteration = t0 + sum_l comp_l * |M_l|

by least squares with non-negative coefficients, as PruneFL fits its device prototype.

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
whole step.

For structured pruning, which removes whole channels and so makes the dense model
physically smaller, the same linear model is fitted separately to timings of
*narrowed* dense models: each channel group keeps a fraction (the width) of its
output channels or features, and the layers reading them correspondingly fewer
inputs (:func:`narrowed`: Torch-Pruning's dependency graph, the one clients shrink
their models with, so BatchNorm and residual branches narrow with their layers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from common.layout import ModelLayout
from common.models import build_model
from common.pruning.channels import trace_channels
from common.pruning.shrink import shrink_model
from common.training import SgdSettings, make_loss, train_locally

DEFAULT_DENSITIES = (1.0, 0.5, 0.2, 0.05)
DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.25)


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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the steps run

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
    structured: ProfileFit | None = None  # the fit on narrowed dense models
    widths: tuple[float, ...] = ()
    load_average: tuple[float, float] = (math.nan, math.nan)  # 1-minute load, before and after


def random_mask(layout: ModelLayout, densities: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A mask with the given density per prunable layer (1.0 where not given)."""
    mask = layout.full_mask()
    for t in layout.prunable:
        d = densities.get(t.name, 1.0)
        if d < 1.0:
            mask[t.slice] = rng.random(t.size) < d
    return mask


def _batch(
    batch_size: int, input_shape: tuple[int, int, int], num_classes: int, settings: ProfileSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed random batch, drawn on the CPU and put on the device the steps run on."""
    generator = torch.Generator().manual_seed(settings.seed)
    inputs = torch.randn((batch_size, *input_shape), generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return inputs.to(settings.device), labels.to(settings.device)


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
    synchronize(batch[0].device)
    start = time.perf_counter()
    train_locally(model, layout, mask, _repeat(batch), iterations, SgdSettings(lr=1e-6), loss_fn)
    synchronize(batch[0].device)  # a GPU's queued kernels belong to the timing
    return (time.perf_counter() - start) / iterations


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA runs kernels asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nonnegative_least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient kept >= 0 (times cannot be negative).

    A simple active-set scheme: solve, drop the most negative coefficient (fix it
    at 0), solve again; with the few columns of a cost model it ends in a few steps.
    """
    active = list(range(design.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(design[:, active], target, rcond=None)
        full = np.zeros(design.shape[1])
        full[active] = coef
        negative = [i for i, c in zip(active, coef, strict=True) if c < 0]
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
    try:
        model = build_model(model_name, num_classes, input_shape, seed=settings.seed)
    except ValueError as exc:  # a model that states which inputs it needs
        raise ProfilingError(
            f"{exc}; pass the shape of the data set it is meant for (--input-shape C,H,W)"
        ) from exc
    model = model.to(settings.device)
    layout = ModelLayout.from_model(model)
    batch = _batch(batch_size, input_shape, num_classes, settings)
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


# -- widths (structured pruning) --------------------------------------------------------
def narrowed(
    model: nn.Module, layout: ModelLayout, widths: dict[str, float], input_shape: tuple[int, ...]
) -> nn.Module:
    """A dense copy of ``model`` in which each channel group keeps a share of its channels.

    ``widths`` maps weight names (``conv1.weight``) to a fraction in (0, 1]: the
    channel group whose root layer that weight belongs to keeps its first
    ``round(width * channels)`` channels (at least one); layers coupled to it (its
    BatchNorm, the next layer's inputs, a residual sum's other branch) shrink with
    it, and the layers producing the model's output keep all their outputs. The
    channels are removed with Torch-Pruning's dependency graph, as clients shrink
    their models (:func:`common.pruning.shrink.shrink_model`); the original is untouched.
    """
    example = torch.zeros(1, *input_shape)
    structure = trace_channels(model, example, layout)
    removal = []
    for group in structure.groups:
        width = widths.get(f"{group.root}.weight", 1.0)
        keep = max(1, round(group.channels * width))
        if keep < group.channels:
            removal.append((group.root, list(range(keep, group.channels))))
    floats, ints = layout.flatten(model.state_dict())
    return shrink_model(model, layout, floats, ints, removal, example).model


def width_configurations(layout: ModelLayout, widths: Sequence[float]) -> list[dict[str, float]]:
    """Full width, then per width: all layers at it, and each layer but the last alone at it."""
    narrowable = [t.name for t in layout.prunable][:-1]
    configs: list[dict[str, float]] = [{}]
    for w in widths:
        if w < 1.0:
            configs.append({name: w for name in narrowable})
            configs += [{name: w} for name in narrowable]
    return configs


def profile_widths(
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    batch_size: int,
    loss: str = "cross-entropy",
    settings: ProfileSettings | None = None,
    widths: Sequence[float] = DEFAULT_WIDTHS,
) -> ProfileFit:
    """Time dense local steps of narrowed copies of ``model_name`` and fit the cost model.

    The kept weights of a layer are the weights of its narrowed copy; the slopes
    are per weight of the *full* model's layers, so the fit reads like the
    unstructured one: ``t = t0 + sum_l comp_l * |W_l|``.
    """
    settings = settings or ProfileSettings()
    if not widths or not all(0 < w <= 1 for w in widths):
        raise ProfilingError(f"widths {tuple(widths)} must lie in (0, 1]")
    rng = np.random.default_rng(settings.seed)
    full = build_model(model_name, num_classes, input_shape, seed=settings.seed)
    full_layout = ModelLayout.from_model(full)
    batch = _batch(batch_size, input_shape, num_classes, settings)
    configs = width_configurations(full_layout, widths)
    models = []
    for config in configs:
        model = narrowed(full, full_layout, config, input_shape).to(settings.device)
        layout = ModelLayout.from_model(model)
        try:
            time_iterations(model, layout, layout.full_mask(), batch, 2, loss, num_classes)  # warm-up
        except RuntimeError as exc:
            raise ProfilingError(f"a narrowed {model_name} does not run ({exc}): widths unsupported") from exc
        models.append((model, layout))
    dense = time_iterations(*models[0], models[0][1].full_mask(), batch, 3, loss, num_classes)
    iterations = max(3, math.ceil(settings.min_seconds / dense))
    kept = np.array([[t.size for t in layout.prunable] for _, layout in models])
    times = np.zeros((len(configs), settings.repeats))
    for r in range(settings.repeats):
        for i in rng.permutation(len(configs)):
            model, layout = models[i]
            mask = layout.full_mask()
            if settings.warmup_iterations:
                time_iterations(model, layout, mask, batch, settings.warmup_iterations, loss, num_classes)
            times[i, r] = time_iterations(model, layout, mask, batch, iterations, loss, num_classes)
    return fit_cost_model(full_layout, kept, times, iterations)


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
    lines = [
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
        "# the machine's 1-minute load average before and after measuring (other work running)",
        f"load-average = [{profile.load_average[0]:.2f}, {profile.load_average[1]:.2f}]",
        f"[models.{profile.model}.layers]",
        *(f'"{layer}" = {value:.6e}' for layer, value in fit.per_weight.items()),
    ]
    if profile.structured is not None:
        wide = profile.structured
        lines += [
            "",
            "# Structured pruning: dense models with fewer channels (widths "
            f"{', '.join(f'{w:g}' for w in profile.widths)}), per layer and all together;",
            "# |W_l| is the narrowed layer's weight count. Not read by the unstructured cost model.",
            f"[models.{profile.model}.structured]",
            f"t0 = {wide.t0:.6e}",
            f"# fit: {wide.samples} width configurations x {wide.repeats} repeats of {wide.iterations} "
            f"iterations; mean {wide.mean_iteration_s * 1e3:.3f} ms per iteration; RMSE "
            f"{wide.rmse_s * 1e3:.3f} ms ({wide.relative_error:.1%}), largest residual "
            f"{wide.max_relative_residual:.1%}; timing noise {wide.timing_noise:.1%}",
            f"widths = [{', '.join(f'{w:g}' for w in profile.widths)}]",
            f"fit-rmse-s = {wide.rmse_s:.6e}",
            f"fit-relative-error = {wide.relative_error:.4f}",
            f"timing-noise = {wide.timing_noise:.4f}",
            f"[models.{profile.model}.structured.layers]",
            *(f'"{layer}" = {value:.6e}' for layer, value in wide.per_weight.items()),
        ]
    return lines


def profile_document(device: DeviceInfo, models: Sequence[ModelProfile], kept: Sequence[str] = ()) -> str:
    """A device-profile TOML file (see :mod:`common.cost_model`) for measured fits.

    ``kept`` are [models.*] sections of an earlier file of the same device, as
    text, for models not measured this time.
    """
    lines = [
        f"# {device.description}",
        "# MEASURED by `fedprune profile`: real local SGD steps timed under masks of several",
        "# densities, fitted to t = t0 + sum_l comp_l |M_l| (non-negative coefficients).",
        *(f"# {note}" for note in device.notes),
        f"# Link: {device.link_note}",
        "",
        "[device]",
        f"name = {_toml_string(device.name)}",
        'kind = "measured"',
        f"description = {_toml_string(device.description)}",
        f"source = {_toml_string(device.source)}",
        f"notes = [{', '.join(_toml_string(n) for n in device.notes)}]",
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
                name = header.removeprefix("models.").split(".")[0]
                current = name
                sections.setdefault(name, [])
            else:
                current = None
        if current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}
