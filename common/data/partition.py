"""Splitting a training set across clients with flwr-datasets partitioners.

The partitioners run on an in-memory ``datasets.Dataset`` holding only each
sample's label and index, so no hub download happens and no image is copied.
Every client computes the same split from the same seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

PARTITIONINGS = ("iid", "dirichlet")


def partition_indices(
    labels: np.ndarray, num_partitions: int, scheme: str, alpha: float, seed: int
) -> list[np.ndarray]:
    """Return the training-sample indices of each of ``num_partitions`` clients.

    ``iid`` deals a random permutation evenly; ``dirichlet`` draws each class's
    share per client from Dirichlet(alpha) (Hsu et al., 2019): smaller alpha, more skew.
    """
    return list(_cached_partition(labels.tobytes(), labels.dtype.str, num_partitions, scheme, alpha, seed))


@lru_cache(maxsize=8)
def _cached_partition(
    label_bytes: bytes, dtype: str, num_partitions: int, scheme: str, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

    labels = np.frombuffer(label_bytes, dtype=np.dtype(dtype))
    if num_partitions > len(labels):
        raise ValueError(f"cannot split {len(labels)} training samples across {num_partitions} clients")
    partitioner: Partitioner
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        order = np.random.default_rng(seed).permutation(len(labels))
        labels, index = labels[order], order
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min(10, len(labels) // num_partitions),
            self_balancing=False,
            seed=seed,
        )
        index = np.arange(len(labels))
    else:
        raise ValueError(f"unknown partitioning {scheme!r}; known: {', '.join(PARTITIONINGS)}")
    partitioner.dataset = Dataset.from_dict({"label": labels, "index": index})
    return tuple(
        np.sort(np.asarray(partitioner.load_partition(i).with_format("numpy")["index"]))
        for i in range(num_partitions)
    )


def split_holdout(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, test) with ``fraction`` held out."""
    if fraction <= 0 or len(indices) < 2:
        return indices, indices[:0]
    order = np.random.default_rng(seed).permutation(len(indices))
    n_test = max(1, int(round(len(indices) * fraction)))
    return np.sort(indices[order[n_test:]]), np.sort(indices[order[:n_test]])
