"""The masks that nodes may still hold, by version, for XOR deltas.

A node that holds mask version v needs only the XOR of v and the current mask,
so the server keeps the recent masks as packed bits (one bit per float of the
model) and drops every version no node holds any more. Version 0 is the dense
mask, which every node knows and which is never stored.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from common.layout import ModelLayout


class MaskHistory:
    def __init__(self, layout: ModelLayout) -> None:
        self.layout = layout
        self.packed: dict[int, np.ndarray] = {}

    def __contains__(self, version: int) -> bool:
        return version == 0 or version in self.packed

    def add(self, version: int, mask: np.ndarray) -> None:
        if version != 0 and version not in self.packed:
            self.packed[version] = np.packbits(mask)

    def mask(self, version: int) -> np.ndarray | None:
        """The full mask of ``version``, or None if it is not kept."""
        if version == 0:
            return self.layout.full_mask()
        packed = self.packed.get(version)
        if packed is None:
            return None
        return np.unpackbits(packed, count=self.layout.num_floats).view(bool)

    def keep_only(self, versions: Iterable[int | None]) -> None:
        """Forget every version not in ``versions`` (the current one and those nodes hold)."""
        keep = set(versions)
        for version in list(self.packed):
            if version not in keep:
                del self.packed[version]

    def base_for(self, held: int | None, current: int) -> int | None:
        """The version to send a delta against, 0 for the whole mask, None if none is needed."""
        if current == 0 or held == current:
            return None
        if held is not None and held in self:
            return held
        return 0
