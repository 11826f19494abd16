"""Who the server talks to: node descriptions and sampling.

Node ids are random, so the server asks each node once for its partition id, data
sizes and labels (a ``query.describe`` message) and orders the nodes by partition
id; sampling then draws from that order with a generator seeded by (seed, round),
which makes a run's client selection reproducible. Which mask version each node
holds is the :class:`~server.mask_ledger.MaskLedger`'s. A node may also name its
device profile (``--node-config profile=<name>``, in the description's config
record); which profile it runs on is :class:`~server.fleet.Fleet`'s to resolve.

When nodes are described
------------------------

*Eagerly* (:class:`NodeBook` with ``lazy=False``): every connected node, before
round 1, and every node that joins later, at the start of the round after it
joined. Deployments, runs in which every client trains every round and
``federation.describe = "all"`` work this way.

*Lazily* (``lazy=True``): a simulation that samples ``federation.clients-per-round``
clients describes a node in the round in which it is first sampled (or first
needed, as the node of ``ip-client`` for initial pruning on a client). Sampling
then draws from the connected nodes in the order in which they *registered* with
the SuperLink (``NodeInfo.registered_at``, which the server sees without any
message): Flower's simulation engine registers the node of partition i as the
i-th node (``vce_api._register_nodes``), so that order is the partition order,
and the draw of every round equals the eager draw: same (seed, round), same
partitions, whatever the random node ids. Nothing of that is assumed: each node is
checked when it is described (its partition id must be its registration rank, and
the federation must hold as many nodes as it has partitions); on any mismatch the
book logs a warning and describes every node instead, as eagerly.

Why lazily, and why not a cheaper describe of every node: in Flower 1.41's
simulation engine, each message waiting to be delivered costs every node's look
for messages (``InMemoryLinkState.get_message_ins`` scans all pending messages,
once per node per sweep), so describing N nodes costs O(N^2) on the server however
little the ClientApp does; measured (docs/gpus-and-clusters.md, "Many clients"),
that is what stops 10,000 nodes from starting, and a parallel or data-free
describe would not change it. Describing only the sampled nodes keeps a round's
pending messages at clients-per-round and the server's state to the nodes that
took part.

A node that refuses to describe itself (an error reply, no reply, or a description
that fails the checks of :func:`server.validation.describe_metrics`) is never used,
with a warning naming the reason; under lazy description a round whose draw hits
such a node draws again from the nodes left, which is the eager draw over the
nodes that describe themselves once every refusing node is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from common import keys

from .validation import RejectedReply, describe_metrics, described_profile, from_superlink, required_records


@dataclass
class NodeInfo:
    node_id: int
    partition_id: int
    num_partitions: int
    train_size: int
    test_size: int
    train_labels: tuple[int, ...] = ()  # samples per class, as the node reported them
    test_labels: tuple[int, ...] = ()
    profile: str = ""  # the device profile the node names itself (--node-config profile=...); "" = none


# Why a node's description cannot be used, from its claimed profile, partition id and count
# (server/fleet.py: Fleet.refusal); None when it can
ProfileCheck = Callable[[str, int, int], str | None]


@dataclass(frozen=True)
class Describer:
    """How to ask nodes for their description: bound by each :meth:`NodeBook.refresh`."""

    grid: Grid
    make_query: Callable[[int], Message]
    on_exchange: Callable[[Message, Message | None], None]
    timeout: float
    timed: Callable[[], AbstractContextManager[None]] = nullcontext  # times each exchange


def draw(pool_size: int, count: int, seed: int, server_round: int, stream: int = 0) -> list[int]:
    """Positions of ``count`` of ``pool_size`` ordered nodes (all of them for 0 or more than there are).

    A pure function of its arguments: the generator is seeded by (seed, round, stream).
    """
    if count == 0 or count >= pool_size:
        return list(range(pool_size))
    rng = np.random.default_rng([seed, server_round, stream])
    return np.sort(rng.choice(pool_size, size=count, replace=False)).tolist()


class NodeBook:
    """The nodes that described themselves, and what each one holds.

    With ``lazy`` the book also keeps every connected node's registration order
    (``registered``) and describes nodes when :meth:`sample` or :meth:`find` first
    needs them (see the module's docstring).
    """

    def __init__(self, lazy: bool = False, check_profile: ProfileCheck | None = None) -> None:
        self.check_profile = check_profile
        self.nodes: dict[int, NodeInfo] = {}  # described, usable nodes
        self.refused: dict[int, str] = {}  # node id -> why it is not used
        self.lazy = lazy
        self.registered: list[int] = []  # lazy: connected nodes, in registration order
        self._rank: dict[int, int] = {}  # lazy: node id -> position in ``registered``
        self._since: dict[int, datetime] = {}  # lazy: node id -> when it registered
        self._holders: dict[int, set[int]] = {}  # partition id -> described node ids
        self._describer: Describer | None = None

    def __len__(self) -> int:
        """Nodes that can be sampled: described ones, or (lazy) connected ones not refused."""
        if self.lazy:
            return len(self.registered) - sum(1 for n in self.refused if n in self._rank)
        return len(self.nodes)

    def ordered(self) -> list[NodeInfo]:
        """The described nodes, by partition id."""
        return sorted(self.nodes.values(), key=lambda n: (n.partition_id, n.node_id))

    def by_partition(self, partition_id: int) -> NodeInfo | None:
        """The described node of ``partition_id`` (the smallest node id if several)."""
        holders = self._holders.get(partition_id)
        return self.nodes[min(holders)] if holders else None

    def partition_of(self, node_id: int) -> int:
        node = self.nodes.get(node_id)
        return node.partition_id if node else -1

    def num_partitions(self, default: int) -> int:
        """The partition count the nodes describe; before any description, lazily, the nodes
        connected (in simulation, one per partition); else ``default``."""
        described = max((n.num_partitions for n in self.nodes.values()), default=0)
        if described:
            return described
        return len(self.registered) if self.lazy and self.registered else default

    # -- learning who is there -------------------------------------------------------------
    def refresh(
        self,
        grid: Grid,
        make_query: Callable[[int], Message],
        on_exchange: Callable[[Message, Message | None], None],
        timeout: float,
        timed: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        """Forget nodes that left; describe new connected nodes (lazily: only note them).

        The arguments are kept for the descriptions :meth:`sample` and :meth:`find` ask
        for later: ``make_query`` builds a node's describe query, ``on_exchange`` sees
        every query with its reply (None when none came within ``timeout``), and every
        exchange runs inside ``timed()``.
        """
        self._describer = Describer(grid, make_query, on_exchange, timeout, timed)
        connected = set(grid.get_node_ids())
        for node_id in list(self.nodes):
            if node_id not in connected:
                log(INFO, "node %d (partition %d) left", node_id, self.nodes[node_id].partition_id)
                self._remove(node_id)
        if self.lazy:
            self._register(connected)
            return
        self._describe(sorted(connected - set(self.nodes) - set(self.refused)))

    def _register(self, connected: set[int]) -> None:
        """Keep ``registered`` equal to the connected nodes, in registration order."""
        assert self._describer is not None
        gone = [n for n in self.registered if n not in connected]
        new = connected - set(self._rank)
        if not gone and not new:
            return
        for node_id in gone:
            self._since.pop(node_id, None)
        if new:
            seen = {info.node_id: info.registered_at for info in self._describer.grid.get_nodes()}
            for node_id in new:
                try:
                    self._since[node_id] = datetime.fromisoformat(seen.get(node_id) or "")
                except ValueError:
                    self._describe_all(f"the grid does not say when node {node_id} registered")
                    return
        self.registered = sorted(self._since, key=lambda n: (self._since[n], n))
        self._rank = {node_id: rank for rank, node_id in enumerate(self.registered)}

    def _describe(self, node_ids: list[int]) -> None:
        """Send ``node_ids`` a describe query each; add those that answer well, refuse the rest."""
        if not node_ids:
            return
        assert self._describer is not None, "refresh() binds the book to a grid first"
        with self._describer.timed():
            self._ask(self._describer, node_ids)

    def _ask(self, describer: Describer, node_ids: list[int]) -> None:
        queries = {node_id: describer.make_query(node_id) for node_id in node_ids}
        answered = describer.grid.send_and_receive(list(queries.values()), timeout=describer.timeout)
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
            describer.on_exchange(query, reply)
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
            profile = described_profile(reply.content)
        except RejectedReply as exc:
            return f"describe reply rejected: {exc}"
        if self.check_profile is not None:
            refusal = self.check_profile(profile, described.partition_id, described.num_partitions)
            if refusal:
                return refusal
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
            profile=profile,
        )
        self._holders.setdefault(described.partition_id, set()).add(node_id)
        return None

    def _remove(self, node_id: int) -> None:
        node = self.nodes.pop(node_id)
        holders = self._holders.get(node.partition_id, set())
        holders.discard(node_id)
        if not holders:
            self._holders.pop(node.partition_id, None)

    def _describe_all(self, reason: str) -> None:
        """Leave lazy description: describe every connected node now, sample as eagerly."""
        log(
            WARNING,
            "nodes: describing every node instead of the sampled ones only (%s); "
            "sampling follows the partitions the nodes describe from now on",
            reason,
        )
        self.lazy = False
        self.registered, self._rank, self._since = [], {}, {}
        assert self._describer is not None
        connected = set(self._describer.grid.get_node_ids())
        self._describe(sorted(connected - set(self.nodes) - set(self.refused)))

    def _misplaced(self, node_ids: Iterable[int]) -> str | None:
        """Why the registration order is not the partition order, if a described node shows it."""
        for node_id in node_ids:
            node = self.nodes.get(node_id)
            if node is not None and node.partition_id != self._rank[node_id]:
                return (
                    f"node {node_id}, registered as number {self._rank[node_id]}, "
                    f"describes partition {node.partition_id}"
                )
        return None

    def wait_for(
        self,
        grid: Grid,
        count: int,
        deadline_s: float,
        refresh: Callable[[], None],
    ) -> None:
        """Block until ``count`` nodes can be sampled, or raise after the deadline."""
        start = time.monotonic()
        last_log = -1.0
        while True:
            refresh()
            if len(self) >= count:
                return
            waited = time.monotonic() - start
            if waited > deadline_s:
                raise TimeoutError(
                    f"only {len(self)} of the {count} nodes needed (federation.min-clients) "
                    f"connected within federation.connect-timeout = {deadline_s:.0f} s"
                )
            if waited - last_log >= 10:
                log(INFO, "waiting for nodes: %d of %d connected", len(self), count)
                last_log = waited
            time.sleep(1.0)

    # -- choosing nodes --------------------------------------------------------------------
    def sample(self, server_round: int, count: int, seed: int, stream: int = 0) -> list[NodeInfo]:
        """``count`` nodes (0 = all), drawn reproducibly from (seed, round, stream), by partition.

        Lazily, the chosen nodes not described yet are described first; a draw that
        hits a node refusing to describe itself is drawn again without it.
        """
        while self.lazy:
            pool = [n for n in self.registered if n not in self.refused]
            chosen = [pool[i] for i in draw(len(pool), count, seed, server_round, stream)]
            self._describe([n for n in chosen if n not in self.nodes and n not in self.refused])
            if any(n in self.refused for n in chosen):
                continue  # one more node known to refuse: the pool is smaller, draw again
            announced = max(self.nodes[n].num_partitions for n in chosen) if chosen else 0
            if announced > len(self.registered):  # the draw was from a pool not yet complete
                assert self._describer is not None
                self._register(set(self._describer.grid.get_node_ids()))
                if announced > len(self.registered):
                    self._describe_all(
                        f"the nodes describe {announced} partitions, "
                        f"but {len(self.registered)} nodes are connected"
                    )
                continue
            misplaced = self._misplaced(chosen)
            if misplaced:
                self._describe_all(misplaced)
                continue
            return [self.nodes[n] for n in chosen]
        ordered = self.ordered()
        return [ordered[i] for i in draw(len(ordered), count, seed, server_round, stream)]

    def find(self, partition_id: int) -> NodeInfo | None:
        """The node of ``partition_id``, described first if it has not been (lazily)."""
        if self.lazy and 0 <= partition_id < len(self.registered):
            node_id = self.registered[partition_id]
            if node_id not in self.nodes and node_id not in self.refused:
                self._describe([node_id])
            misplaced = self._misplaced([node_id])
            if misplaced:
                self._describe_all(misplaced)
        return self.by_partition(partition_id)
