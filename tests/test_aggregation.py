"""Masked FedAvg: hand-computed cases, and equality with Flower's FedAvg with pruning off."""

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from server.aggregation import BLOCK, average_counters, masked_fedavg, weighted_average


def test_weighted_average_hand_computed():
    out = weighted_average([np.array([1.0, 2.0], np.float32), np.array([3.0, 6.0], np.float32)], [1, 3])
    np.testing.assert_allclose(out, [2.5, 5.0])


def test_blocked_average_equals_whole_vector_float64_sums_bit_for_bit():
    """The block-wise sum adds each element's terms in the same order from 0.0 as the plain formula."""
    rng = np.random.default_rng(3)
    n = 2 * BLOCK + 17  # two whole blocks and a short one
    vectors = [rng.normal(size=n).astype(np.float32) for _ in range(5)]
    vectors[0][:3] = [-0.0, 0.0, np.float32(1e-30)]
    vectors[1][:3] = [-0.0, -0.0, np.float32(-1e-30)]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    expected = np.zeros(n, dtype=np.float64)
    for vector, weight in zip(vectors, weights, strict=True):
        expected += vector.astype(np.float64) * (weight / sum(weights))
    out = weighted_average(vectors, weights)
    assert out.dtype == np.float32
    assert out.tobytes() == expected.astype(np.float32).tobytes()


def test_pruned_positions_keep_their_stale_value():
    floats = np.array([10.0, 20.0, 30.0, 40.0], np.float32)
    mask = np.array([True, False, True, False])
    new = masked_fedavg(floats, mask, [np.array([1.0, 3.0]), np.array([3.0, 5.0])], [1.0, 1.0])
    np.testing.assert_allclose(new, [2.0, 20.0, 4.0, 40.0])


def test_counters_are_averaged_and_rounded():
    out = average_counters([np.array([10]), np.array([13])], [1.0, 1.0])
    assert out.dtype == np.int64 and out[0] == 12


def _reply(arrays: dict[str, np.ndarray], weight: float) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": weight}),
        }
    )
    return Message(content=content, dst_node_id=1, message_type="train")


def test_equals_flowers_fedavg_when_nothing_is_pruned(tiny):
    model, layout = tiny
    rng = np.random.default_rng(1)
    clients = [rng.normal(size=layout.num_floats).astype(np.float32) for _ in range(4)]
    weights = [20.0, 35.0, 5.0, 40.0]
    replies = [
        _reply({k: v.numpy() for k, v in layout.unflatten(c, np.zeros(0, np.int64)).items()}, w)
        for c, w in zip(clients, weights, strict=True)
    ]
    flower, _ = FedAvg().aggregate_train(1, replies)
    flower_flat = np.concatenate([flower[t.name].numpy().reshape(-1) for t in layout.tensors])
    ours = masked_fedavg(np.zeros(layout.num_floats, np.float32), layout.full_mask(), clients, weights)
    np.testing.assert_allclose(ours, flower_flat, rtol=1e-6, atol=1e-7)
