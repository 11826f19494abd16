"""What a node keeps between rounds, in Flower's ``Context.state``.

* the mask it last received, with its version (one bit per float, packed), so
  that the server sends the mask only when the node's copy is stale, and then
  only its XOR delta against this copy where that is smaller; this is the one
  place a node's mask version lives;
* the arrays its pruning method keeps between rounds (:class:`MethodStore`, e.g.
  PruneFL's importance sum under full participation), opaque to the node.

A node that has never received a mask holds version 0, the dense mask.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from common.layout import ModelLayout
from common.wire.codec import decode_mask, mask_base_version

MASK_RECORD = "fedprune.mask"
METHOD_RECORD = "fedprune.method"
VERSIONS_RECORD = "fedprune.versions"


class StaleMaskError(RuntimeError):
    """The message carries no mask and this node does not hold the one in force."""


class NodeState:
    def __init__(self, context: Context, layout: ModelLayout) -> None:
        self.state = context.state
        self.layout = layout
        if VERSIONS_RECORD not in self.state:
            self.state[VERSIONS_RECORD] = ConfigRecord({"mask": 0})
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

    def method_store(self) -> MethodStore:
        """The arrays the pruning method keeps on this node between rounds."""
        return MethodStore(self.state)


class MethodStore:
    """A :class:`~common.training.NodeStore` in one record of ``Context.state``."""

    def __init__(self, state: RecordDict) -> None:
        self.state = state

    def _record(self) -> ArrayRecord:
        if METHOD_RECORD not in self.state.array_records:
            self.state[METHOD_RECORD] = ArrayRecord()
        return self.state.array_records[METHOD_RECORD]

    def load(self, key: str) -> np.ndarray | None:
        record = self.state.array_records.get(METHOD_RECORD)
        return record[key].numpy() if record is not None and key in record else None

    def save(self, key: str, array: np.ndarray) -> None:
        self._record()[key] = Array(np.ascontiguousarray(array))

    def delete(self, key: str) -> None:
        record = self.state.array_records.get(METHOD_RECORD)
        if record is not None and key in record:
            del record[key]
