"""The real data sets, where their verified copies are present (skipped otherwise).

Loading verifies every file against its published md5 (MNIST, Fashion-MNIST,
CIFAR-10) or the shared folder's SHA256SUMS (FEMNIST), so a passing load is a
passing checksum.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from common.data import ChecksumError, client_split, load_dataset
from common.data.idx import load_mnist

from .data_paths import DEBIAN_DATASETS, require


def class_counts(labels: torch.Tensor, classes: int) -> list[int]:
    return np.bincount(labels.numpy(), minlength=classes).tolist()


def test_mnist():
    data = load_dataset("mnist", require("mnist"))
    assert tuple(data.x_train.shape) == (60000, 1, 28, 28) and tuple(data.x_test.shape) == (10000, 1, 28, 28)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert int(data.y_train.min()) == 0 and int(data.y_train.max()) == 9
    assert class_counts(data.y_test, 10) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.to_inputs(data.x_test[:8]).dtype == torch.float32


def test_a_damaged_mnist_file_fails_its_published_checksum(tmp_path):
    source = require("mnist") / "mnist"
    shutil.copytree(source, tmp_path / "mnist")
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.chmod(0o644)
    import gzip

    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[-1] = (content[-1] + 1) % 10  # one label changed
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(ChecksumError, match="expected 27ae3e4e09519cfbb04c329615203637"):
        load_mnist(tmp_path)


def test_fashion_mnist_from_the_debian_package():
    data = load_dataset("fashion-mnist", require("fashion-mnist", DEBIAN_DATASETS))
    assert tuple(data.x_train.shape) == (60000, 1, 28, 28) and len(data.y_test) == 10000
    assert class_counts(data.y_train, 10) == [6000] * 10 and class_counts(data.y_test, 10) == [1000] * 10


def test_cifar10_binary_version():
    data = load_dataset("cifar10", require("cifar-10"))
    assert tuple(data.x_train.shape) == (50000, 3, 32, 32) and tuple(data.x_test.shape) == (10000, 3, 32, 32)
    assert class_counts(data.y_train, 10) == [5000] * 10 and class_counts(data.y_test, 10) == [1000] * 10
    assert data.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # the official order
    inputs = data.to_inputs(data.x_train[:256])
    assert inputs.dtype == torch.float32 and abs(float(inputs.mean())) < 0.5  # standardised


def test_femnist_leaf_sample():
    data = load_dataset("femnist", require("femnist"))
    assert tuple(data.x_train.shape) == (14708, 1, 28, 28) and tuple(data.x_test.shape) == (1685, 1, 28, 28)
    assert data.x_train.dtype == torch.uint8  # LEAF's pixels are k/255
    assert int(data.y_train.min()) >= 0 and int(data.y_train.max()) <= 61
    assert len(np.unique(data.writers)) == 105
    assert set(np.unique(data.test_writers)) <= set(np.unique(data.writers))
    assert int(data.x_train[:16].max()) == 255  # LEAF's white background, stored as LEAF holds it
    inputs = data.to_inputs(data.x_train[:16])
    assert float(inputs.min()) == 0.0 and float(inputs.max()) <= 1.0
    assert float((inputs == 0).float().mean()) > 0.5  # fed inverted: the background (most pixels) is 0


def test_femnist_natural_split_keeps_writers_whole_and_tests_on_their_samples():
    root = require("femnist")
    data = load_dataset("femnist", root)
    splits = [client_split("femnist", root, 10, pid, "natural", 0.5, 0, 0.1) for pid in range(10)]
    train = [s.train.indices.numpy() for s in splits]
    assert sum(len(t) for t in train) == 14708 and len(np.unique(np.concatenate(train))) == 14708
    writer_sets = [set(np.unique(data.writers[t])) for t in train]
    assert [len(w) for w in writer_sets] == [10] * 9 + [15]  # PruneFL's grouping of 105 writers
    assert all(not (a & b) for i, a in enumerate(writer_sets) for b in writer_sets[i + 1 :])
    tests = [s.test.indices.numpy() for s in splits]
    assert sum(len(t) for t in tests) == 1685
    for writers, test in zip(writer_sets, tests, strict=True):
        assert set(data.test_writers[test]) <= writers
