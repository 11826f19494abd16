"""The server's importance accumulator for PruneFL, of the size of one model.

PruneFL's statistic is S = sum over clients c and rounds of n_c * G_c ** 2, with
G_c the sum of c's local gradients in a round. With plain SGD, a kept weight moves
by exactly -lr * G_c during local training, so the server rebuilds S at kept
positions from each reply:

    S_j += n_c * ((w_{c,j} - w_j) / lr) ** 2                   (kept j)

as the authors' device prototype does. Clients therefore upload S only at pruned
positions (or everywhere, when momentum or weight decay break the identity), and
the server keeps one accumulator for all clients instead of one per client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from common.layout import ModelLayout


class ImportanceAccumulator:
    def __init__(self, layout: ModelLayout) -> None:
        self.layout = layout
        self.values = np.zeros(layout.num_floats, dtype=np.float64)
        self.is_parameter = np.zeros(layout.num_floats, dtype=bool)
        self.is_parameter[layout.parameter_positions] = True
        self.contributions = 0

    def add_from_update(
        self,
        mask: np.ndarray,
        start_values: np.ndarray,
        client_values: np.ndarray,
        samples: int,
        lr: float,
    ) -> None:
        """Rebuild n (delta / lr) ** 2 at the kept parameter positions of one reply."""
        delta = (client_values.astype(np.float64) - start_values.astype(np.float64)) / lr
        kept = np.flatnonzero(mask)
        rebuilt = samples * delta * delta
        self.values[kept] += np.where(self.is_parameter[kept], rebuilt, 0.0)
        self.contributions += 1

    def add_upload(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Add a client's uploaded statistic at ``positions`` of the float state."""
        self.values[positions] += values.astype(np.float64)

    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {"values": self.values, "contributions": self.contributions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = np.asarray(state["values"])
        if values.dtype != np.float64 or values.shape != self.values.shape:
            raise ValueError(
                f"checkpointed importance has dtype {values.dtype} and shape {values.shape}; "
                f"expected float64 of shape {self.values.shape}"
            )
        self.values = values.copy()
        self.contributions = int(state["contributions"])

    def take(self) -> np.ndarray:
        """Return the accumulated S and start over."""
        out, self.values = self.values, np.zeros_like(self.values)
        self.contributions = 0
        return out
