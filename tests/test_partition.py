"""Partition invariants on synthetic labels, and clients holding views, not copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import data as data_module
from common.data import (
    ArrayDataset,
    DatasetSource,
    Partitioning,
    client_split,
    label_skew,
    partition_indices,
)
from common.data.partition import group_writers

CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2,000 samples, 200 of each class, shuffled."""
    return np.random.default_rng(0).permutation(np.repeat(np.arange(CLASSES), 200))


def histograms(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    return np.array([np.bincount(labels[p], minlength=CLASSES) for p in parts])


def assert_disjoint(parts: list[np.ndarray], total: int, all_used: bool = True) -> None:
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "a sample is in two partitions"
    assert joined.min() >= 0 and joined.max() < total
    if all_used:
        assert len(joined) == total


def test_iid_deals_equal_shares_of_everything(labels):
    parts = partition_indices(labels, 7, "iid", seed=3)
    assert_disjoint(parts, len(labels))
    assert sorted(len(p) for p in parts) == [285] * 2 + [286] * 5  # 2000 = 7 * 285 + 5
    assert label_skew(histograms(labels, parts)) < 0.1


@pytest.mark.parametrize(("samples", "clients"), [(2000, 7), (2000, 2000), (1003, 101), (60, 1)])
def test_iid_shards_cut_directly_are_iid_partitioners(samples, clients):
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    from common.data.partition import _iid_shards

    index = np.random.default_rng(5).permutation(samples)
    partitioner = IidPartitioner(num_partitions=clients)
    partitioner.dataset = Dataset.from_dict({"index": index})
    theirs = [np.sort(np.asarray(partitioner.load_partition(i)["index"])) for i in range(clients)]
    mine = _iid_shards(index, clients)
    assert len(mine) == clients and all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
    big = partition_indices(np.zeros(1003, dtype=np.int64), 101, "iid", seed=4)
    assert [len(p) for p in big] == [10] * 94 + [9] * 7  # 1003 = 101 * 9 + 94


def test_dirichlet_uses_every_sample_and_skews_more_as_alpha_falls(labels):
    skews = []
    for alpha in (100.0, 1.0, 0.1):
        parts = partition_indices(labels, 10, Partitioning("dirichlet", alpha=alpha, seed=1))
        assert_disjoint(parts, len(labels))
        skews.append(label_skew(histograms(labels, parts)))
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.1 and skews[2] > 0.5


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_each_client_k_classes(labels, k):
    parts = partition_indices(labels, 10, Partitioning("pathological", classes_per_client=k, seed=2))
    assert_disjoint(parts, len(labels))  # 10 clients >= 10 classes: every class drawn, all used
    counts = histograms(labels, parts)
    assert all(np.count_nonzero(row) == k for row in counts)
    assert (counts.sum(axis=0) == 200).all()


def test_shards_give_equal_label_sorted_pieces(labels):
    parts = partition_indices(labels, 8, Partitioning("shards", shards_per_client=2, seed=0))
    shard = len(labels) // (8 * 2)  # 125
    assert_disjoint(parts, len(labels), all_used=False)
    assert [len(p) for p in parts] == [2 * shard] * 8
    # a shard of 125 label-sorted samples spans at most two classes of 200
    assert all(np.count_nonzero(row) <= 4 for row in histograms(labels, parts))


def test_same_seed_same_split_other_seed_other_split(labels):
    a = partition_indices(labels, 5, Partitioning("dirichlet", alpha=0.5, seed=4))
    b = partition_indices(labels, 5, Partitioning("dirichlet", alpha=0.5, seed=4))
    c = partition_indices(labels, 5, Partitioning("dirichlet", alpha=0.5, seed=5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_writers_are_grouped_as_prunefl_groups_them():
    assert [len(g) for g in group_writers(193, 10)] == [19] * 9 + [22]
    assert [len(g) for g in group_writers(105, 10)] == [10] * 9 + [15]
    assert list(group_writers(5, 5)[4]) == [4]
    with pytest.raises(ValueError, match="cannot group 3 writers into 4 clients"):
        group_writers(3, 4)


def test_natural_keeps_writers_whole(labels):
    writers = np.repeat(np.arange(20), 100)[np.random.default_rng(1).permutation(2000)]
    parts = partition_indices(labels, 6, Partitioning("natural"), writers=writers)
    assert_disjoint(parts, len(labels))
    owned = [set(writers[p]) for p in parts]
    assert [len(o) for o in owned] == [3] * 5 + [5]
    assert owned[0] == {0, 1, 2} and owned[5] == {15, 16, 17, 18, 19}
    with pytest.raises(ValueError, match="writer"):
        partition_indices(labels, 6, Partitioning("natural"))


def test_label_skew_on_hand_computed_histograms():
    assert label_skew(np.array([[5, 5], [5, 5]])) == 0.0
    assert label_skew(np.array([[10, 0], [0, 10]])) == pytest.approx(0.5)
    assert label_skew(
        np.array([[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 10, 0], [0, 0, 0, 10]])
    ) == pytest.approx(0.75)


@pytest.fixture
def synthetic(monkeypatch):
    """A registered data set of 1,000 8-bit images with writers, loaded like the real ones."""
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(
        name="synthetic",
        x_train=torch.from_numpy(rng.integers(0, 256, (1000, 1, 28, 28), dtype=np.uint8)),
        y_train=torch.from_numpy(rng.integers(0, 10, 1000)),
        x_test=torch.from_numpy(rng.integers(0, 256, (100, 1, 28, 28), dtype=np.uint8)),
        y_test=torch.from_numpy(rng.integers(0, 10, 100)),
        num_classes=10,
        writers=np.repeat(np.arange(10), 100).astype(np.int32),
        test_writers=np.repeat(np.arange(10), 10).astype(np.int32),
    )
    monkeypatch.setitem(data_module.DATASETS, "synthetic", DatasetSource(10, (1, 28, 28), lambda _d: dataset))
    data_module._load_dataset.cache_clear()  # the per-process caches hold data sets by name
    data_module._partitions.cache_clear()
    yield dataset
    data_module._load_dataset.cache_clear()
    data_module._partitions.cache_clear()


def test_one_hundred_clients_hold_indices_into_one_copy(synthetic):
    splits = [client_split("synthetic", None, 100, pid, "iid", 0.5, 0, 0.1) for pid in range(100)]
    for split in splits:
        for view in (split.train, split.test):
            assert view.x.data_ptr() == synthetic.x_train.data_ptr()  # the same storage, not a copy
    index_bytes = sum(s.train.indices.nbytes + s.test.indices.nbytes for s in splits)
    assert index_bytes == 1000 * 8  # one int64 per sample, nothing else per client
    seen = np.concatenate([np.concatenate([s.train.indices, s.test.indices]) for s in splits])
    assert np.array_equal(np.sort(seen), np.arange(1000))


def test_natural_clients_test_on_their_writers_test_samples(synthetic):
    splits = [client_split("synthetic", None, 3, pid, "natural", 0.5, 0, 0.1) for pid in range(3)]
    assert [len(s.train) for s in splits] == [300, 300, 400]
    assert [len(s.test) for s in splits] == [30, 30, 40]  # LEAF-style per-writer test samples
    assert splits[2].test.x.data_ptr() == synthetic.x_test.data_ptr()
    assert set(synthetic.test_writers[splits[1].test.indices.numpy()]) == {3, 4, 5}
