"""A client's own mask travels as an XOR delta against the mask it received, and a bad base is refused.

Gibbs clients report their own masks. From round 2 on they hold a mask of
version >= 1, so their replies name it as the base of the mask section; the server
resolves that base through its :class:`~server.mask_ledger.MaskLedger` and rejects
a reply naming a version the node does not hold as ``bad-payload``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, Message

from client.app import app as client_app
from common.config import load_config
from common.wire import WireFormat
from common.wire.codec import MASK, STYPES, decode_mask, mask_array, mask_base_version
from common.wire.masks import SECTION_HEADER
from server.app import run_federation
from server.mask_ledger import MaskLedger
from server.results import read_rounds
from tests.inprocess_grid import InProcessGrid
from tests.test_reply_validation import LAYOUT, NODE, TamperingGrid

pytestmark = pytest.mark.usefixtures("one_thread")
GIBBS = ["pruning.method=gibbs", "train.local-steps=2", "simulation.num-clients=3"]


def _config(folder: Path, rounds: int):
    return load_config(
        None, [*GIBBS, f"federation.rounds={rounds}", f"output.dir={folder}", "output.name=run"]
    )


class RecordingGrid(InProcessGrid):
    """Keeps every training reply with the mask its message gave the node (None: dense, version 0)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[tuple[int, np.ndarray, Message]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        sent = {}
        for m in messages:
            if m.metadata.message_type == "train":
                version = int(m.content.config_records["config"]["mask-version"])
                received = decode_mask(m.content.array_records["arrays"], LAYOUT)  # whole: nodes held 0
                sent[m.metadata.dst_node_id] = (version, LAYOUT.full_mask() if received is None else received)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.metadata.src_node_id in sent and reply.has_content():
                self.replies.append((*sent[reply.metadata.src_node_id], reply))
        return replies


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[RecordingGrid, Path]:
    """A two-round Gibbs run: round 1 under the dense mask, round 2 under the union of round 1's."""
    folder = tmp_path_factory.mktemp("gibbs")
    grid = RecordingGrid(client_app, 3)
    run_federation(grid, _config(folder, 2))
    return grid, folder


def test_client_masks_name_the_received_version_as_their_base(recorded):
    grid, folder = recorded
    versions = [version for version, _, _ in grid.replies]
    assert 0 in versions and max(versions) >= 1, "round 2 trains under a mask of version >= 1"
    for version, _, reply in grid.replies:
        assert mask_base_version(reply.content.array_records["arrays"]) == version
    assert all(int(r["rejected"]) == 0 for r in read_rounds(folder / "run"))


def test_the_delta_is_never_larger_than_the_whole_mask(recorded):
    grid, _ = recorded
    for version, received, reply in grid.replies:
        record = reply.content.array_records["arrays"]
        own = decode_mask(
            record, LAYOUT, lambda v, base=received, named=version: base if v == named else None
        )
        whole = len(mask_array(LAYOUT, own, WireFormat()).data)
        assert len(record[MASK].data) <= whole
        if version:
            assert len(record[MASK].data) < whole  # the clients' masks stay close to the union they got


def _rebased(named: int):
    """A tamper that renames the base version of node 100's mask section."""

    def tamper(reply: Message, _sent: Message) -> list[Message]:
        arrays = reply.content.array_records["arrays"]
        section = bytearray(arrays[MASK].data)
        fmt, _, tensors = struct.unpack_from(SECTION_HEADER, section)
        struct.pack_into(SECTION_HEADER, section, 0, fmt, named, tensors)
        arrays[MASK] = Array(dtype="uint8", shape=(len(section),), stype=STYPES[MASK], data=bytes(section))
        return [reply]

    return tamper


def test_a_reply_naming_an_unknown_base_is_rejected(tmp_path, warnings_logged):
    grid = TamperingGrid(client_app, 3, tamper=_rebased(99), message_type="train", at=2)
    run_federation(grid, _config(tmp_path, 2))
    row = read_rounds(tmp_path / "run")[2]
    assert int(row["rejected"]) == 1
    assert any(
        f"train reply of node {NODE} rejected: bad-payload" in w and "version 99" in w
        for w in warnings_logged
    ), warnings_logged


def test_the_ledger_resolves_only_the_held_version():
    ledger = MaskLedger(LAYOUT)
    mask = LAYOUT.full_mask()
    mask[LAYOUT.prunable_positions[:5]] = False
    ledger.add(3, mask)
    assert np.array_equal(ledger.reply_base(3, held=3), mask)
    assert ledger.reply_base(0, held=3).all()
    with pytest.raises(LookupError, match="version 2.*holds version 3"):
        ledger.reply_base(2, held=3)
    with pytest.raises(LookupError, match="not kept"):
        ledger.reply_base(4, held=4)
