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
    """S over the whole float state, float64; rebuilt contributions are summed compactly.

    Every reply of a round has the same mask, so the rebuilt n (delta / lr) ** 2 of
    its kept positions is added into a buffer of the kept values' length (a
    contiguous add) and scattered into :attr:`values` once, when S is read or the
    mask changes: about 5x cheaper per reply than scattering each reply for Conv-2.
    """

    def __init__(self, layout: ModelLayout) -> None:
        self.layout = layout
        self._values = np.zeros(layout.num_floats, dtype=np.float64)
        self.is_parameter = np.zeros(layout.num_floats, dtype=bool)
        self.is_parameter[layout.parameter_positions] = True
        self.contributions = 0
        self._mask: np.ndarray | None = None  # the mask the pending sums belong to (a copy)
        self._kept = np.zeros(0, dtype=np.int64)
        self._kept_is_parameter = np.zeros(0, dtype=bool)
        self._pending: np.ndarray | None = None  # sums over the kept positions, not yet in _values

    @property
    def values(self) -> np.ndarray:
        """S at every float position (pending sums included)."""
        self._flush()
        return self._values

    def add_from_update(
        self,
        mask: np.ndarray,
        start_values: np.ndarray,
        client_values: np.ndarray,
        samples: int,
        lr: float,
    ) -> None:
        """Rebuild n (delta / lr) ** 2 at the kept parameter positions of one reply."""
        self.add_rebuilt(mask, self.rebuild(mask, start_values, client_values, samples, lr))

    def _use_mask(self, mask: np.ndarray) -> None:
        if self._mask is None or not np.array_equal(self._mask, mask):
            self._flush()
            self._mask = mask.copy()
            self._kept = np.flatnonzero(mask)
            self._kept_is_parameter = self.is_parameter[self._kept]

    def rebuild(
        self,
        mask: np.ndarray,
        start_values: np.ndarray,
        client_values: np.ndarray,
        samples: int,
        lr: float,
    ) -> np.ndarray:
        """n (delta / lr) ** 2 over ``mask``'s kept positions, 0 at kept non-parameters (float64)."""
        self._use_mask(mask)
        delta = client_values - start_values  # float32, as the values travelled
        rebuilt = np.square(delta, dtype=np.float64)
        rebuilt *= samples / (lr * lr)
        rebuilt[~self._kept_is_parameter] = 0.0
        return rebuilt

    def add_rebuilt(self, mask: np.ndarray, rebuilt: np.ndarray) -> None:
        """Add one reply's :meth:`rebuild` output (possibly scaled down) for ``mask``."""
        self._use_mask(mask)
        if self._pending is None:
            self._pending = np.zeros(len(self._kept), dtype=np.float64)
        self._pending += rebuilt
        self.contributions += 1

    def _flush(self) -> None:
        if self._pending is not None:
            self._pending[~self._kept_is_parameter] = 0.0
            self._values[self._kept] += self._pending
            self._pending = None

    def add_upload(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Add a client's uploaded statistic at ``positions`` of the float state."""
        self._values[positions] += values.astype(np.float64)

    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {"values": self.values, "contributions": self.contributions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = np.asarray(state["values"])
        if values.dtype != np.float64 or values.shape != self.values.shape:
            raise ValueError(
                f"checkpointed importance has dtype {values.dtype} and shape {values.shape}; "
                f"expected float64 of shape {self.values.shape}"
            )
        self._pending = None
        self._values = values.copy()
        self.contributions = int(state["contributions"])

    def take(self) -> np.ndarray:
        """Return the accumulated S and start over."""
        out = self.values
        self._values = np.zeros_like(out)
        self.contributions = 0
        return out
