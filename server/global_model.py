"""The server's copy of the model: weights, mask and mask version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from common.layout import ModelLayout


@dataclass
class GlobalModel:
    """Flat weights, integer buffers and the mask in force.

    Pruned positions of ``floats`` keep their last value (PruneFL's stale value),
    so a weight that comes back restarts from it; the effective model is
    :meth:`masked_floats`. ``mask_version`` grows by one whenever the mask changes,
    which is how the server knows which nodes hold a stale copy.
    """

    layout: ModelLayout
    floats: np.ndarray
    ints: np.ndarray
    mask: np.ndarray
    mask_version: int = 0

    def set_mask(self, mask: np.ndarray) -> bool:
        """Adopt ``mask``; return True (and bump the version) if it differs."""
        if np.array_equal(mask, self.mask):
            return False
        self.mask = mask
        self.mask_version += 1
        return True

    def kept_positions(self) -> np.ndarray:
        """Indices of the kept floats, cached per mask (gathering by index is faster than by mask)."""
        cached = self.__dict__.get("_kept")
        if cached is None or cached[0] is not self.mask:
            cached = (self.mask, np.flatnonzero(self.mask))
            self.__dict__["_kept"] = cached
        return cached[1]

    @property
    def density(self) -> float:
        return self.layout.density(self.mask)

    def kept_values(self) -> np.ndarray:
        return self.floats.take(self.kept_positions())

    def masked_floats(self) -> np.ndarray:
        return np.where(self.mask, self.floats, np.float32(0))

    def kept_per_layer(self) -> np.ndarray:
        """|M_l| for every prunable tensor, in layout order."""
        return self.layout.kept_per_layer(self.mask)

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Weights, buffers, mask and mask version, for a checkpoint."""
        return {
            "floats": self.floats,
            "ints": self.ints,
            "mask": self.mask,
            "mask_version": self.mask_version,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; shapes and dtypes must fit the layout."""
        expected = {
            "floats": (np.float32, self.layout.num_floats),
            "ints": (np.int64, self.layout.num_ints),
            "mask": (np.bool_, self.layout.num_floats),
        }
        for name, (dtype, length) in expected.items():
            array = np.asarray(state[name])
            if array.dtype != dtype or array.shape != (length,):
                raise ValueError(
                    f"checkpointed {name} has dtype {array.dtype} and shape {array.shape}; "
                    f"this model needs {np.dtype(dtype)} of shape ({length},)"
                )
        self.floats = np.array(state["floats"], dtype=np.float32)
        self.ints = np.array(state["ints"], dtype=np.int64)
        self.mask = np.array(state["mask"], dtype=bool)
        self.mask_version = int(state["mask_version"])

    def to_arrayrecord(self) -> ArrayRecord:
        """The effective (masked) model as named arrays, for Flower's Result."""
        state = self.layout.unflatten(self.masked_floats(), self.ints)
        return ArrayRecord({name: Array(tensor.numpy()) for name, tensor in state.items()})
