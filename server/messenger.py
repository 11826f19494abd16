"""Building the messages that carry the model, and logging the bytes of every message.

Every message the server sends or receives goes through :meth:`Messenger.log`,
which measures its serialised size (see :mod:`common.wire.accounting`) and
computes its bound from what it actually carries (see :mod:`common.wire.bound`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from common import keys
from common.wire import codec, dense_bytes, measure_message, payload_bound
from common.wire.codec import ModelPayload, encode_payload

from .communication import CommunicationLog
from .global_model import GlobalModel
from .nodes import NodeBook, NodeInfo


def from_superlink(reply: Message) -> bool:
    """Whether the SuperLink wrote ``reply`` itself, on behalf of a node.

    Flower 1.41's SuperLink answers a message whose destination node stopped
    sending heartbeats (2 x its 30 s interval) with an error reply of its own
    ("Node Unavailable"), whose source is the SuperLink, not the node.
    """
    return reply.metadata.src_node_id == SUPERLINK_NODE_ID


class Destinations:
    """Which node each sent message went to, to attribute every reply to its node.

    Message ids are set when the grid pushes the messages, so the mapping is
    read from the same message objects after they were sent.
    """

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self.messages = list(messages)

    def node_of(self, reply: Message) -> int:
        """The node ``reply`` answers for: the destination of the message it replies to."""
        for message in self.messages:
            if message.metadata.message_id == reply.metadata.reply_to_message_id:
                return message.metadata.dst_node_id
        return reply.metadata.src_node_id


class Messenger:
    def __init__(self, model: GlobalModel, nodes: NodeBook, comm: CommunicationLog) -> None:
        self.model = model
        self.nodes = nodes
        self.comm = comm

    def _payload_record(self, with_mask: bool) -> ArrayRecord:
        model = self.model
        return encode_payload(
            ModelPayload(
                values=model.kept_values(),
                counters=model.ints,
                mask=model.layout.prunable_part(model.mask) if with_mask else None,
            )
        )

    def model_messages(
        self,
        targets: list[NodeInfo],
        message_type: str,
        config: ConfigRecord,
        server_round: int,
        phase: str,
    ) -> list[Message]:
        """One message per node: the kept values, plus the mask where the node's copy is stale.

        The mask of version 0 is the dense one, which every node knows.
        """
        version = self.model.mask_version
        records: dict[bool, RecordDict] = {}
        messages = []
        for node in targets:
            with_mask = version != 0 and node.mask_version != version
            if with_mask not in records:
                records[with_mask] = RecordDict(
                    {keys.ARRAYS: self._payload_record(with_mask), keys.CONFIG: config}
                )
            message = Message(
                content=records[with_mask],
                message_type=message_type,
                dst_node_id=node.node_id,
                group_id=str(server_round),
            )
            self.log(message, server_round, phase, "down", node.node_id)
            messages.append(message)
        return messages

    def config_message(
        self, node_id: int, message_type: str, config: ConfigRecord, server_round: int
    ) -> Message:
        return Message(
            content=RecordDict({keys.CONFIG: config}),
            message_type=message_type,
            dst_node_id=node_id,
            group_id=str(server_round),
        )

    def describe_new_nodes(self, grid: Grid, task: ConfigRecord, timeout: float) -> None:
        """Ask nodes not seen before for their partition; log both directions as setup."""

        def exchange(query: Message, reply: Message | None) -> None:
            self.log(query, 0, "setup", "down", query.metadata.dst_node_id)
            if reply is not None and not from_superlink(reply):
                self.log(reply, 0, "setup", "up", query.metadata.dst_node_id)

        self.nodes.refresh(
            grid,
            lambda node_id: self.config_message(node_id, keys.DESCRIBE, task, 0),
            exchange,
            timeout,
        )

    def log(self, message: Message, server_round: int, phase: str, direction: str, node_id: int) -> None:
        """Measure one message and append it to the communication log."""
        measured = measure_message(message)
        bound, dense = 0.0, 0
        if message.has_content() and keys.ARRAYS in message.content.array_records:
            record = message.content.array_records[keys.ARRAYS]
            bound = payload_bound(
                self.model.layout,
                self.model.mask,
                mask_sent=codec.MASK in record,
                num_values=_length(record, codec.VALUES),
                num_importance=_length(record, codec.IMPORTANCE),
            )
            dense = dense_bytes(self.model.layout)
        self.comm.record(
            server_round,
            phase,
            direction,
            node_id,
            self.nodes.partition_of(node_id),
            measured,
            bound,
            dense,
        )


def _length(record: ArrayRecord, name: str) -> int:
    if name not in record:
        return 0
    return int(np.prod(record[name].shape, dtype=np.int64))
