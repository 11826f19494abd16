"""The server and the clients together, in process, through Flower's wire format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from flwr.app import Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID

from client.app import app as client_app
from client.node_state import METHOD_RECORD
from common.config import load_config
from common.pruning import METHODS, InitialPruning, PruningMethod
from common.pruning.prunefl_importance import ImportanceAccumulator
from common.training import LocalResult
from common.wire import measure_message
from common.wire.codec import mask_base_version
from common.wire.values import decode_values
from server.app import run_federation
from server.results import read_rounds
from tests.inprocess_grid import InProcessGrid

FAST = [
    "federation.rounds=3",
    "train.local-steps=2",
    "pruning.prunefl.ip-max-rounds=30",
    "pruning.prunefl.ip-reconfig-interval=5",
    "pruning.prunefl.reconfig-interval=2",
]


class ScriptedMethod(PruningMethod):
    """Prunes the first half of every prunable tensor (fc1 of the digits CNN: all of it),
    then brings everything back after round 1."""

    name = "scripted"
    reconfigured_from: np.ndarray | None = None

    def initial_mask(self, floats, mask, data):
        new = mask.copy()
        for t in self.env.layout.prunable:
            if t.name == "fc1.weight":
                new[t.slice] = False  # a layer emptied by pruning
            else:
                new[t.offset : t.offset + t.size // 2] = False
        return InitialPruning(mask=new)

    def reconfigure(self, server_round, floats, mask, cost):
        if server_round == 1:
            ScriptedMethod.reconfigured_from = mask.copy()
            return self.env.layout.full_mask()
        return None


def run(tmp_path: Path, overrides: list[str], num_nodes: int = 3, **grid_kwargs):
    config = load_config(
        None,
        [f"output.dir={tmp_path}", "output.name=run", f"simulation.num-clients={num_nodes}", *overrides],
    )
    grid = InProcessGrid(client_app, num_nodes, **grid_kwargs)
    return run_federation(grid, config), grid


def test_prunefl_run_writes_complete_results(tmp_path):
    summary, _ = run(tmp_path, FAST)
    folder = Path(summary.results_dir)
    assert {p.name for p in folder.iterdir()} >= {
        "config.toml",
        "rounds.csv",
        "communication.csv",
        "summary.json",
        "initial_pruning.json",
        "model.npz",
        "mask.npz",
    }
    rows = read_rounds(folder)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    assert summary.final_density < 1.0
    ip = json.loads((folder / "initial_pruning.json").read_text())
    assert ip["where"] == "server" and ip["density"] < 1.0 and ip["iterations"] > 0
    model = np.load(folder / "model.npz", allow_pickle=False)
    masks = np.load(folder / "mask.npz", allow_pickle=False)
    for name in masks.files:  # the saved effective model is zero where pruned
        assert np.all(model[name][~masks[name]] == 0)
    # the resolved config re-runs: it parses back to the same settings
    assert (
        load_config(folder / "config.toml").to_flat()
        == load_config(
            None, [f"output.dir={tmp_path}", "output.name=run", "simulation.num-clients=3", *FAST]
        ).to_flat()
    )


def test_byte_accounting_equals_the_serialised_messages(tmp_path):
    # without zstd nothing can come in under the bound (with it, values may: see test_wire)
    summary, grid = run(tmp_path, [*FAST, "wire.compression-level=0"])
    carried = sum(measure_message(m).total for m in grid.sent + grid.received)
    assert summary.bytes_total == carried
    with (Path(summary.results_dir) / "communication.csv").open() as f:
        per_message = sum(int(row["bytes"]) for row in csv.DictReader(f))
    rows = read_rounds(Path(summary.results_dir))
    assert per_message == carried == sum(int(r["bytes_down"]) + int(r["bytes_up"]) for r in rows)
    for r in rows[1:]:
        assert float(r["bound_bytes"]) <= int(r["bytes_down"]) + int(r["bytes_up"])
        assert int(r["dense_bytes"]) > int(r["bytes_down"])


def test_masks_stay_and_re_added_weights_restart_from_stale_values(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "scripted", ScriptedMethod)
    captured = {}
    import server.strategy as strategy_module

    original = strategy_module.PruningFedAvg.aggregate_train

    def spy(self, server_round, replies):
        before = self.model.floats.copy()
        result = original(self, server_round, replies)
        captured[server_round] = (before, self.model.floats.copy(), self.model.mask.copy())
        return result

    monkeypatch.setattr(strategy_module.PruningFedAvg, "aggregate_train", spy)
    summary, grid = run(tmp_path, ["pruning.method=scripted", "federation.rounds=2", "train.local-steps=2"])
    before, after, mask_after = captured[1]
    pruned = ~ScriptedMethod.reconfigured_from
    # pruned positions keep their server value through aggregation ...
    assert np.array_equal(after[pruned], before[pruned])
    # ... and the round-2 messages carry exactly those stale values for the re-added weights
    round2 = [m for m in grid.sent if m.metadata.group_id == "2" and m.metadata.message_type == "train"]
    values, _ = decode_values(round2[0].content["arrays"]["values"].data, int(mask_after.sum()), "values")
    assert mask_after.all() and np.array_equal(values[pruned], after[pruned])
    assert summary.final_density == 1.0


def test_mask_travels_only_to_nodes_with_a_stale_copy(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "scripted", ScriptedMethod)
    _, grid = run(tmp_path, ["pruning.method=scripted", "federation.rounds=3", "train.local-steps=1"])
    has_mask = {
        int(m.metadata.group_id): "mask" in m.content["arrays"]
        for m in grid.sent
        if m.metadata.message_type == "train"
    }
    # round 1: the initial mask is new to every node; round 2: the mask changed (dense,
    # version 2, which must travel too); round 3: every node holds it
    assert has_mask == {1: True, 2: True, 3: False}


def test_stale_node_gets_the_mask_again(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "scripted", ScriptedMethod)

    class ForgetfulGrid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if messages and messages[0].metadata.group_id == "3":  # node 100 restarts
                state = self.contexts[100].state
                for key in list(state.keys()):
                    del state[key]
            return super().send_and_receive(messages, timeout=timeout)

    config = load_config(
        None,
        [
            f"output.dir={tmp_path}",
            "output.name=run",
            "simulation.num-clients=3",
            "pruning.method=scripted",
            "federation.rounds=4",
            "train.local-steps=1",
        ],
    )
    grid = ForgetfulGrid(client_app, 3)
    summary = run_federation(grid, config)
    rows = read_rounds(Path(summary.results_dir))
    assert int(rows[3]["failures"]) == 1  # node 100 lost its mask and said so
    round4 = [m for m in grid.sent if m.metadata.group_id == "4" and m.metadata.dst_node_id == 100]
    assert "mask" in round4[0].content["arrays"]


def test_partial_participation_keeps_no_importance_on_the_nodes(tmp_path):
    summary, grid = run(
        tmp_path, [*FAST, "federation.clients-per-round=2", "federation.rounds=4"], num_nodes=4
    )
    for context in grid.contexts.values():
        assert not context.state.array_records.get(METHOD_RECORD)  # no importance sum is left behind
    rows = read_rounds(Path(summary.results_dir))
    assert all(int(r["clients"]) == 2 for r in rows[1:])
    assert all(int(r["importance_up"]) > 0 for r in rows[1:])


def test_full_participation_uploads_importance_only_when_reconfiguring(tmp_path):
    summary, _ = run(tmp_path, [*FAST, "federation.rounds=4"])
    rows = read_rounds(Path(summary.results_dir))
    uploads = [int(r["importance_up"]) > 0 for r in rows[1:]]
    assert uploads == [False, True, False, True]  # reconfig-interval = 2


def test_same_seed_same_rounds(tmp_path):
    first, _ = run(tmp_path / "a", FAST)
    second, _ = run(tmp_path / "b", FAST)
    drop = {"wall_time_s", "elapsed_s"}
    a = [{k: v for k, v in r.items() if k not in drop} for r in read_rounds(Path(first.results_dir))]
    b = [{k: v for k, v in r.items() if k not in drop} for r in read_rounds(Path(second.results_dir))]
    assert a == b


def test_initial_pruning_on_a_designated_client(tmp_path):
    summary, grid = run(
        tmp_path, [*FAST, "pruning.prunefl.initial-pruning=client", "pruning.prunefl.ip-client=2"]
    )
    ip = json.loads((Path(summary.results_dir) / "initial_pruning.json").read_text())
    assert ip["where"] == "client" and ip["partition_id"] == 2 and ip["node_id"] == 102
    assert ip["bytes_down"] > 0 and ip["bytes_up"] > 0 and ip["density"] < 1.0
    ip_messages = [m for m in grid.sent if m.metadata.message_type == "train.initial_pruning"]
    assert [m.metadata.dst_node_id for m in ip_messages] == [102]
    # the designated node already holds the new mask: round 1 sends it only to the others
    round1 = {
        m.metadata.dst_node_id: "mask" in m.content["arrays"] for m in grid.sent if m.metadata.group_id == "1"
    }
    assert round1 == {100: True, 101: True, 102: False}


def test_importance_rebuilt_from_an_update_is_n_times_squared_gradient_sum(tiny):
    _, layout = tiny
    acc = ImportanceAccumulator(layout)
    mask = layout.full_mask()
    mask[0] = False
    start = np.ones(int(mask.sum()), np.float32)
    client = start - 0.1 * np.arange(int(mask.sum()), dtype=np.float32)  # G = arange, lr = 0.1
    acc.add_from_update(mask, start, client, samples=20, lr=0.1)
    expected = np.zeros(layout.num_floats)
    expected[mask] = 20 * np.arange(int(mask.sum())) ** 2
    np.testing.assert_allclose(acc.values, expected, rtol=1e-5)


def test_client_upload_is_n_times_squared_gradient_sum_at_pruned_positions(tiny, monkeypatch):
    import common.pruning.prunefl_importance as importance

    monkeypatch.setattr(importance, "BLOCK", 2)  # several blocks, one of them short
    _, layout = tiny  # prunable: fc1.weight 0-11, fc2.weight 15-20
    mask = layout.full_mask()
    mask[[1, 2, 3, 16, 20]] = False
    gradient_sum = np.arange(layout.num_floats, dtype=np.float32) / 3
    store = _DictStore()
    hooks = importance.ImportanceHooks(importance.ImportanceTask("accumulate", "pruned"))
    result = LocalResult(samples=20, mean_loss=0.0, statistic=gradient_sum)
    assert hooks.upload(result, layout, mask, 1, store) is None  # accumulated on the node
    hooks = importance.ImportanceHooks(importance.ImportanceTask("upload", "pruned"))
    sent = hooks.upload(result, layout, mask, 1, store)
    g = gradient_sum[[1, 2, 3, 16, 20]].astype(np.float64)
    once = (20 * g * g).astype(np.float32)
    assert sent.tobytes() == (once + once).tobytes()  # two rounds' sums, bit for bit
    assert store.load(importance.SUM_KEY) is None  # an upload empties the node's sum


class _DictStore(dict):
    def load(self, key):
        return self.get(key)

    def save(self, key, array):
        self[key] = array

    def delete(self, key):
        self.pop(key, None)


def test_buffered_uploads_sum_as_added_one_by_one(tiny):
    _, layout = tiny
    acc = ImportanceAccumulator(layout)
    rng = np.random.default_rng(3)
    first, second = np.array([0, 3, 7]), np.array([1, 3, 15])
    uploads = [rng.random(3, dtype=np.float32) for _ in range(4)]
    expected = np.zeros(layout.num_floats)
    for positions, upload in zip([first, first, second, second], uploads, strict=True):
        acc.add_upload(positions.copy(), upload)  # equal positions, not the same array
        expected[positions] += upload.astype(np.float64)
    assert np.array_equal(acc.values, expected)  # bit for bit; position 3 spans both
    assert np.array_equal(acc.take(), expected) and not acc.values.any()


def test_a_changed_mask_travels_as_a_delta_against_the_nodes_copy(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "scripted", ScriptedMethod)
    _, grid = run(tmp_path, ["pruning.method=scripted", "federation.rounds=3", "train.local-steps=1"])
    bases = {
        int(m.metadata.group_id): mask_base_version(m.content["arrays"])
        for m in grid.sent
        if m.metadata.message_type == "train"
    }
    # round 1: the initial mask (version 1) as a whole; round 2: version 2 as a delta
    # against version 1, which every node holds; round 3: nothing (no mask array)
    assert bases == {1: 0, 2: 1, 3: None}
    assert all(not r.has_error() for r in grid.received)


def test_lossy_values_take_two_bytes_each_and_keep_training(tmp_path):
    summary, grid = run(tmp_path, [*FAST, "wire.compression-level=0", "wire.values=bfloat16"])
    with (Path(summary.results_dir) / "communication.csv").open() as f:
        replies = [r for r in csv.DictReader(f) if r["phase"] == "train" and r["direction"] == "up"]
    plain = [r for r in replies if int(r["importance"]) == 0]
    assert plain
    for r in plain:
        # the bound counts 16 bits per value, and the plain bfloat16 values meet it
        # up to the section and Flower headers (had it counted 32 bits: ratio 0.5)
        assert 1.0 <= int(r["values"]) / float(r["bound_bytes"]) < 1.01
    assert all(not r.has_error() for r in grid.received)
    assert summary.final_accuracy > 0.5


def test_importance_rebuilt_from_lossy_updates_starts_from_the_values_sent(tmp_path, monkeypatch):
    """With lr tiny, clients do not move their weights: the rebuilt importance must be zero.

    Had the server compared the clients' bfloat16 weights with its float32 copy
    instead of taking their movement from the values they received, every rounding
    error divided by lr would show up as importance.
    """
    rebuilt = []
    original = ImportanceAccumulator.add_rebuilt

    def spy(self, mask, contribution):
        before = self.values.copy()
        original(self, mask, contribution)
        rebuilt.append(np.abs(self.values - before).max())

    monkeypatch.setattr(ImportanceAccumulator, "add_rebuilt", spy)
    run(
        tmp_path,
        [
            *FAST,
            "federation.rounds=2",
            "pruning.prunefl.initial-pruning=off",
            "wire.values=bfloat16",
            "train.lr=1e-30",
            "federation.clients-per-round=2",
        ],
        num_nodes=3,
    )
    assert rebuilt and max(rebuilt) == 0.0


def test_a_superlink_error_reply_for_a_dead_node_counts_once_for_that_node(tmp_path):
    """Flower 1.41's SuperLink answers for a node that stopped sending heartbeats
    with an error reply whose source is the SuperLink (node id 1), not the node."""

    class DeadNodeGrid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            alive = [
                m for m in messages if not (m.metadata.group_id == "2" and m.metadata.dst_node_id == 102)
            ]
            replies = list(super().send_and_receive(alive, timeout=timeout))
            for message in messages:
                if message not in alive:
                    message.metadata.__dict__["_message_id"] = "dead-102"
                    reply = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=message)
                    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                    replies.append(reply)
            return replies

    config = load_config(None, [f"output.dir={tmp_path}", "output.name=run", *FAST])
    summary = run_federation(DeadNodeGrid(client_app, 3), config)
    rows = read_rounds(Path(summary.results_dir))
    assert (int(rows[2]["clients"]), int(rows[2]["failures"])) == (3, 1)
    assert rows[2]["train_loss"] != ""  # the two live nodes were aggregated
    with (Path(summary.results_dir) / "communication.csv").open() as f:
        up = [r for r in csv.DictReader(f) if r["round"] == "2" and r["direction"] == "up"]
    assert sorted(r["node_id"] for r in up) == ["100", "101"]  # nothing charged to the dead node


def test_the_server_needs_no_data_with_client_evaluation_and_client_initial_pruning(tmp_path, monkeypatch):
    """The deployment configuration (docker/run-config.toml): the server holds no data."""

    def no_data(*args, **kwargs):
        raise AssertionError("the server loaded data")

    monkeypatch.setattr("server.app.load_dataset", no_data)
    monkeypatch.setattr("server.initial_pruning.initial_data_for", no_data)
    summary, _ = run(
        tmp_path,
        [
            *FAST,
            "evaluate.server=false",
            "evaluate.client-fraction=1.0",
            "pruning.prunefl.initial-pruning=client",
        ],
    )
    ip = json.loads((Path(summary.results_dir) / "initial_pruning.json").read_text())
    assert ip["where"] == "client" and 0 < summary.final_accuracy <= 1
