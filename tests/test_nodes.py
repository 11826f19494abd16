"""Who is described when, and who is sampled: eager and lazy description, hand-computed cases.

The draws below are numpy's for the seeds given (``draw(10, 3, 0, 1) == [4, 8, 9]``,
``draw(9, 3, 0, 1) == [3, 7, 8]``, ...); every other expectation follows from them by
hand: which partitions a position stands for, which nodes must have been asked.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.proto.node_pb2 import NodeInfo as FlowerNodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

import server.app
import server.arrivals
from client.app import app as client_app
from common import keys
from common.config import load_config
from server.app import describes_lazily, run_federation
from server.nodes import NodeBook, draw
from tests.inprocess_grid import InProcessGrid

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# random-looking node ids, deliberately not in partition order
IDS = [9_081, 17, 5_550, 312, 77_001, 4, 60_606, 1_234, 808, 2_500]


def registered_at(rank: int) -> str:
    return (T0 + timedelta(microseconds=7 * rank)).isoformat()  # isoformat omits .000000


class ScriptedGrid(Grid):
    """Nodes that describe a given partition; ``order`` is their registration order."""

    def __init__(
        self,
        partitions: dict[int, int],
        order: list[int] | None = None,
        refuse: dict[int, str] | None = None,
        visible: int | None = None,
    ) -> None:
        self.partitions = partitions
        self.order = order or sorted(partitions, key=partitions.__getitem__)
        self.refuse = refuse or {}  # node id -> "error" or "silent"
        self.visible = len(self.order) if visible is None else visible  # registered so far
        self.asked: list[int] = []  # destinations of the describe queries, in order
        self._run = Run.create_empty(7)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(reversed(self.order[: self.visible]))  # any order: the book must not care

    def get_nodes(self) -> Iterable[FlowerNodeInfo]:
        return [FlowerNodeInfo(node_id=n, registered_at=registered_at(r)) for r, n in enumerate(self.order)][
            : self.visible
        ]

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            node_id = message.metadata.dst_node_id
            self.asked.append(node_id)
            behaviour = self.refuse.get(node_id)
            if behaviour == "silent":
                continue
            if behaviour == "error":
                reply = Message(Error(code=1, reason="RuntimeError: out of memory"), reply_to=message)
            else:
                metrics = {
                    keys.PARTITION_ID: self.partitions[node_id],
                    keys.NUM_PARTITIONS: len(self.partitions),
                    keys.TRAIN_SIZE: 5,
                    keys.TEST_SIZE: 1,
                }
                reply = Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=message)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            replies.append(reply)
        self.visible = len(self.order)  # a node answers only once the engine registered them all
        return replies


def federation(order: list[int] | None = None, **kwargs) -> ScriptedGrid:
    """Ten nodes IDS[p] of partition p (p = 0..9), registered in partition order by default."""
    return ScriptedGrid({node_id: p for p, node_id in enumerate(IDS)}, order, **kwargs)


def bound(book: NodeBook, grid: Grid, exchanges: list | None = None) -> NodeBook:
    def query(node_id: int) -> Message:
        return Message(RecordDict({keys.CONFIG: ConfigRecord({})}), node_id, keys.DESCRIBE, group_id="0")

    book.refresh(grid, query, lambda q, r: (exchanges if exchanges is not None else []).append((q, r)), 1.0)
    return book


def partitions(nodes) -> list[int]:
    return [n.partition_id for n in nodes]


def test_draw_is_a_pure_function_of_seed_round_and_stream():
    assert draw(10, 3, 0, 1) == [4, 8, 9] == draw(10, 3, 0, 1)
    assert draw(10, 3, 0, 2) == [0, 2, 7]
    assert draw(10, 3, 0, 1, stream=1) == [5, 7, 8]  # evaluation's stream
    assert draw(10, 3, 5, 1) == [1, 6, 7]
    assert draw(9, 3, 0, 1) == [3, 7, 8]
    assert draw(10, 0, 0, 1) == list(range(10)) == draw(10, 10, 0, 1) == draw(10, 12, 0, 1)


def test_eager_book_describes_everyone_at_once_and_samples_by_partition():
    grid = federation()
    book = bound(NodeBook(), grid)
    assert sorted(grid.asked) == sorted(IDS) and len(book) == 10
    assert partitions(book.sample(1, 3, seed=0)) == [4, 8, 9]
    assert [n.node_id for n in book.sample(2, 3, seed=0)] == [IDS[0], IDS[2], IDS[7]]
    assert len(grid.asked) == 10  # sampling asks nobody


def test_eager_book_describes_late_joiners_and_forgets_nodes_that_leave():
    grid = federation(visible=6)  # a deployment: 6 SuperNodes connected so far
    book = bound(NodeBook(), grid)
    assert sorted(grid.asked) == sorted(IDS[:6]) and len(book) == 6
    grid.order, grid.visible = [n for n in IDS if n != IDS[2]], 9  # 7, 8 and 9 joined; 2 left
    book.refresh(grid, *_same_describer(book))
    assert sorted(grid.asked) == sorted(IDS)  # only the new ones asked
    assert len(book) == 9 and book.by_partition(2) is None and book.find(7).node_id == IDS[7]
    assert partitions(book.sample(1, 0, seed=0)) == [0, 1, 3, 4, 5, 6, 7, 8, 9]


def test_lazy_book_describes_only_the_sampled_nodes_each_once():
    grid = federation()
    exchanges: list = []
    book = bound(NodeBook(lazy=True), grid, exchanges)
    assert grid.asked == [] and book.nodes == {} and len(book) == 10
    assert book.registered == IDS  # registration order, not node-id order
    assert partitions(book.sample(1, 3, seed=0)) == [4, 8, 9]
    assert sorted(grid.asked) == sorted([IDS[4], IDS[8], IDS[9]])
    assert partitions(book.sample(2, 3, seed=0)) == [0, 2, 7]
    assert partitions(book.sample(3, 3, seed=0)) == [4, 8, 9]  # described in round 1 already
    assert sorted(grid.asked) == sorted(IDS[p] for p in (0, 2, 4, 7, 8, 9))
    assert len(exchanges) == 6 and all(r is not None for _, r in exchanges)
    assert sorted(book.nodes) == sorted(grid.asked)
    book.refresh(grid, *_same_describer(book))  # a new round: still nobody asked
    assert len(grid.asked) == 6


def _same_describer(book: NodeBook):
    d = book._describer
    return d.make_query, d.on_exchange, d.timeout


@pytest.mark.parametrize("ids", [IDS, sorted(IDS), sorted(IDS, reverse=True)])
def test_lazy_and_eager_draw_the_same_partitions_whatever_the_node_ids(ids):
    grid = ScriptedGrid({node_id: p for p, node_id in enumerate(ids)})
    eager, lazy = bound(NodeBook(), federation()), bound(NodeBook(lazy=True), grid)
    for server_round in range(1, 8):
        for stream, count in ((0, 3), (1, 2)):
            expected = partitions(eager.sample(server_round, count, 0, stream))
            assert partitions(lazy.sample(server_round, count, 0, stream)) == expected
    assert partitions(lazy.sample(9, 0, 0)) == list(range(10))  # all: everyone described now
    assert sorted(grid.asked) == sorted(ids)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("error", "describe failed: RuntimeError: out of memory"), ("silent", "no reply to the describe query")],
)
def test_a_node_that_will_not_describe_itself_is_left_out_and_the_round_drawn_again(
    behaviour, reason, warnings_logged
):
    refuse = {IDS[8]: behaviour}
    lazy = bound(NodeBook(lazy=True), grid := federation(refuse=refuse))
    # round 1 draws positions [4, 8, 9] of 10: partition 8 refuses; then [3, 7, 8] of the
    # 9 left (0..7, 9): partitions 3, 7 and 9
    assert partitions(lazy.sample(1, 3, seed=0)) == [3, 7, 9]
    assert sorted(grid.asked) == sorted(IDS[p] for p in (3, 4, 7, 8, 9))
    assert lazy.refused == {IDS[8]: reason} and len(lazy) == 9
    assert f"node {IDS[8]} not used: {reason}" in warnings_logged
    eager = bound(NodeBook(), federation(refuse=refuse))
    assert partitions(eager.sample(1, 3, seed=0)) == [3, 7, 9]  # the eager draw over the 9
    for server_round in range(2, 6):
        assert partitions(lazy.sample(server_round, 3, 0)) == partitions(eager.sample(server_round, 3, 0))
    assert grid.asked.count(IDS[8]) == 1  # a refusing node is asked once


def test_a_registration_order_that_is_not_the_partition_order_falls_back_to_describing_everyone(
    warnings_logged,
):
    order = IDS[1:] + IDS[:1]  # partition 0's node registered last
    grid = federation(order=order)
    book = bound(NodeBook(lazy=True), grid)
    # positions [4, 8, 9] are the nodes of partitions 5, 9 and 0: 5 is described first, at rank 4
    assert partitions(book.sample(1, 3, seed=0)) == [4, 8, 9]  # the eager draw, after all
    assert not book.lazy and sorted(grid.asked) == sorted(IDS) and len(grid.asked) == 10
    assert any("describing every node instead" in w and "describes partition 5" in w for w in warnings_logged)


def test_a_draw_from_an_incomplete_registration_is_drawn_again_from_all():
    grid = federation(visible=4)  # the server looked while the engine was registering nodes
    book = bound(NodeBook(lazy=True), grid)
    assert len(book) == 4
    # draw(4, 3, 0, 1) = positions of partitions 0..3; their replies announce 10 partitions
    assert partitions(book.sample(1, 3, seed=0)) == [4, 8, 9]
    assert book.lazy and len(book) == 10


def test_find_describes_the_node_of_one_partition():
    grid = federation()
    book = bound(NodeBook(lazy=True), grid)
    assert book.num_partitions(default=3) == 10  # the nodes connected, before any description
    node = book.find(6)
    assert node is not None and node.node_id == IDS[6] and grid.asked == [IDS[6]]
    assert book.find(6) is node and grid.asked == [IDS[6]]
    assert book.find(12) is None
    assert NodeBook().num_partitions(default=3) == 3


def test_a_grid_without_registration_times_is_described_eagerly(warnings_logged):
    class Timeless(ScriptedGrid):
        def get_nodes(self):
            return [FlowerNodeInfo(node_id=n) for n in self.order]

    grid = Timeless({node_id: p for p, node_id in enumerate(IDS)})
    book = bound(NodeBook(lazy=True), grid)
    assert not book.lazy and len(grid.asked) == 10
    assert partitions(book.sample(1, 3, 0)) == [4, 8, 9]
    assert any("does not say when node" in w for w in warnings_logged)


def test_only_a_simulation_that_samples_describes_lazily(monkeypatch):
    from flwr.superlink.grid import InMemoryGrid

    simulation_grid = InMemoryGrid.__new__(InMemoryGrid)  # the type is what counts

    def config(*overrides: str):
        return load_config(None, ["simulation.num-clients=10", *overrides])

    sampled = config("federation.clients-per-round=3")
    assert describes_lazily(sampled, simulation_grid)
    assert not describes_lazily(sampled, federation())  # a deployment's grid
    assert not describes_lazily(config(), simulation_grid)  # all clients, every round
    assert not describes_lazily(config("federation.clients-per-round=10"), simulation_grid)
    assert not describes_lazily(
        config("federation.clients-per-round=3", "federation.describe=all"), simulation_grid
    )


class RegisteringGrid(InProcessGrid):
    """The in-process grid with random-looking node ids, registered in partition order."""

    def __init__(self, num_nodes: int) -> None:
        super().__init__(client_app, num_nodes)
        ids = [IDS[i] for i in range(num_nodes)]
        self.contexts = dict(zip(ids, self.contexts.values(), strict=True))
        for node_id, context in self.contexts.items():
            context.node_id = node_id

    def get_nodes(self):
        return [
            FlowerNodeInfo(node_id=n, registered_at=registered_at(r)) for r, n in enumerate(self.contexts)
        ]


def read_rows(folder: Path) -> list[dict]:
    with (folder / "rounds.csv").open() as f:
        return [
            {k: v for k, v in row.items() if k not in ("wall_time_s", "elapsed_s")}
            for row in csv.DictReader(f)
        ]


# What round 0's row counts of the describe messages sent before round 1: bytes without
# arrays (other) and their ratio to the bound; a client's initial pruning also models
# the transfer of round 0's bytes, so its modelled time differs too, and with it every
# later row's modelled elapsed time, by that one constant
ROUND0_DESCRIBE = ("bytes_down", "bytes_up", "other_down", "other_up", "ratio_down", "ratio_up")


@pytest.mark.parametrize("where", ["server", "client"])
def test_a_lazily_described_run_trains_exactly_as_an_eager_one(tmp_path, monkeypatch, where):
    monkeypatch.setattr(server.arrivals, "SIMULATION_GRIDS", (RegisteringGrid,))
    overrides = [
        "simulation.num-clients=6",
        "federation.clients-per-round=2",  # draw(6, 2, 0, r) for r = 1, 2, 3: [2, 5], [0, 4], [2, 5]
        "federation.rounds=3",
        "train.local-steps=2",
        f"pruning.prunefl.initial-pruning={where}",
        "pruning.prunefl.ip-client=4",
        "pruning.prunefl.ip-max-rounds=10",
        "pruning.prunefl.reconfig-interval=2",
    ]
    runs = {}
    for describe in ("all", "auto"):
        config = load_config(
            None,
            [
                f"output.dir={tmp_path}",
                f"output.name={describe}",
                f"federation.describe={describe}",
                *overrides,
            ],
        )
        grid = RegisteringGrid(6)
        summary = run_federation(grid, config)
        asked = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == keys.DESCRIBE]
        runs[describe] = (Path(summary.results_dir), asked)
    (eager, eager_asked), (lazy, lazy_asked) = runs["all"], runs["auto"]
    assert sorted(eager_asked) == sorted(IDS[:6])
    described = [0, 2, 4, 5]  # the partitions sampled, and ip-client for initial pruning on a client
    assert sorted(lazy_asked) == sorted(IDS[p] for p in described)
    eager_rows, lazy_rows = read_rows(eager), read_rows(lazy)
    assert len(lazy_rows) == 4
    differ = {
        "modelled_elapsed_s",
        *ROUND0_DESCRIBE,
        *(["modelled_round_time_s"] if where == "client" else []),
    }
    assert [{k: v for k, v in r.items() if k not in differ} for r in lazy_rows[:1]] == [
        {k: v for k, v in r.items() if k not in differ} for r in eager_rows[:1]
    ]
    assert [{k: v for k, v in r.items() if k != "modelled_elapsed_s"} for r in lazy_rows[1:]] == [
        {k: v for k, v in r.items() if k != "modelled_elapsed_s"} for r in eager_rows[1:]
    ]
    # eager round 0 sent 6 describe queries, lazy 1 (initial pruning's client) or none
    assert int(eager_rows[0]["bytes_down"]) > int(lazy_rows[0]["bytes_down"])
    offsets = [
        float(e["modelled_elapsed_s"]) - float(z["modelled_elapsed_s"])
        for e, z in zip(eager_rows, lazy_rows, strict=True)
    ]
    assert offsets == pytest.approx([offsets[0]] * 4, abs=1e-5)  # rows.csv keeps 6 digits
    assert (offsets[0] > 0) == (where == "client")
    report = json.loads((lazy / "partitions.json").read_text())
    assert (report["description"], report["connected_clients"], report["clients"]) == ("lazy", 6, 4)
    assert [c["partition_id"] for c in report["per_client"]] == described
    assert [c["node_id"] for c in report["per_client"]] == [IDS[p] for p in described]
    assert "description" not in json.loads((eager / "partitions.json").read_text())
