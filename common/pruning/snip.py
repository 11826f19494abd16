"""SNIP: single-shot pruning at initialisation by connection sensitivity.

Lee, Ajanthan and Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019; PruneFL's SNIP baseline (Jiang et al., TNNLS 2022). On
fixed batches of one client's data, at the initial weights w:

    s_j = | w_j * g_j |,      g = d L / d w  summed over the batches

and the mask keeps the top ``target-density`` of s, globally (SNIP's choice) or per
layer, fixed for the whole run. The batches come from the initial-data path shared
with PruneFL: the server loads partition ``ip-client`` itself in simulation
(``initial-pruning = "server"``), or the designated node computes the mask on its
own data (``"client"``) and sends it back. No weight is trained on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .base import (
    DensityPruning,
    DensitySettings,
    InitialData,
    InitialDataSpec,
    InitialPruning,
)
from .selection import SCOPES, Scope, keep_top


@dataclass(frozen=True)
class SnipSettings(DensitySettings):
    PREFIX = "pruning.snip"

    scope: Scope = "global"
    initial_pruning: Literal["server", "client"] = "server"  # where the saliency is computed
    ip_client: int = 0  # partition whose data it uses
    ip_batches: int = 10  # fixed batches (PruneFL's initial-pruning data: 10 x 20 samples)
    ip_batch_size: int = 20

    def validate(self) -> None:
        super().validate()
        self.require("scope", self.scope in SCOPES, f"one of {SCOPES}")
        self.require("ip_client", self.ip_client >= 0, "a partition id >= 0")
        self.require("ip_batches", self.ip_batches >= 1, "an integer >= 1")
        self.require("ip_batch_size", self.ip_batch_size >= 1, "an integer >= 1")


def connection_sensitivity(floats: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """s = |w * g| at every position of the float state."""
    return np.abs(floats.astype(np.float64) * gradient.astype(np.float64))


class Snip(DensityPruning):
    """A fixed mask from |w * g| at initialisation, on one client's batches."""

    name = "snip"
    Settings = SnipSettings
    settings: SnipSettings

    def needs_initial_data(self) -> bool:
        return True

    def initial_data_spec(self) -> InitialDataSpec:
        s = self.settings
        return InitialDataSpec(s.initial_pruning, s.ip_client, s.ip_batches, s.ip_batch_size)

    def initial_mask(self, floats: np.ndarray, mask: np.ndarray, data: InitialData | None) -> InitialPruning:
        if data is None:
            raise ValueError("SNIP needs one client's batches")
        layout, model = self.env.layout, data.model
        model.train()
        model.zero_grad(set_to_none=True)
        for inputs, labels in data.batches:
            data.loss_fn(model(inputs), labels).backward()
        with torch.no_grad():
            weights, _ = layout.flatten(model.state_dict())
        scores = connection_sensitivity(weights, layout.gradient_vector(model))
        new = keep_top(scores, layout, self.settings.target_density, self.settings.scope, eligible=mask)
        samples = sum(len(labels) for _, labels in data.batches)
        return InitialPruning(mask=new, iterations=0, log={"samples": samples, "batches": len(data.batches)})
