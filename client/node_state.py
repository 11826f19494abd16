"""What a node keeps between rounds, in Flower's ``Context.state``.

* the mask it last received, with its version (one bit per float, packed), so
  that the server sends the mask only when the node's copy is stale, and then
  only its XOR delta against this copy where that is smaller;
* under full participation, PruneFL's importance accumulator at pruned positions,
  uploaded and cleared in reconfiguration rounds.

A node that has never received a mask holds version 0, the dense mask.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from common.layout import ModelLayout
from common.wire.codec import decode_mask, mask_base_version

MASK_RECORD = "fedprune.mask"
IMPORTANCE_RECORD = "fedprune.importance"
VERSIONS_RECORD = "fedprune.versions"


class StaleMaskError(RuntimeError):
    """The message carries no mask and this node does not hold the one in force."""


class NodeState:
    def __init__(self, context: Context, layout: ModelLayout) -> None:
        self.state = context.state
        self.layout = layout
        if VERSIONS_RECORD not in self.state:
            self.state[VERSIONS_RECORD] = ConfigRecord({"mask": 0, "importance": -1})
        self.versions = self.state[VERSIONS_RECORD]

    @property
    def mask_version(self) -> int:
        return int(self.versions["mask"])  # type: ignore[call-overload]

    def store_mask(self, mask: np.ndarray, version: int) -> None:
        # the whole mask, packed (a bit per float): faster than gathering the prunable part
        self.state[MASK_RECORD] = ArrayRecord({"bits": Array(np.packbits(mask))})
        self.versions["mask"] = version

    def cached_mask(self) -> np.ndarray:
        if self.mask_version == 0 or MASK_RECORD not in self.state:
            return self.layout.full_mask()
        packed = self.state[MASK_RECORD]["bits"].numpy()
        if packed.shape != (-(-self.layout.num_floats // 8),):
            raise StaleMaskError(f"the stored mask version {self.mask_version} does not fit the layout")
        return np.unpackbits(packed, count=self.layout.num_floats).view(bool)

    def resolve_mask(self, record: ArrayRecord, version: int) -> np.ndarray:
        """The mask of ``version`` in force: decoded from the message if it carries one
        (whole, or as a delta against this node's copy), else the cached copy."""
        base = mask_base_version(record)
        if base is None:
            if version == 0:
                return self.layout.full_mask()
            if version != self.mask_version:
                raise StaleMaskError(
                    f"node holds mask version {self.mask_version}, the message needs {version}"
                )
            return self.cached_mask()
        if base not in (0, self.mask_version):
            if version == self.mask_version:  # the server missed our last reply; we hold it already
                return self.cached_mask()
            raise StaleMaskError(
                f"the mask is a delta against version {base}; this node holds {self.mask_version}"
            )
        held = self.mask_version
        mask = decode_mask(record, self.layout, lambda v: self.cached_mask() if v == held else None)
        self.store_mask(mask, version)
        return mask

    def add_importance(self, values: np.ndarray, mask_version: int) -> np.ndarray:
        """Add to the accumulator and return the total; a stale accumulator is dropped."""
        total = values.astype(np.float32)
        if IMPORTANCE_RECORD in self.state and int(self.versions["importance"]) == mask_version:  # type: ignore[call-overload]
            previous = self.state[IMPORTANCE_RECORD]["sum"].numpy()
            if previous.shape == total.shape:
                total = total + previous
        self.state[IMPORTANCE_RECORD] = ArrayRecord({"sum": Array(total)})
        self.versions["importance"] = mask_version
        return total

    def take_importance(self, values: np.ndarray, mask_version: int) -> np.ndarray:
        """Add ``values`` and return the total, clearing the accumulator."""
        total = self.add_importance(values, mask_version)
        del self.state[IMPORTANCE_RECORD]
        self.versions["importance"] = -1
        return total
