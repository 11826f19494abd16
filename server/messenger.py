"""Building the messages that carry the model, and logging the bytes of every message.

Every message the server sends or receives goes through :meth:`Messenger.log`,
which measures its serialised size (see :mod:`common.wire.accounting`) and
computes its bound from what it actually carries (see :mod:`common.wire.bound`).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import no_object_id_recompute

from common import keys
from common.wire import (
    MessageBytes,
    WireError,
    WireFormat,
    codec,
    dense_bytes,
    mask_bound_bits,
    measure_message,
    payload_bound,
    payload_info,
)
from common.wire.values import value_bits

from .communication import CommunicationLog
from .global_model import GlobalModel
from .mask_ledger import MaskLedger
from .nodes import NodeBook, NodeInfo
from .phases import PhaseClock
from .validation import from_superlink


class Messenger:
    def __init__(
        self,
        model: GlobalModel,
        nodes: NodeBook,
        comm: CommunicationLog,
        wire: WireFormat,
    ) -> None:
        self.model = model
        self.nodes = nodes
        self.comm = comm
        self.wire = wire
        self.ledger = MaskLedger(model.layout)  # which mask version each node holds
        self.clock = PhaseClock()  # measuring bytes is timed as "accounting"

    def _mask_part(self, base: int | None) -> tuple[Array | None, float]:
        """The mask array for a node holding ``base`` (None: it needs none), and its bound in bits."""
        if base is None:
            return None, 0.0
        model = self.model
        base_mask = self.ledger.mask(base)
        array = codec.mask_array(
            model.layout, model.mask, self.wire, base_mask if base else None, base, model.kept_positions()
        )
        return array, mask_bound_bits(model.layout, model.mask, base_mask)

    def model_messages(
        self,
        targets: list[NodeInfo],
        message_type: str,
        config: ConfigRecord,
        server_round: int,
        phase: str,
    ) -> list[Message]:
        """One message per node: the kept values, plus the mask where the node's copy is stale.

        A node holding an older version that the server still keeps gets the XOR
        delta against it, any other stale node the whole mask; nodes that need
        the same thing share one record (and the values array is encoded once).
        The mask of version 0 is the dense one, which every node knows.
        """
        model = self.model
        version = model.mask_version
        self.ledger.add(version, model.mask)
        self.ledger.keep_only(version, (n.node_id for n in self.nodes.ordered()))
        kept = model.kept_values()
        values = codec.values_array(kept, self.wire)
        counters = codec.counters_array(model.ints) if model.ints.size else None
        values_bound = payload_bound(model.layout, 0.0, len(kept), value_bits(self.wire.values))
        records: dict[int | None, tuple[RecordDict, float]] = {}
        messages = []
        # The messages share their records, which do not change until they are sent: each
        # object's id (a SHA-256 of its content) is computed once, not once per message.
        with no_object_id_recompute():
            for node in targets:
                base = self.ledger.base_for(node.node_id, version)
                if base not in records:
                    arrays = {codec.VALUES: values}
                    if counters is not None:
                        arrays[codec.COUNTERS] = counters
                    mask, mask_bits = self._mask_part(base)
                    if mask is not None:
                        arrays[codec.MASK] = mask
                    content = RecordDict({keys.ARRAYS: ArrayRecord(arrays), keys.CONFIG: config})
                    records[base] = (content, values_bound + mask_bits / 8)
                content, bound = records[base]
                message = Message(
                    content=content,
                    message_type=message_type,
                    dst_node_id=node.node_id,
                    group_id=str(server_round),
                )
                self.log(message, server_round, phase, "down", node.node_id, bound)
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
        """Ask nodes not seen before for their partition; log both directions as setup.

        Under lazy description (:mod:`server.nodes`) the queries go out when a node is
        first sampled, in whatever round; they are still logged as round 0's setup, the
        traffic of joining, so that a round's own counts (its messages and bytes, from
        which the cost model's c_comm is measured) are those of its training and
        evaluation. Their time counts as the server's setup phase of the round.
        """

        def exchange(query: Message, reply: Message | None) -> None:
            self.log(query, 0, "setup", "down", query.metadata.dst_node_id)
            if reply is not None and not from_superlink(reply):
                self.log(reply, 0, "setup", "up", reply.metadata.src_node_id)

        self.nodes.refresh(
            grid,
            lambda node_id: self.config_message(node_id, keys.DESCRIBE, task, 0),
            exchange,
            timeout,
            lambda: self.clock.phase("setup"),
        )

    def bound_of(self, record: ArrayRecord, mask: np.ndarray | None = None) -> float:
        """The bound of a received payload, from what it carries.

        ``mask`` is the mask the payload carries when the caller decoded it already;
        otherwise a carried mask is decoded here (a reply that was rejected).
        """
        layout = self.model.layout
        try:
            info = payload_info(record)
            mask_bits = 0.0
            if info.mask_base is not None:
                if mask is None:
                    mask = codec.decode_mask(record, layout, self.ledger.mask)
                mask_bits = mask_bound_bits(layout, mask, self.ledger.mask(info.mask_base))
        except WireError:
            return 0.0  # an unreadable payload: rejected where it is decoded
        return payload_bound(
            layout, mask_bits, info.num_values, info.value_bits, info.num_importance, info.importance_bits
        )

    def measure(self, message: Message) -> MessageBytes:
        """A message's serialised bytes (timed as accounting), without logging it."""
        with self.clock.phase("accounting"):
            return measure_message(message)

    def log_reply(
        self,
        reply: Message,
        server_round: int,
        phase: str,
        node_id: int,
        measured: MessageBytes | None = None,
        mask: np.ndarray | None = None,
    ) -> MessageBytes:
        """Log a reply as ``node_id``'s upload, unless the SuperLink wrote it (a "Node
        Unavailable" error): that one never crossed the node's link.

        ``measured`` are its bytes when :meth:`measure` gave them already; ``mask`` the
        mask it carries, when the caller decoded it (so it is decoded once).
        """
        measured = measured if measured is not None else self.measure(reply)
        if from_superlink(reply):
            return measured
        bound = None
        if reply.has_content() and keys.ARRAYS in reply.content.array_records:
            with self.clock.phase("accounting"):
                bound = self.bound_of(reply.content.array_records[keys.ARRAYS], mask)
        return self.log(reply, server_round, phase, "up", node_id, bound, measured)

    def log(
        self,
        message: Message,
        server_round: int,
        phase: str,
        direction: str,
        node_id: int,
        bound: float | None = None,
        measured: MessageBytes | None = None,
    ) -> MessageBytes:
        """Measure one message (unless ``measured``), append it to the communication log
        and return its bytes.

        ``bound`` is the message's bound when the caller knows it (the payloads it
        built); otherwise it is read from the payload.
        """
        with self.clock.phase("accounting"):
            measured = measured if measured is not None else measure_message(message)
            dense = 0
            if message.has_content() and keys.ARRAYS in message.content.array_records:
                if bound is None:
                    bound = self.bound_of(message.content.array_records[keys.ARRAYS])
                dense = dense_bytes(self.model.layout)
        self.comm.record(
            server_round,
            phase,
            direction,
            node_id,
            self.nodes.partition_of(node_id),
            measured,
            bound or 0.0,
            dense,
        )
        return measured
