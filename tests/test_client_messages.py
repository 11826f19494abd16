"""A node that receives a bad message answers with an error reply that says why; it never crashes.

The messages are real ones, captured from an in-process run and then damaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, Context, Message, RecordDict

from client.app import app as client_app
from common.config import load_config
from common.wire.codec import STYPES
from common.wire.values import decode_values, encode_values, read_header
from server.app import run_federation
from tests.inprocess_grid import InProcessGrid, through_wire

NODE = 101  # partition 1: round 1 sends it the mask (initial pruning ran on partition 0)
RUN = [
    "simulation.num-clients=3",
    "federation.rounds=1",
    "train.local-steps=1",
    "evaluate.client-fraction=1.0",
    "pruning.prunefl.initial-pruning=client",
    "pruning.prunefl.ip-batches=2",
    "pruning.prunefl.ip-max-rounds=2",
    "pruning.prunefl.ip-reconfig-interval=1",
    "pruning.prunefl.ip-eval-interval=1",
    "pruning.prunefl.ip-accuracy-factor=0",
]


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> dict[str, Message]:
    """One real message of each type, as the server sent it."""
    folder = tmp_path_factory.mktemp("captured")
    grid = InProcessGrid(client_app, 3)
    run_federation(grid, load_config(None, [f"output.dir={folder}", "output.name=run", *RUN]))
    messages: dict[str, Message] = {}
    for message in grid.sent:
        kind = message.metadata.message_type
        if message.metadata.dst_node_id == NODE or kind == "train.initial_pruning":
            messages.setdefault(kind, message)
    return messages


def answer(message: Message, node_config: dict | None, captured: dict[str, Message]) -> Message:
    """A fresh node's reply to ``message``; before an evaluation it trains once and so holds the mask."""
    context = Context(
        run_id=7,
        node_id=NODE,
        node_config=node_config if node_config is not None else {"partition-id": 1, "num-partitions": 3},
        state=RecordDict(),
        run_config={},
    )
    if message.metadata.message_type == "evaluate":
        assert not client_app(through_wire(captured["train"]), context).has_error()
    return client_app(through_wire(message), context)


Damage = Callable[[Message], None]


def config(key: str, value) -> Damage:
    def damage(message: Message) -> None:
        message.content.config_records["config"][key] = value

    return damage


def no_config(key: str) -> Damage:
    def damage(message: Message) -> None:
        del message.content.config_records["config"][key]

    return damage


def numbers(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Damage:
    """Decode value section ``name``, change its numbers and encode them again."""

    def damage(message: Message) -> None:
        record = message.content.array_records["arrays"]
        section = record[name].data
        values, _ = decode_values(section, read_header(section, name)[1], name)
        record[name] = raw_array(name, encode_values(change(values), "float32", 1))

    return damage


def section(name: str, change: Callable[[bytes], bytes | None]) -> Damage:
    """Change the bytes of array ``name`` (None: remove the array)."""

    def damage(message: Message) -> None:
        record = message.content.array_records["arrays"]
        data = change(record[name].data)
        if data is None:
            del record[name]
        else:
            record[name] = raw_array(name, data)

    return damage


def put(name: str, array: Array) -> Damage:
    def damage(message: Message) -> None:
        message.content.array_records["arrays"][name] = array

    return damage


def raw_array(name: str, data: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(data),), stype=STYPES[name], data=data)


def no_record(kind: str, name: str) -> Damage:
    def damage(message: Message) -> None:
        del getattr(message.content, kind)[name]

    return damage


CASES: dict[str, tuple[str, Damage, dict | None, str]] = {
    # name: (message type, damage, node config (None: a good one), expected start of the reason)
    "no-config-record": (
        "train",
        no_record("config_records", "config"),
        None,
        "bad message: the message has no config",
    ),
    "missing-task-key": ("train", no_config("lr"), None, "bad message: config key 'lr' = None"),
    "lr-not-a-number": ("train", config("lr", "fast"), None, "bad message: config key 'lr' = 'fast'"),
    "batch-size-zero": ("train", config("batch-size", 0), None, "bad message: config key 'batch-size' = 0"),
    "steps-float": ("train", config("local-steps", 2.5), None, "bad message: config key 'local-steps' = 2.5"),
    "negative-mask-version": (
        "train",
        config("mask-version", -1),
        None,
        "bad message: config key 'mask-version'",
    ),
    "bad-importance-request": (
        "train",
        config("importance", "sometimes"),
        None,
        "bad message: config key 'importance'",
    ),
    "wrong-layout": (
        "train",
        config("layout", "0123456789abcdef"),
        None,
        "bad message: model layout 0123456789abcdef",
    ),
    "unknown-model": ("train", config("model", "gpt-5"), None, "bad message: unknown model 'gpt-5'"),
    "unknown-dataset": (
        "train",
        config("dataset", "imagenet"),
        None,
        "bad message: unknown dataset 'imagenet'",
    ),
    "unknown-method": (
        "train",
        config("method", "magic"),
        None,
        "bad message: unknown pruning method 'magic'",
    ),
    "no-arrays": (
        "train",
        no_record("array_records", "arrays"),
        None,
        "bad message: the message carries no model",
    ),
    "values-truncated": (
        "train",
        numbers("values", lambda v: v[:-7]),
        None,
        "bad message: array 'values' has",
    ),
    "values-as-npy": (
        "train",
        put("values", Array(np.zeros(3, np.float32))),
        None,
        "bad message: array 'values' has stype 'numpy.ndarray'",
    ),
    "values-undecodable": (
        "train",
        section("values", lambda b: b"junk"),
        None,
        "bad message: array 'values' is truncated",
    ),
    "values-nan": (
        "train",
        numbers("values", lambda v: np.full_like(v, np.nan)),
        None,
        "bad message: the model's values contain NaN",
    ),
    "unexpected-array": (
        "train",
        put("extra", Array(np.zeros(2, np.float32))),
        None,
        "bad message: unexpected arrays ['extra']",
    ),
    "mask-truncated": (
        "train",
        section("mask", lambda b: b[:-1]),
        None,
        "bad message: mask section is truncated",
    ),
    "mask-too-long": (
        "train",
        section("mask", lambda b: b + b"\0"),
        None,
        "bad message: mask section has 1 bytes past its last section",
    ),
    "mask-missing": (
        "train",
        section("mask", lambda b: None),
        None,
        "stale-mask: node holds mask version 0, the message needs 1",
    ),
    "no-partition-id": (
        "train",
        lambda m: None,
        {"num-partitions": 3},
        "bad message: node config 'partition-id' = None",
    ),
    "partition-out-of-range": (
        "train",
        lambda m: None,
        {"partition-id": 5, "num-partitions": 3},
        "bad message: node config 'partition-id' = 5",
    ),
    "evaluate-values-truncated": (
        "evaluate",
        numbers("values", lambda v: v[:5]),
        None,
        "bad message: array 'values' has 5 entries",
    ),
    "evaluate-no-config": (
        "evaluate",
        no_record("config_records", "config"),
        None,
        "bad message: the message has no config",
    ),
    "ip-no-cost-model": (
        "train.initial_pruning",
        no_config("cost-t0"),
        None,
        "bad message: cost model entries missing",
    ),
    "ip-no-batches": (
        "train.initial_pruning",
        no_config("ip-batches"),
        None,
        "bad message: config 'ip-batches' = None",
    ),
    "ip-bad-method-setting": (
        "train.initial_pruning",
        config("pruning.prunefl.max-density", 7.0),
        None,
        "bad message: config key 'pruning.prunefl.max-density'",
    ),
    "describe-wrong-type": (
        "query.describe",
        config("alpha", "high"),
        None,
        "bad message: config key 'alpha' = 'high'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_message_gets_an_error_reply_that_says_why(captured, case):
    message_type, damage, node_config, expected = CASES[case]
    message = through_wire(captured[message_type])
    damage(message)
    reply = answer(message, node_config, captured)
    assert reply.has_error()
    assert reply.error.reason.startswith(expected), reply.error.reason
    assert reply.metadata.reply_to_message_id == message.metadata.message_id


@pytest.mark.parametrize("message_type", ["query.describe", "train", "evaluate", "train.initial_pruning"])
def test_the_undamaged_messages_are_answered(captured, message_type):
    node_config = (
        {"partition-id": 0, "num-partitions": 3} if message_type == "train.initial_pruning" else None
    )
    reply = answer(captured[message_type], node_config, captured)
    assert not reply.has_error(), reply.error.reason
    metrics = reply.content.metric_records.get("metrics")
    assert metrics is None or all(not isinstance(v, float) or math.isfinite(v) for v in metrics.values())
