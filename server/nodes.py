"""Who the server talks to: node descriptions and sampling.

Node ids are random, so the server asks every new node once for its partition id
(a ``query.describe`` message) and orders nodes by it; sampling then draws from
that order with a generator seeded by (seed, round), which makes a run's client
selection reproducible. Which mask version each node holds is the
:class:`~server.mask_ledger.MaskLedger`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from common import keys

from .validation import RejectedReply, describe_metrics, from_superlink, required_records


@dataclass
class NodeInfo:
    node_id: int
    partition_id: int
    num_partitions: int
    train_size: int
    test_size: int
    train_labels: tuple[int, ...] = ()  # samples per class, as the node reported them
    test_labels: tuple[int, ...] = ()


class NodeBook:
    """The nodes that described themselves, and what each one holds."""

    def __init__(self) -> None:
        self.nodes: dict[int, NodeInfo] = {}
        self.refused: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.nodes)

    def ordered(self) -> list[NodeInfo]:
        return sorted(self.nodes.values(), key=lambda n: (n.partition_id, n.node_id))

    def by_partition(self, partition_id: int) -> NodeInfo | None:
        return next((n for n in self.ordered() if n.partition_id == partition_id), None)

    def partition_of(self, node_id: int) -> int:
        node = self.nodes.get(node_id)
        return node.partition_id if node else -1

    def refresh(
        self,
        grid: Grid,
        make_query: Callable[[int], Message],
        on_exchange: Callable[[Message, Message | None], None],
        timeout: float,
    ) -> None:
        """Describe connected nodes not seen before; forget nodes that left."""
        connected = set(grid.get_node_ids())
        for node_id in list(self.nodes):
            if node_id not in connected:
                log(INFO, "node %d (partition %d) left", node_id, self.nodes[node_id].partition_id)
                del self.nodes[node_id]
        new = sorted(connected - set(self.nodes) - set(self.refused))
        if not new:
            return
        queries = {node_id: make_query(node_id) for node_id in new}
        answered = list(grid.send_and_receive(list(queries.values()), timeout=timeout))
        # An error reply the SuperLink writes for an unreachable node comes from the
        # SuperLink, not the node: it answers for the node its query went to.
        by_id = {q.metadata.message_id: node_id for node_id, q in queries.items()}
        replies = {
            by_id.get(r.metadata.reply_to_message_id, -1) if from_superlink(r) else r.metadata.src_node_id: r
            for r in answered
        }
        for node_id, query in queries.items():
            reply = replies.get(node_id)
            reason = self._add(node_id, reply)
            on_exchange(query, reply)
            if reason:
                self.refused[node_id] = reason
                log(WARNING, "node %d not used: %s", node_id, reason)

    def _add(self, node_id: int, reply: Message | None) -> str | None:
        if reply is None:
            return "no reply to the describe query"
        if reply.has_error():
            return f"describe failed: {reply.error.reason}"
        try:
            required_records(reply.content, [], [keys.METRICS])
            described = describe_metrics(reply.content.metric_records[keys.METRICS])
        except RejectedReply as exc:
            return f"describe reply rejected: {exc}"
        twin = self.by_partition(described.partition_id)
        if twin is not None:
            log(
                WARNING,
                "node %d describes partition %d, which node %d holds too; both take part",
                node_id,
                described.partition_id,
                twin.node_id,
            )
        self.nodes[node_id] = NodeInfo(
            node_id=node_id,
            partition_id=described.partition_id,
            num_partitions=described.num_partitions,
            train_size=described.train_size,
            test_size=described.test_size,
            train_labels=described.train_labels,
            test_labels=described.test_labels,
        )
        return None

    def wait_for(
        self,
        grid: Grid,
        count: int,
        deadline_s: float,
        refresh: Callable[[], None],
    ) -> None:
        """Block until ``count`` nodes described themselves, or raise after the deadline."""
        start = time.monotonic()
        last_log = -1.0
        while True:
            refresh()
            if len(self.nodes) >= count:
                return
            waited = time.monotonic() - start
            if waited > deadline_s:
                raise TimeoutError(
                    f"only {len(self.nodes)} of the {count} nodes needed (federation.min-clients) "
                    f"connected within federation.connect-timeout = {deadline_s:.0f} s"
                )
            if waited - last_log >= 10:
                log(INFO, "waiting for nodes: %d of %d connected", len(self.nodes), count)
                last_log = waited
            time.sleep(1.0)

    def sample(self, server_round: int, count: int, seed: int, stream: int = 0) -> list[NodeInfo]:
        """``count`` nodes (0 = all), drawn reproducibly from (seed, round, stream)."""
        ordered = self.ordered()
        if count == 0 or count >= len(ordered):
            return ordered
        rng = np.random.default_rng([seed, server_round, stream])
        chosen = np.sort(rng.choice(len(ordered), size=count, replace=False))
        return [ordered[i] for i in chosen]
