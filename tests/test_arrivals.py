"""ArrivingReplies: the replies come out one pull at a time, and nothing is lost or waited for in vain."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from ray import cloudpickle  # what Ray pickles a simulation's messages with

from common.wire import measure_message
from server.arrivals import DEPLOYMENT_INTERVAL_S, SIMULATION_INTERVAL_S, ArrivingReplies, pull_interval
from server.phases import WAITING, PhaseClock
from tests.inprocess_grid import InProcessGrid

echo = ClientApp()


@echo.train()
def answer(message: Message, context: Context) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"node": context.node_id})}), reply_to=message)


class OneReplyPerPull(InProcessGrid):
    """A link on which a pull finds at most one reply (the others have not arrived yet)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pulls = 0

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        self.pulls += 1
        first, self.outbox = self.outbox[:1], self.outbox[1:]
        return first


def messages(grid: InProcessGrid) -> list[Message]:
    return [grid.create_message(RecordDict(), "train", node, "1") for node in grid.get_node_ids()]


def test_each_reply_comes_out_as_its_pull_finds_it():
    grid = OneReplyPerPull(echo, 3)
    replies = ArrivingReplies(grid).send_and_receive(messages(grid), timeout=10)
    assert len(grid.sent) == 3 and grid.pulls == 0  # pushed at once, nothing pulled yet
    first = next(replies)
    assert grid.pulls == 1 and len(grid.outbox) == 2  # handed over before the rest was pulled
    rest = list(replies)
    assert [r.content.config_records["config"]["node"] for r in [first, *rest]] == [100, 101, 102]
    assert grid.pulls == 3  # it stops when every message has its reply, without another look


def test_a_missing_reply_is_waited_for_until_the_timeout_only():
    grid = InProcessGrid(echo, 3, drop=lambda m: m.metadata.dst_node_id == 101)
    started = time.monotonic()
    replies = list(ArrivingReplies(grid, interval=0.01).send_and_receive(messages(grid), timeout=0.2))
    waited = time.monotonic() - started
    assert [r.metadata.src_node_id for r in replies] == [100, 102]
    assert waited >= 0.2  # it ended at a look after the deadline, not before


def test_a_reply_that_arrived_while_the_server_was_busy_is_still_collected():
    grid = OneReplyPerPull(echo, 2)
    replies = ArrivingReplies(grid, interval=0.01).send_and_receive(messages(grid), timeout=0.05)
    next(replies)
    time.sleep(0.1)  # decoding the first reply took the server past the deadline
    assert [r.metadata.src_node_id for r in replies] == [101]


def test_the_waits_pause_the_phase_that_consumes_the_replies():
    clock = PhaseClock()

    def slow():
        for item in range(3):
            time.sleep(0.02)
            yield item

    started = time.perf_counter()
    with clock.phase("decode"):
        assert list(clock.waiting(slow())) == [0, 1, 2]
    elapsed = time.perf_counter() - started
    assert clock.seconds[WAITING] >= 0.06  # the three sleeps happened while getting the items
    assert clock.seconds["decode"] <= elapsed - 0.06  # and none of them counts as decoding


def test_a_grid_other_than_the_simulations_is_pulled_every_tenth_of_a_second():
    assert pull_interval(InProcessGrid(echo, 1)) == DEPLOYMENT_INTERVAL_S > SIMULATION_INTERVAL_S


def _measured_message(grid: InProcessGrid) -> Message:
    data = np.random.default_rng(0).bytes(1 << 20)
    arrays = ArrayRecord({"values": Array("uint8", (len(data),), "fedprune.values.v1", data)})
    message = grid.create_message(RecordDict({"arrays": arrays}), "train", 100, "1")
    measure_message(message)  # cuts and hashes the chunks, and keeps them on the array
    return message


class StoringGrid(InProcessGrid):
    """A link that stores what is pushed and delivers nothing, as the in-memory grid stores it."""

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        self.stored = list(messages)
        return [m.metadata.message_id for m in self.stored]


def test_a_message_that_reaches_its_node_pickled_carries_its_data_once():
    grid = StoringGrid(echo, 1)
    message = _measured_message(grid)
    array = message.content.array_records["arrays"]["values"]
    measured_id = array.object_id
    assert len(cloudpickle.dumps(message)) > 2 * len(array.data)  # the chunk views pickle as a second copy
    ArrivingReplies(grid, pickles=True).push_messages([message])
    assert grid.stored == [message]
    assert len(cloudpickle.dumps(message)) < len(array.data) + 10_000
    assert array.object_id == measured_id  # the id stays; only the chunk list is gone


def test_a_message_sent_as_objects_keeps_its_chunks_for_the_grid():
    grid = StoringGrid(echo, 1)
    message = _measured_message(grid)
    chunks = message.content.array_records["arrays"]["values"].slice_array()
    ArrivingReplies(grid).push_messages([message])  # not a simulation's grid: nothing is pickled
    assert message.content.array_records["arrays"]["values"].slice_array() is chunks
