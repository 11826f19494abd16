"""Which mask version each node holds, and the masks of those versions, for XOR deltas.

The server's one record of what the nodes hold (the current mask and its version
are the :class:`~server.global_model.GlobalModel`'s; a node's own copy is its
:class:`~client.node_state.NodeState`'s). A node that holds mask version v needs
only the XOR of v and the current mask, so the ledger keeps the masks of the
versions some node holds as packed bits (one bit per float of the model) and
drops every version no node holds any more. Version 0 is the dense mask, which
every node knows and which is never stored. A node the ledger knows nothing of
(new, restarted, or one that reported a stale copy) is sent the whole mask.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from common.layout import ModelLayout


class MaskLedger:
    def __init__(self, layout: ModelLayout) -> None:
        self.layout = layout
        self.packed: dict[int, np.ndarray] = {}
        self.held: dict[int, int] = {}  # node id -> the mask version it holds

    def __contains__(self, version: int) -> bool:
        return version == 0 or version in self.packed

    # -- what the nodes hold -------------------------------------------------------------
    def holds(self, node_id: int) -> int | None:
        """The version ``node_id`` holds, or None when unknown."""
        return self.held.get(node_id)

    def record(self, node_ids: Iterable[int], version: int) -> None:
        """The nodes now hold ``version`` (they trained or evaluated under it, or computed it)."""
        for node_id in node_ids:
            self.held[node_id] = version

    def forget(self, node_ids: Iterable[int]) -> None:
        """What the nodes hold is unknown (they said their copy is stale)."""
        for node_id in node_ids:
            self.held.pop(node_id, None)

    # -- the masks of those versions -------------------------------------------------------
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

    def reply_base(self, named: int, held: int) -> np.ndarray:
        """The mask a node's reply codes its own mask against: version ``named``.

        ``held`` is the version the node holds: the one this round's message gave it,
        which its reply says it trained under (checked before). A reply may name that
        version or 0 (the dense mask, i.e. coded directly); any other version, or one
        the ledger no longer keeps, raises :class:`LookupError` saying which.
        """
        if named not in (0, held):
            raise LookupError(
                f"the reply's mask is a delta against version {named}, but the node holds "
                f"version {held}; allowed bases: 0 (none) or {held}"
            )
        base = self.mask(named)
        if base is None:
            raise LookupError(f"the reply's mask is a delta against version {named}, which is not kept here")
        return base

    def keep_only(self, current: int, connected: Iterable[int]) -> None:
        """Forget nodes that left and every version but ``current`` and those still held."""
        connected = set(connected)
        self.held = {node_id: v for node_id, v in self.held.items() if node_id in connected}
        keep = {current, *self.held.values()}
        for version in list(self.packed):
            if version not in keep:
                del self.packed[version]

    def base_for(self, node_id: int, current: int) -> int | None:
        """The version to send ``node_id`` a delta against, 0 for the whole mask, None if none is needed."""
        held = self.holds(node_id)
        if current == 0 or held == current:
            return None
        if held is not None and held in self:
            return held
        return 0
