"""Sampling Gibbs-pruning masks from p(x) proportional to exp(-beta H(x)).

Labach and Valaee, "Structured Pruning of Neural Networks with Gibbs
Distributions" (arXiv 2006.04981). A layer's weights are split into *units* of n
weights each (n = 1: unstructured; a k x k kernel; a whole filter). Spins
x_i in {-1, +1} (+1 = keep) follow

    H(x) = x^T A x + b^T x,     A = -c (1 1^T - I) within a unit,   b_i = (Q_p - u_i) / 2

with u_i = w_i^2 (divided by the layer's mean w^2 when ``normalize``, so that one
beta means the same in every layer) and Q_p the threshold of the p-quantile of the
units' mean u (p = pruned fraction). Q_p is taken halfway between the last unit the
deterministic mask keeps and the first it prunes, so that beta -> infinity gives
exactly the deterministic mask (magnitude pruning to the target, per layer). With
M = sum_i x_i over a unit, -beta H = a M^2 + sum_i h_i x_i + const, a = beta c,
h_i = beta (u_i - Q_p) / 2:

* c = 0 (unstructured): independent spins, P(x_i = +1) = sigmoid(beta (u_i - Q_p));
* n <= ``exact_max`` (a 3 x 3 kernel: 512 states): exact, by enumerating all 2^n
  states of every unit and drawing one from the softmax of a M^2 + h . x;
* larger units (5 x 5 kernels, filters): a block Gibbs chain that is exact in its
  conditionals, through the Hubbard-Stratonovich identity
  exp(a M^2) proportional to the integral of exp(-z^2 / (4a) + z M) dz: given x,
  z ~ N(2 a M, 2 a); given z, the spins are independent with
  P(x_i = +1) = sigmoid(2 (z + h_i)). It starts from the deterministic
  configuration and runs ``steps`` sweeps (the paper: 50 two-colour sweeps).
  This auxiliary-variable chain is our choice; the paper's two-colour scheme could
  not be checked in its code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch

Mode = Literal["unstructured", "kernel", "filter"]
MODES = ("unstructured", "kernel", "filter")


def unit_size(shape: tuple[int, ...], mode: Mode, is_output: bool) -> int:
    """Weights per unit of a weight tensor of ``shape`` (output layers: always 1)."""
    if mode == "unstructured" or is_output:
        return 1
    if mode == "kernel":
        return int(torch.Size(shape[2:]).numel()) if len(shape) > 2 else 1
    return int(torch.Size(shape[1:]).numel())  # filter: a whole output channel


def unit_magnitudes(weight: torch.Tensor, n: int, normalize: bool) -> torch.Tensor:
    """u = w^2 (over the layer's mean w^2 when ``normalize``), as (units, n).

    Always on the CPU, in float64: the sampler draws from a CPU generator, so a mask
    is the same whatever device the model trains on.
    """
    u = weight.detach().to("cpu", torch.float64).reshape(-1, n) ** 2
    if normalize:
        u = u / u.mean().clamp_min(1e-30)
    return u


def kept_units(unit_scores: torch.Tensor, density: float) -> int:
    units = len(unit_scores)
    return min(units, max(1, int(round(density * units))))


def deterministic_units(unit_scores: torch.Tensor, density: float) -> torch.Tensor:
    """Bool per unit: the ``round(density * units)`` highest scores (ties by position)."""
    k = kept_units(unit_scores, density)
    order = torch.argsort(-unit_scores, stable=True)
    keep = torch.zeros(len(unit_scores), dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def threshold(unit_scores: torch.Tensor, density: float) -> torch.Tensor:
    """Q_p: halfway between the last kept and the first pruned unit score."""
    k = kept_units(unit_scores, density)
    ordered = torch.sort(unit_scores, descending=True).values
    if k >= len(ordered):
        return ordered[-1] - 1.0
    return (ordered[k - 1] + ordered[k]) / 2


@lru_cache(maxsize=8)
def _states(n: int) -> torch.Tensor:
    """All 2^n spin configurations of n spins, as (2^n, n) of +-1."""
    codes = torch.arange(2**n).unsqueeze(1)
    bits = (codes >> torch.arange(n)) & 1
    return (2 * bits - 1).to(torch.float64)


def sample_spins(
    fields: torch.Tensor,
    coupling: float,
    generator: torch.Generator,
    start: torch.Tensor,
    steps: int,
    exact_max: int,
) -> torch.Tensor:
    """Spins (units, n) of +-1 from exp(a M^2 + h . x) per unit; ``fields`` holds h, a = coupling."""
    units, n = fields.shape
    if coupling == 0 or n == 1:
        p = torch.sigmoid(2 * fields)
        return torch.where(torch.rand(p.shape, generator=generator, dtype=p.dtype) < p, 1.0, -1.0)
    if n <= exact_max:
        states = _states(n)
        logits = coupling * states.sum(1) ** 2 + fields @ states.T
        choice = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
        return states[choice]
    x = start.to(torch.float64)
    for _ in range(steps):
        magnetisation = x.sum(1, keepdim=True)
        noise = torch.randn((units, 1), generator=generator, dtype=torch.float64)
        z = 2 * coupling * magnetisation + (2 * coupling) ** 0.5 * noise
        p = torch.sigmoid(2 * (z + fields))
        x = torch.where(torch.rand(p.shape, generator=generator, dtype=p.dtype) < p, 1.0, -1.0)
    return x


def sample_mask(
    weight: torch.Tensor,
    n: int,
    density: float,
    beta: float,
    coupling: float,
    normalize: bool,
    generator: torch.Generator,
    steps: int = 50,
    exact_max: int = 9,
) -> torch.Tensor:
    """A 0/1 mask of ``weight``'s shape drawn from the Gibbs distribution at ``beta``."""
    u = unit_magnitudes(weight, n, normalize)
    scores = u.mean(1)
    q = threshold(scores, density)
    fields = beta * (u - q) / 2
    start = torch.where(deterministic_units(scores, density), 1.0, -1.0).unsqueeze(1).expand(-1, n)
    spins = sample_spins(fields, beta * coupling, generator, start, steps, exact_max)
    return (spins > 0).reshape(weight.shape).to(device=weight.device, dtype=weight.dtype)


def deterministic_mask(weight: torch.Tensor, n: int, density: float) -> torch.Tensor:
    """The test-time mask: the units of largest mean w^2 at ``density`` (bool, ``weight``'s shape, CPU)."""
    scores = unit_magnitudes(weight, n, normalize=False).mean(1)
    keep = deterministic_units(scores, density)
    return keep.unsqueeze(1).expand(-1, n).reshape(weight.shape)
