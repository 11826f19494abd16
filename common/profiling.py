"""Measuring a device's cost-model coefficients by timing real local steps.

PruneFL's cost model (see :mod:`common.cost_model`) needs, per device and model,
the mask-independent seconds per local iteration ``t0`` and the seconds per kept
weight per iteration ``comp_l`` of every prunable layer. This module times the
client's own training step (:func:`common.training.train_locally`) under masks of
several densities, one layer at a time and all layers together, and fits

    time per iteration = t0 + sum_l comp_l * |M_l|

by least squares with non-negative slopes. With dense kernels (PyTorch's default
on CPU) zeroed weights cost as much as kept ones, and the fit says so: the slopes
come out near zero and ``t0`` carries the whole step. The fit's error is reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .layout import ModelLayout
from .models import build_model
from .training import SgdSettings, make_loss, train_locally

DEFAULT_DENSITIES = (1.0, 0.5, 0.2, 0.05)


@dataclass(frozen=True)
class ProfileFit:
    t0: float
    per_weight: dict[str, float]
    samples: int
    rmse_s: float  # root mean square error of the fit, seconds per iteration
    relative_error: float  # rmse / mean measured time
    mean_iteration_s: float


def random_mask(layout: ModelLayout, densities: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A mask with the given density per prunable layer (1.0 where not given)."""
    mask = layout.full_mask()
    for t in layout.prunable:
        d = densities.get(t.name, 1.0)
        if d < 1.0:
            mask[t.slice] = rng.random(t.size) < d
    return mask


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

    def same_batch():  # type: ignore[no-untyped-def]
        while True:
            yield batch

    start = time.perf_counter()
    train_locally(
        model, layout, mask, same_batch(), iterations, SgdSettings(lr=1e-6), make_loss(loss, num_classes)
    )
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


def profile_model(
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    batch_size: int,
    loss: str = "cross-entropy",
    densities: Sequence[float] = DEFAULT_DENSITIES,
    iterations: int = 10,
    repeats: int = 3,
    seed: int = 0,
) -> ProfileFit:
    """Time local steps of ``model_name`` under varied masks and fit the cost model."""
    rng = np.random.default_rng(seed)
    model = build_model(model_name, num_classes, input_shape, seed=seed)
    layout = ModelLayout.from_model(model)
    generator = torch.Generator().manual_seed(seed)
    batch = (
        torch.randn((batch_size, *input_shape), generator=generator),
        torch.randint(0, num_classes, (batch_size,), generator=generator),
    )
    configurations: list[dict[str, float]] = [{}]
    for d in densities:
        configurations.append({t.name: d for t in layout.prunable})
        configurations += [{t.name: d} for t in layout.prunable]
    time_iterations(model, layout, layout.full_mask(), batch, iterations, loss, num_classes)  # warm-up
    rows, times = [], []
    for _ in range(repeats):
        for densities_of in configurations:
            mask = random_mask(layout, densities_of, rng)
            rows.append([1.0, *layout.kept_per_layer(mask).astype(float)])
            times.append(time_iterations(model, layout, mask, batch, iterations, loss, num_classes))
    design, target = np.array(rows), np.array(times)
    coef = nonnegative_least_squares(design, target)
    rmse = float(np.sqrt(np.mean((design @ coef - target) ** 2)))
    return ProfileFit(
        t0=float(coef[0]),
        per_weight={t.name: float(c) for t, c in zip(layout.prunable, coef[1:], strict=True)},
        samples=len(times),
        rmse_s=rmse,
        relative_error=rmse / float(np.mean(target)),
        mean_iteration_s=float(np.mean(target)),
    )


def profile_document(
    name: str,
    description: str,
    source: str,
    fits: dict[str, ProfileFit],
    bandwidth: float,
    bandwidth_measured: bool,
    bandwidth_note: str,
) -> str:
    """A device-profile TOML file (see :mod:`common.cost_model`) for measured fits."""
    lines = [
        f"# {description}",
        "# MEASURED by fedprune's profiler: real local SGD steps timed under masks of",
        "# several densities, fitted to t = t0 + sum_l comp_l |M_l| (non-negative slopes).",
        f"# Link: {bandwidth_note}",
        "",
        "[device]",
        f'name = "{name}"',
        'kind = "measured"',
        f'description = "{description}"',
        f'source = "{source}"',
        "",
        "[link]",
        f"bandwidth = {bandwidth:.1f}",
        f"measured = {'true' if bandwidth_measured else 'false'}",
    ]
    for model_name, fit in fits.items():
        lines += [
            "",
            f"[models.{model_name}]",
            f"t0 = {fit.t0:.6e}",
            f"# fit: {fit.samples} timings, mean {fit.mean_iteration_s * 1e3:.3f} ms per iteration, "
            f"RMSE {fit.rmse_s * 1e3:.3f} ms ({fit.relative_error:.1%})",
            f"[models.{model_name}.layers]",
        ]
        lines += [f'"{layer}" = {value:.6e}' for layer, value in fit.per_weight.items()]
    return "\n".join(lines) + "\n"
