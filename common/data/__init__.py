"""Data sets (one line per data set in ``DATASETS``) and client partitions.

Every data set is read from its own sub-folder of the data folder (``data.dir`` or
``$FEDPRUNE_DATA_DIR``), except ``digits``, which ships with scikit-learn:

* ``mnist``: ``mnist/`` with the four IDX files, gzipped or not (:mod:`.idx`);
* ``fashion-mnist``: ``fashion-mnist/``, the same four IDX files (:mod:`.idx`);
* ``cifar10``: ``cifar-10/`` (or the data folder itself) with ``cifar-10-batches-bin/``
  (binary version) or ``cifar-10-batches-py/`` (python version) (:mod:`.cifar10`);
* ``femnist``: ``femnist/`` with LEAF's ``data/train`` and ``data/test`` JSON files,
  gzipped or not, and the writer of every sample (:mod:`.femnist`).

Files are verified as :mod:`.files` describes.
With ``data.download = true``, a data set whose files are missing is fetched from
the Hugging Face hub instead (:mod:`common.data.hub`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .cifar10 import load_cifar10
from .dataset import ArrayDataset, DataView, test_view, train_view
from .digits import load_digits_dataset
from .femnist import load_femnist
from .files import ChecksumError, DataFilesMissing, DataFormatError
from .idx import load_fashion_mnist, load_mnist
from .partition import PARTITIONINGS, Partitioning, label_skew, partition_indices, split_holdout


@dataclass(frozen=True)
class DatasetSource:
    """What is known of a data set without loading it, and how to load it."""

    num_classes: int
    input_shape: tuple[int, int, int]
    load: Callable[[Path | None], ArrayDataset]
    has_writers: bool = False  # every sample has a writer (the natural partitioning needs it)


DATASETS: dict[str, DatasetSource] = {
    "digits": DatasetSource(10, (1, 8, 8), lambda _data_dir: load_digits_dataset()),
    "mnist": DatasetSource(10, (1, 28, 28), load_mnist),
    "fashion-mnist": DatasetSource(10, (1, 28, 28), load_fashion_mnist),
    "cifar10": DatasetSource(10, (3, 32, 32), load_cifar10),
    "femnist": DatasetSource(62, (1, 28, 28), load_femnist, has_writers=True),
}


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> ArrayDataset:
    """Load data set ``name`` (from ``data_dir`` where it needs files) once per process.

    With ``download``, a data set whose files are missing is fetched from the
    Hugging Face hub; without it, missing files are a :class:`DataFilesMissing`.
    """
    # One cache key however the arguments were passed, so a process holds one copy.
    return _load_dataset(name, data_dir, bool(download))


@lru_cache(maxsize=4)
def _load_dataset(name: str, data_dir: Path | None, download: bool) -> ArrayDataset:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    source = DATASETS[name]
    try:
        return source.load(data_dir)
    except DataFilesMissing as missing:
        if not download:
            raise
        from .hub import fetch

        return fetch(name, data_dir, source.num_classes, missing)


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's training and test views."""

    train: DataView
    test: DataView


@lru_cache(maxsize=64)
def _partitions(
    name: str, data_dir: Path | None, download: bool, num_partitions: int, partitioning: Partitioning
) -> tuple:
    dataset = load_dataset(name, data_dir, download)
    writers = dataset.writers if partitioning.scheme == "natural" else None
    return tuple(partition_indices(dataset.y_train.numpy(), num_partitions, partitioning, writers=writers))


def client_split(
    name: str,
    data_dir: Path | None,
    num_partitions: int,
    partition_id: int,
    scheme: str,
    alpha: float,
    seed: int,
    test_fraction: float,
    *,
    classes_per_client: int = 2,
    shards_per_client: int = 2,
    download: bool = False,
) -> ClientSplit:
    """Client ``partition_id``'s data: its partition, minus a held-out test share.

    With the ``natural`` partitioning of a data set whose test samples have
    writers too (FEMNIST), the client's test split is its own writers' test
    samples (LEAF's per-writer split) and ``test_fraction`` is not used.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition id {partition_id} outside [0, {num_partitions})")
    dataset = load_dataset(name, data_dir, download)
    partitioning = Partitioning(scheme, alpha, classes_per_client, shards_per_client, seed)
    indices = _partitions(name, data_dir, download, num_partitions, partitioning)[partition_id]
    if scheme == "natural" and dataset.writers is not None and dataset.test_writers is not None:
        own = np.isin(dataset.test_writers, np.unique(dataset.writers[indices]))
        return ClientSplit(train_view(dataset, indices), test_view(dataset, np.flatnonzero(own)))
    train, test = split_holdout(indices, test_fraction, seed + 7919 * (partition_id + 1))
    return ClientSplit(train_view(dataset, train), train_view(dataset, test))


def label_histogram(view: DataView, num_classes: int) -> list[int]:
    """Samples per class of ``view``."""
    labels = view.y[view.indices].numpy()
    return np.bincount(labels, minlength=num_classes).astype(int).tolist()


__all__ = [
    "ChecksumError",
    "ClientSplit",
    "client_split",
    "DataFilesMissing",
    "DataFormatError",
    "DATASETS",
    "PARTITIONINGS",
    "ArrayDataset",
    "DatasetSource",
    "DataView",
    "label_histogram",
    "label_skew",
    "load_dataset",
    "Partitioning",
    "partition_indices",
    "split_holdout",
    "test_view",
    "train_view",
]
