"""Hostile and broken replies: each is dropped with a reason and counted, the round goes on.

Every case runs the whole app in process and forges one reply of node 100
(partition 0) in round 1; the reference run drops that reply altogether, so
"the round aggregates the rest" means: the same final model as the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from client.app import app as client_app
from common.config import load_config
from common.layout import ModelLayout
from common.models import build_model
from common.wire import ModelPayload, WireFormat, encode_payload, measure_message
from common.wire.codec import STYPES, mask_array
from common.wire.values import decode_values, encode_values, read_header
from server.app import RunError, run_federation
from server.results import read_rounds
from server.validation import max_reply_bytes
from tests.inprocess_grid import InProcessGrid, through_wire

NODE = 100  # partition 0
BASE = [
    "federation.rounds=1",
    # the in-process grid has every reply as it delivers: one missing then never comes
    "federation.round-timeout=0.5",
    "train.local-steps=2",
    "train.batch-size=16",
    "evaluate.server=false",
    "evaluate.client-fraction=1.0",
    # a tiny initial pruning on the server, so that the mask in force has version 1
    "pruning.prunefl.ip-batches=2",
    "pruning.prunefl.ip-max-rounds=2",
    "pruning.prunefl.ip-reconfig-interval=1",
    "pruning.prunefl.ip-eval-interval=1",
    "pruning.prunefl.ip-accuracy-factor=0",
    # round 1 reconfigures, so the clients upload importance
    "pruning.prunefl.reconfig-interval=1",
]

LAYOUT = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
Tamper = Callable[[Message, Message], list[Message]]  # (reply, the message it answers) -> replies


class TamperingGrid(InProcessGrid):
    """Replaces node 100's reply to messages of ``message_type`` in round ``at`` by ``tamper``'s."""

    def __init__(self, *args, tamper: Tamper, message_type: str, at: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tamper, self.message_type, self.at = tamper, message_type, at

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        answered = list(super().send_and_receive(messages, timeout=timeout))
        by_id = {m.metadata.message_id: m for m in messages}  # ids exist once sent
        replies = []
        for reply in answered:
            meta = reply.metadata
            if (
                meta.src_node_id == NODE
                and meta.message_type == self.message_type
                and meta.group_id == str(self.at)
            ):
                forged = self.tamper(reply, by_id[meta.reply_to_message_id])
                for message in forged:
                    message.metadata.__dict__["_message_id"] = str(uuid4())
                replies.extend(through_wire(m) for m in forged)
            else:
                replies.append(reply)
        return replies


def config(folder: Path, extra: list[str] = ()):
    return load_config(
        None, [f"output.dir={folder}", "output.name=run", "simulation.num-clients=3", *BASE, *extra]
    )


def final_model(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "run" / "model.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def without_node_100(tmp_path_factory) -> dict[str, np.ndarray]:
    """The final model when node 100's training reply in round 1 never arrives."""
    folder = tmp_path_factory.mktemp("reference")
    grid = InProcessGrid(
        client_app,
        3,
        drop=lambda m: m.metadata.dst_node_id == NODE and m.metadata.message_type == "train",
    )
    run_federation(grid, config(folder))
    return final_model(folder)


@pytest.fixture(scope="module")
def with_every_node(tmp_path_factory) -> dict[str, np.ndarray]:
    """The final model when nothing is forged."""
    folder = tmp_path_factory.mktemp("untouched")
    run_federation(InProcessGrid(client_app, 3), config(folder))
    return final_model(folder)


# -- forgeries -------------------------------------------------------------------------------------------
def metric(name: str, value) -> Tamper:
    def tamper(reply: Message, _sent: Message) -> list[Message]:
        reply.content.metric_records["metrics"][name] = value
        return [reply]

    return tamper


def drop_metric(name: str) -> Tamper:
    def tamper(reply: Message, _sent: Message) -> list[Message]:
        del reply.content.metric_records["metrics"][name]
        return [reply]

    return tamper


def numbers(name: str, change: Callable[[np.ndarray], np.ndarray | None]) -> Tamper:
    """Decode value section ``name``, change its numbers (None: drop it) and encode it again."""

    def tamper(reply: Message, _sent: Message) -> list[Message]:
        record = reply.content.array_records["arrays"]
        section = record[name].data
        numbers, _ = decode_values(section, read_header(section, name)[1], name)
        changed = change(numbers)
        if changed is None:
            del record[name]
        else:
            record[name] = raw_array(name, encode_values(changed, "float32", 1))
        return [reply]

    return tamper


def recode(name: str, fmt: str, relative: bool) -> Tamper:
    """Write value section ``name`` again in ``fmt``, flagged as an update or not."""

    def tamper(reply: Message, _sent: Message) -> list[Message]:
        record = reply.content.array_records["arrays"]
        section = record[name].data
        numbers, _ = decode_values(section, read_header(section, name)[1], name)
        record[name] = raw_array(name, encode_values(numbers, fmt, 1, relative))  # type: ignore[arg-type]
        return [reply]

    return tamper


def replace(name: str, array: Array) -> Tamper:
    """Put ``array`` in the place of array ``name``."""

    def tamper(reply: Message, _sent: Message) -> list[Message]:
        reply.content.array_records["arrays"][name] = array
        return [reply]

    return tamper


def drop_array(name: str) -> Tamper:
    def tamper(reply: Message, _sent: Message) -> list[Message]:
        del reply.content.array_records["arrays"][name]
        return [reply]

    return tamper


def raw_array(name: str, data: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(data),), stype=STYPES[name], data=data)


def metadata(field: str, value) -> Tamper:
    def tamper(reply: Message, _sent: Message) -> list[Message]:
        reply.metadata.__dict__[field] = value
        return [reply]

    return tamper


def duplicate(reply: Message, _sent: Message) -> list[Message]:
    return [reply, through_wire(reply)]


def error_reply(_reply: Message, sent: Message) -> list[Message]:
    return [Message(Error(code=1, reason="RuntimeError: out of memory"), reply_to=sent)]


def drop_record(kind: str, name: str) -> Tamper:
    def tamper(reply: Message, _sent: Message) -> list[Message]:
        del getattr(reply.content, kind)[name]
        return [reply]

    return tamper


def padded(reply: Message, _sent: Message) -> list[Message]:
    reply.content.array_records["junk"] = ArrayRecord({"pad": Array(np.zeros(400_000, np.float32))})
    return [reply]


TRAIN_CASES: dict[str, tuple[Tamper, str | None, int, int]] = {
    # name: (forgery, kind logged (None: an error reply), rejected, failures)
    "not-asked": (metadata("_src_node_id", 999), "not-asked", 1, 1),
    "duplicate": (duplicate, "duplicate", 1, 0),
    # a misdirected reply is one rejected reply, not also a node that never answered
    "wrong-round": (metadata("_group_id", "7"), "wrong-round", 1, 0),
    "wrong-message": (metadata("_reply_to_message_id", "forged"), "wrong-round", 1, 0),
    "wrong-type": (metadata("_message_type", "evaluate"), "wrong-round", 1, 0),
    "oversized": (padded, "oversized", 1, 0),
    "no-arrays": (drop_record("array_records", "arrays"), "missing", 1, 0),
    "no-metrics": (drop_record("metric_records", "metrics"), "missing", 1, 0),
    "no-samples": (drop_metric("samples-processed"), "missing", 1, 0),
    "samples-float": (metric("samples-processed", 32.5), "bad-metric", 1, 0),
    "samples-absurd": (metric("samples-processed", 10**9), "bad-metric", 1, 0),
    "samples-negative": (metric("samples-processed", -32), "bad-metric", 1, 0),
    "samples-zero": (metric("samples-processed", 0), "bad-metric", 1, 0),
    "weight-absurd": (metric("num-examples", 1e12), "bad-metric", 1, 0),
    "weight-list": (metric("num-examples", [1.0, 2.0]), "bad-metric", 1, 0),
    "loss-nan": (metric("train-loss", float("nan")), "non-finite", 1, 0),
    "stale-mask-version": (metric("mask-version", 0), "mask-version", 1, 0),
    "unknown-mask-version": (metric("mask-version", 5), "mask-version", 1, 0),
    "values-nan": (numbers("values", lambda v: np.full_like(v, np.nan)), "non-finite", 1, 0),
    "values-inf": (numbers("values", lambda v: np.where(v > 0, np.inf, v)), "non-finite", 1, 0),
    "values-truncated": (numbers("values", lambda v: v[:-1]), "bad-payload: array 'values' has", 1, 0),
    "values-missing": (numbers("values", lambda v: None), "bad-payload: array 'values' is missing", 1, 0),
    "values-as-npy": (replace("values", Array(np.zeros(3, np.float32))), "bad-payload", 1, 0),
    "values-shape-lies": (
        replace("values", Array(dtype="uint8", shape=(99,), stype=STYPES["values"], data=b"abc")),
        "bad-payload: array 'values' declares shape (99,) for 3 bytes",
        1,
        0,
    ),
    "values-undecodable": (replace("values", raw_array("values", b"junk")), "bad-payload", 1, 0),
    "values-huge": (numbers("values", lambda v: np.full_like(v, 1e30)), "outlier: update norm", 1, 0),
    "values-scaled": (numbers("values", lambda v: v * 1e4), "outlier", 1, 0),
    "values-bfloat16": (
        recode("values", "bfloat16", relative=False),
        "bad-payload: array 'values' is written in bfloat16; this run's format is float32",
        1,
        0,
    ),
    "values-as-update": (
        recode("values", "float32", relative=True),
        "bad-payload: array 'values' holds an update; this run's replies send whole values",
        1,
        0,
    ),
    "importance-bfloat16": (recode("importance", "bfloat16", relative=False), "bad-payload", 1, 0),
    "importance-negative": (numbers("importance", lambda v: -np.ones_like(v)), "bad-metric", 1, 0),
    "importance-nan": (numbers("importance", lambda v: np.full_like(v, np.nan)), "non-finite", 1, 0),
    "importance-short": (numbers("importance", lambda v: v[:3]), "bad-payload", 1, 0),
    "client-sends-mask": (
        replace("mask", mask_array(LAYOUT, LAYOUT.full_mask(), WireFormat())),
        "bad-payload: a client may not change the mask",
        1,
        0,
    ),
    "unknown-array": (replace("weights", Array(np.zeros(3, np.float32))), "bad-payload", 1, 0),
    "error-reply": (error_reply, None, 0, 1),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_a_bad_training_reply_is_dropped_and_the_round_aggregates_the_rest(
    tmp_path, case, without_node_100, with_every_node, warnings_logged
):
    tamper, kind, rejected, failures = TRAIN_CASES[case]
    grid = TamperingGrid(client_app, 3, tamper=tamper, message_type="train")
    run_federation(grid, config(tmp_path))
    row = read_rounds(tmp_path / "run")[1]
    assert (int(row["rejected"]), int(row["failures"]), int(row["clients"])) == (rejected, failures, 3)
    if kind is not None:
        assert any("train reply of node" in w and f"rejected: {kind}" in w for w in warnings_logged), (
            warnings_logged
        )
    else:
        assert any("train on node 100 failed: RuntimeError: out of memory" in w for w in warnings_logged)
    if failures == 0:
        assert not any("within federation.round-timeout" in w for w in warnings_logged), warnings_logged
    model = final_model(tmp_path)
    expected = with_every_node if case == "duplicate" else without_node_100  # a duplicate's first copy counts
    assert all(np.array_equal(model[k], expected[k]) for k in model)


def test_the_byte_cap_admits_the_largest_legitimate_reply():
    """Every float value, importance everywhere, the integer buffers and a mask fit under the cap."""
    layout = LAYOUT
    # random bit patterns: float32 numbers that neither zstd nor content addressing can shrink
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=(2, layout.num_floats), dtype=np.uint32).view(np.float32)
    values, importance = np.where(np.isfinite(bits), bits, np.float32(1.0))
    mask = layout.mask_from_prunable(rng.random(layout.num_prunable) < 0.5)
    payload = ModelPayload(values, np.zeros(layout.num_ints, np.int64), mask, importance)
    metrics = MetricRecord(
        {k: 1 for k in ("num-examples", "samples-processed", "train-loss", "mask-version")}
    )
    reply = Message(
        RecordDict({"arrays": encode_payload(payload, layout), "metrics": metrics}),
        dst_node_id=1,
        message_type="train",
        group_id="1",
    )
    size = measure_message(reply).total
    assert size < max_reply_bytes(layout) < size + 70_000


EVALUATE_CASES: dict[str, tuple[Tamper, str]] = {
    "accuracy-above-one": (metric("eval-accuracy", 1.5), "bad-metric"),
    "more-samples-than-test-set": (metric("num-examples", 10**6), "bad-metric"),
    "loss-inf": (metric("eval-loss", float("inf")), "non-finite"),
    "loss-negative": (metric("eval-loss", -1.0), "bad-metric"),
    "no-metrics": (drop_record("metric_records", "metrics"), "missing"),
    "duplicate": (duplicate, "duplicate"),
    "stale-mask-version": (metric("mask-version", 0), "mask-version"),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_a_bad_evaluation_reply_is_dropped_and_counted(tmp_path, case, warnings_logged):
    tamper, kind = EVALUATE_CASES[case]
    grid = TamperingGrid(client_app, 3, tamper=tamper, message_type="evaluate")
    run_federation(grid, config(tmp_path))
    row = read_rounds(tmp_path / "run")[1]
    assert (int(row["evaluate_rejected"]), int(row["rejected"])) == (1, 0)
    assert any(f"evaluate reply of node 100 rejected: {kind}: " in w for w in warnings_logged)
    assert 0 <= float(row["accuracy"]) <= 1  # from the other two nodes


def test_an_evaluation_error_reply_is_counted_as_a_failure(tmp_path):
    grid = TamperingGrid(client_app, 3, tamper=error_reply, message_type="evaluate")
    run_federation(grid, config(tmp_path))
    row = read_rounds(tmp_path / "run")[1]
    assert (int(row["evaluate_failures"]), int(row["evaluate_rejected"])) == (1, 0)


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        (metric("partition-id", 3), "partition-id = 3; expected an integer in [0, 2]"),
        (metric("train-size", 0), "train-size = 0"),
        (metric("num-partitions", 0), "num-partitions = 0"),
        (metric("test-size", -1), "test-size = -1"),
        (metric("partition-id", 0.5), "partition-id = 0.5"),
        (drop_metric("train-size"), "missing: no metric 'train-size'"),
        (error_reply, "describe failed: RuntimeError: out of memory"),
    ],
)
def test_a_node_with_a_bad_description_is_not_used(tmp_path, forgery, reason, warnings_logged):
    grid = TamperingGrid(client_app, 3, tamper=forgery, message_type="query.describe", at=0)
    run_federation(grid, config(tmp_path))
    rows = read_rounds(tmp_path / "run")
    assert int(rows[1]["clients"]) == 2
    assert any(f"node {NODE} not used" in w and reason in w for w in warnings_logged), warnings_logged
    assert not [m for m in grid.sent if m.metadata.dst_node_id == NODE and m.metadata.group_id == "1"]


def test_below_min_clients_the_round_is_skipped_and_the_model_kept(tmp_path, warnings_logged):
    tamper = numbers("values", lambda v: np.full_like(v, np.nan))
    grid = TamperingGrid(client_app, 3, tamper=tamper, message_type="train")
    run_federation(grid, config(tmp_path, ["federation.rounds=2", "federation.min-clients=3"]))
    rows = read_rounds(tmp_path / "run")
    assert (int(rows[1]["rejected"]), rows[1]["reconfigured"], rows[1]["train_loss"]) == (1, "0", "")
    assert any(
        "fewer than federation.min-clients = 3; the model is left unchanged" in w for w in warnings_logged
    )

    def sent_values(server_round: int) -> bytes:
        (message, *_) = [
            m
            for m in grid.sent
            if m.metadata.group_id == str(server_round) and m.metadata.message_type == "train"
        ]
        return message.content["arrays"]["values"].data

    assert sent_values(1) == sent_values(2)  # round 1 left the model as it was
    assert int(rows[2]["rejected"]) == 0 and rows[2]["train_loss"] != ""


def test_a_node_that_never_answers_is_counted_and_the_run_goes_on(tmp_path):
    grid = InProcessGrid(
        client_app,
        3,
        drop=lambda m: m.metadata.dst_node_id == NODE and m.metadata.message_type != "query.describe",
    )
    summary = run_federation(grid, config(tmp_path, ["federation.rounds=2"]))
    rows = read_rounds(tmp_path / "run")
    assert [(int(r["failures"]), int(r["evaluate_failures"])) for r in rows[1:]] == [(1, 1), (1, 1)]
    assert summary.final_density < 1.0 and not np.isnan(summary.final_accuracy)


def config_entry(name: str, value) -> Tamper:
    def tamper(reply: Message, _sent: Message) -> list[Message]:
        reply.content.config_records["config"][name] = value
        return [reply]

    return tamper


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        (numbers("values", lambda v: np.full_like(v, np.nan)), "non-finite: array 'values'"),
        (drop_array("mask"), "the reply carries no mask"),
        (numbers("values", lambda v: v[:10]), "array 'values' has 10 entries"),
        (config_entry("iterations", -3), "iterations = -3"),
        (config_entry("modelled-seconds", float("nan")), "non-finite: modelled-seconds"),
        (metadata("_src_node_id", 999), "not-asked"),
        (error_reply, "failed initial pruning: RuntimeError: out of memory"),
    ],
)
def test_a_bad_initial_pruning_reply_stops_the_run_with_a_clear_error(tmp_path, forgery, reason):
    grid = TamperingGrid(client_app, 3, tamper=forgery, message_type="train.initial_pruning", at=0)
    with pytest.raises(RunError, match=re.escape(reason)):
        run_federation(grid, config(tmp_path, ["pruning.prunefl.initial-pruning=client"]))


def test_a_duplicated_initial_pruning_reply_is_used_once(tmp_path):
    grid = TamperingGrid(client_app, 3, tamper=duplicate, message_type="train.initial_pruning", at=0)
    summary = run_federation(grid, config(tmp_path, ["pruning.prunefl.initial-pruning=client"]))
    assert summary.initial_pruning["where"] == "client" and summary.initial_pruning["density"] < 1.0


class ReplayingGrid(InProcessGrid):
    """Node 100 answers round 2 with its round-1 training arrays under round 2's metadata."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.first: ArrayRecord | None = None

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            meta = reply.metadata
            if meta.src_node_id == NODE and meta.message_type == "train" and reply.has_content():
                if meta.group_id == "1":
                    self.first = through_wire(reply).content.array_records["arrays"]
                elif meta.group_id == "2":
                    reply.content["arrays"] = self.first
        return [through_wire(r) for r in replies]


def test_a_replayed_reply_is_rejected_as_replay(tmp_path, warnings_logged):
    extra = ["federation.rounds=2", "pruning.prunefl.reconfig-interval=10"]  # no mask change in round 2
    run_federation(ReplayingGrid(client_app, 3), config(tmp_path, extra))
    rows = read_rounds(tmp_path / "run")
    assert [(int(r["rejected"]), int(r["failures"])) for r in rows[1:]] == [(0, 0), (1, 0)]
    assert any(
        "train reply of node 100 rejected: replay: node 100 sent the same arrays" in w
        for w in warnings_logged
    )


def test_a_poisoned_aggregate_skips_the_round_and_keeps_the_model(tmp_path, monkeypatch, warnings_logged):
    """A backstop: whatever slips past the checks, a non-finite aggregate never reaches the model."""
    import server.strategy as strategy

    real = strategy.aggregate_masked

    def poisoned(floats, mask, values, weights, **rule):
        out = real(floats, mask, values, weights, **rule)
        if len(values) == 3 and poisoned.calls == 0:  # round 1 only
            poisoned.calls += 1
            out[mask] = np.float32(np.nan)
        return out

    poisoned.calls = 0
    monkeypatch.setattr(strategy, "aggregate_masked", poisoned)
    grid = InProcessGrid(client_app, 3)
    run_federation(grid, config(tmp_path, ["federation.rounds=2", "pruning.prunefl.reconfig-interval=10"]))
    rows = read_rounds(tmp_path / "run")
    assert any("the round is skipped and the model stays as it was" in w for w in warnings_logged)
    assert rows[1]["train_loss"] == "" and rows[2]["train_loss"] != ""

    def sent_values(server_round: int) -> bytes:
        (message, *_) = [
            m
            for m in grid.sent
            if m.metadata.group_id == str(server_round) and m.metadata.message_type == "train"
        ]
        return message.content["arrays"]["values"].data

    assert sent_values(1) == sent_values(2)
    assert all(np.isfinite(v).all() for v in final_model(tmp_path).values())


def test_inflated_importance_is_accepted_but_scaled_to_its_bound(tmp_path, warnings_logged):
    """PruneFL importance x 1e30: well-formed, so kept, but it weighs as statistic-factor honest clients."""
    grid = TamperingGrid(
        client_app, 3, tamper=numbers("importance", lambda v: v * 1e30), message_type="train"
    )
    run_federation(grid, config(tmp_path))
    row = read_rounds(tmp_path / "run")[1]
    assert (int(row["rejected"]), int(row["failures"])) == (0, 0)
    scaled = [w for w in warnings_logged if "uploaded importance of node 100 scaled by" in w]
    assert len(scaled) == 1 and "federation.statistic-factor = 10" in scaled[0]
    assert not any("importance of node 101" in w or "importance of node 102" in w for w in warnings_logged)
