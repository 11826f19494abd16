"""Data sets (one line per data set in ``DATASETS``) and client partitions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .dataset import ArrayDataset, DataView, test_view, train_view
from .digits import load_digits_dataset
from .partition import PARTITIONINGS, partition_indices, split_holdout


@dataclass(frozen=True)
class DatasetSource:
    """What is known of a data set without loading it, and how to load it."""

    num_classes: int
    input_shape: tuple[int, int, int]
    load: Callable[[Path | None], ArrayDataset]


DATASETS: dict[str, DatasetSource] = {
    "digits": DatasetSource(10, (1, 8, 8), lambda _data_dir: load_digits_dataset()),
}


@lru_cache(maxsize=4)
def load_dataset(name: str, data_dir: Path | None = None) -> ArrayDataset:
    """Load data set ``name`` (from ``data_dir`` where it needs files) once per process."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name].load(data_dir)


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's training and test views."""

    train: DataView
    test: DataView


@lru_cache(maxsize=64)
def _partitions(
    name: str, data_dir: Path | None, num_partitions: int, scheme: str, alpha: float, seed: int
) -> tuple:
    dataset = load_dataset(name, data_dir)
    return tuple(partition_indices(dataset.y_train.numpy(), num_partitions, scheme, alpha, seed))


def client_split(
    name: str,
    data_dir: Path | None,
    num_partitions: int,
    partition_id: int,
    scheme: str,
    alpha: float,
    seed: int,
    test_fraction: float,
) -> ClientSplit:
    """Client ``partition_id``'s data: its partition, minus a held-out test share."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition id {partition_id} outside [0, {num_partitions})")
    dataset = load_dataset(name, data_dir)
    indices = _partitions(name, data_dir, num_partitions, scheme, alpha, seed)[partition_id]
    train, test = split_holdout(indices, test_fraction, seed + 7919 * (partition_id + 1))
    return ClientSplit(train_view(dataset, train), train_view(dataset, test))


__all__ = [
    "ClientSplit",
    "client_split",
    "DATASETS",
    "PARTITIONINGS",
    "ArrayDataset",
    "DatasetSource",
    "DataView",
    "load_dataset",
    "partition_indices",
    "split_holdout",
    "test_view",
    "train_view",
]
