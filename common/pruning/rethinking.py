"""Rethinking's training regimes for any finished run's final mask, and lottery-ticket reinit.

Liu, Sun, Zhou, Huang and Darrell, "Rethinking the Value of Network Pruning", ICLR
2019; Frankle and Carbin, "The Lottery Ticket Hypothesis", ICLR 2019. The mask of
a finished run (its results folder: ``mask.npz``, ``config.toml`` and, for
``finetune``, ``model.npz``, read with ``allow_pickle=False``) is fixed for a new
run, started by ``regime``:

* ``finetune``: the inherited weights (the run's final model);
* ``scratch-e``: a new random initialisation, trained for the configured rounds;
  prunable weights are drawn He-normal with the sparse fan-in of each output unit,
  std = sqrt(2 / kept fan-in), then masked (Liu et al.'s unstructured setting);
  other tensors take the model's own initialisation;
* ``scratch-b``: the same initialisation with the same compute budget: the rounds
  are scaled by FLOPs_full / FLOPs_pruned (MACs of a forward pass, zero weights
  free: :mod:`~common.flops`), capped at ``max-round-factor`` (Liu et al. cap
  ImageNet at 2x), since in FL the budget unit is rounds times client FLOPs;
* ``lottery``: the run's original initialisation (the model is built from the
  source run's ``federation.seed``), masked: the lottery-ticket reinit;
* ``random-reinit``: a new random initialisation of the model's own kind (seed
  ``reinit-seed``), masked: the lottery ticket's control.

A channel mask (from TGF, Gibbs filter-wise or L1 filter pruning) is trained on
the physically smaller model, as in the run it came from.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..flops import forward_macs, positions_for
from ..layout import ModelLayout
from ..models import build_model
from ..settings import ConfigError, flatten, key_name
from .base import InitialData, InitialPruning, MethodSettings, RoundPlan
from .structured import StructuredPruning

Regime = Literal["finetune", "scratch-e", "scratch-b", "lottery", "random-reinit"]
REGIMES = ("finetune", "scratch-e", "scratch-b", "lottery", "random-reinit")
MASK_FILE, MODEL_FILE, CONFIG_FILE = "mask.npz", "model.npz", "config.toml"


@dataclass(frozen=True)
class RethinkingSettings(MethodSettings):
    PREFIX = "pruning.rethinking"

    source: str = ""  # results folder of the finished run whose final mask is used
    regime: Regime = "finetune"
    reinit_seed: int = 1  # seed of the new initialisation (scratch-e, scratch-b, random-reinit)
    max_round_factor: float = 2.0  # scratch-b: cap on FLOPs_full / FLOPs_pruned

    def validate(self) -> None:
        self.require("regime", self.regime in REGIMES, f"one of {REGIMES}")
        self.require("reinit_seed", self.reinit_seed >= 0, "an integer >= 0")
        self.require("max_round_factor", self.max_round_factor >= 1, "a number >= 1")


@dataclass(frozen=True)
class SourceRun:
    """What a finished run left: its final mask and model (when read), its model name and seed."""

    mask: np.ndarray
    floats: np.ndarray | None  # None when read without its weights
    model: str
    seed: int

    @property
    def weights(self) -> np.ndarray:
        """The final model's floats; only a source read with ``weights=True`` has them."""
        if self.floats is None:
            raise ValueError("this source run was read without its weights (model.npz)")
        return self.floats


def _error(field: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(key_name(RethinkingSettings.PREFIX, field), value, allowed)


def load_source(folder: str, layout: ModelLayout, weights: bool = True) -> SourceRun:
    """Read a results folder's mask, config and (``weights``) model, checked against ``layout``.

    Only fine-tuning needs the final weights; every other regime, and the step time of
    a shrunk model, needs the mask alone, which a claim's committed runs keep
    (``model.npz`` is not committed).
    """
    path = Path(folder).expanduser()
    needed = (MASK_FILE, CONFIG_FILE, MODEL_FILE) if weights else (MASK_FILE, CONFIG_FILE)
    missing = [name for name in needed if not (path / name).is_file()]
    if not folder or missing:
        raise _error(
            "source", folder, f"a finished run's results folder (missing: {missing or 'the folder'})"
        )
    try:
        config = flatten(tomllib.loads((path / CONFIG_FILE).read_text(encoding="utf-8")))
        with np.load(path / MASK_FILE, allow_pickle=False) as masks:
            mask = layout.full_mask()
            for t in layout.prunable:
                mask[t.slice] = _array(masks, t.name, t.shape, np.bool_).reshape(-1)
        floats = _read_floats(path / MODEL_FILE, layout) if weights else None
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise _error("source", folder, f"a readable results folder of this model ({exc})") from exc
    return SourceRun(mask, floats, str(config.get("model.name", "")), int(config.get("federation.seed", 0)))


def _read_floats(path: Path, layout: ModelLayout) -> np.ndarray:
    floats = np.zeros(layout.num_floats, dtype=np.float32)
    with np.load(path, allow_pickle=False) as model:
        for t in layout.tensors:
            if t.is_float:
                floats[t.slice] = _array(model, t.name, t.shape, np.float32).reshape(-1)
    return floats


def _array(archive: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if name not in archive:
        raise ValueError(f"{name} is missing")
    array = archive[name]
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(
            f"{name} is {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}"
        )
    return array


def sparse_he_normal(layout: ModelLayout, mask: np.ndarray, floats: np.ndarray, seed: int) -> np.ndarray:
    """``floats`` with every prunable weight drawn N(0, 2 / kept fan-in of its output unit), masked."""
    generator = torch.Generator().manual_seed(seed)
    out = floats.copy()
    for t in layout.prunable:
        rows = mask[t.slice].reshape(t.shape[0], -1)
        fan_in = rows.sum(1, keepdims=True)
        std = np.sqrt(2.0 / np.maximum(fan_in, 1))
        noise = torch.randn(rows.shape, generator=generator, dtype=torch.float64).numpy()
        out[t.slice] = np.where(rows, noise * std, 0.0).reshape(-1).astype(np.float32)
    return out


class Rethinking(StructuredPruning):
    """A finished run's final mask, trained again under one of Rethinking's regimes."""

    name = "rethinking"
    Settings = RethinkingSettings
    settings: RethinkingSettings

    @cached_property
    def source(self) -> SourceRun:
        source = load_source(
            self.settings.source, self.env.layout, weights=self.settings.regime == "finetune"
        )
        if self.env.model and source.model and source.model != self.env.model:
            raise _error(
                "source", self.settings.source, f"a run of model {self.env.model!r}, not {source.model!r}"
            )
        return source

    def target_density(self) -> float:
        return self.env.layout.density(self.source.mask)

    def flops_ratio(self) -> float:
        """FLOPs_full / FLOPs_pruned of a forward pass (zero weights free)."""
        env = self.env
        positions = positions_for(env.model, env.num_classes, tuple(env.input_shape))
        full = forward_macs(env.layout, env.layout.full_mask(), positions)
        pruned = forward_macs(env.layout, self.source.mask, positions)
        return full / max(pruned, 1)

    def planned_rounds(self, configured: int) -> int:
        if self.settings.regime != "scratch-b":
            return configured
        factor = min(self.settings.max_round_factor, self.flops_ratio())
        return max(configured, math.ceil(configured * factor))

    def initial_mask(self, floats: np.ndarray, mask: np.ndarray, data: InitialData | None) -> InitialPruning:
        s, env, source = self.settings, self.env, self.source
        new_mask = source.mask & mask
        if s.regime == "finetune":
            start = source.weights
        elif s.regime == "lottery":
            start = self._initialisation(source.seed)
        elif s.regime == "random-reinit":
            start = self._initialisation(s.reinit_seed)
        else:
            start = sparse_he_normal(env.layout, new_mask, self._initialisation(s.reinit_seed), s.reinit_seed)
        start = np.where(new_mask, start, np.float32(0)).astype(np.float32)
        return InitialPruning(mask=new_mask, floats=start, log={"regime": s.regime, "source": s.source})

    def _initialisation(self, seed: int) -> np.ndarray:
        env = self.env
        model = build_model(env.model, env.num_classes, tuple(env.input_shape), seed=seed)
        return env.layout.flatten(model.state_dict())[0]

    def round_plan(self, server_round: int) -> RoundPlan:
        shrink = bool(self.env.model) and self.structure.is_channel_mask(self.source.mask, self.env.layout)
        return RoundPlan(client_config={"shrink": shrink})
