"""Splitting a training set across clients with flwr-datasets partitioners.

The partitioners run on an in-memory ``datasets.Dataset`` holding only each
sample's label (and writer) and index, so no hub download happens and no image
is copied: a client ends up with an index array into the one copy of the data
its process holds. Every client computes the same split from the same seed.

=================  ============================================================
scheme             what each of the N clients gets
=================  ============================================================
``iid``            an equal share of a random permutation (``IidPartitioner``'s
                   contiguous shards, cut directly from the permutation)
``dirichlet``      per class, shares drawn from Dirichlet(alpha) (Hsu et al.
                   2019; ``DirichletPartitioner``): smaller alpha, more skew
``pathological``   samples of k classes only (``PathologicalPartitioner``,
                   first class i mod C, the others at random); each class is
                   split evenly among the clients that drew it, and a class no
                   client drew is left out
``shards``         s shards of the label-sorted data (McMahan et al. 2017's
                   pathological non-IID split; ``ShardPartitioner``): shard size
                   floor(n / (N s)), the remainder is left out
``natural``        whole writers (``NaturalIdPartitioner`` on the writer of every
                   sample), grouped as PruneFL groups FEMNIST's writers: with W
                   writers in file order, clients 0..N-2 get floor(W / N)
                   consecutive writers each and the last client the rest
=================  ============================================================
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PARTITIONINGS = ("iid", "dirichlet", "pathological", "shards", "natural")


@dataclass(frozen=True)
class Partitioning:
    """How a training set is split across clients."""

    scheme: str = "iid"
    alpha: float = 0.5  # dirichlet
    classes_per_client: int = 2  # pathological
    shards_per_client: int = 2  # shards
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in PARTITIONINGS:
            raise ValueError(f"unknown partitioning {self.scheme!r}; known: {', '.join(PARTITIONINGS)}")


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str | Partitioning,
    alpha: float = 0.5,
    seed: int = 0,
    writers: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Return the sorted training-sample indices of each of ``num_partitions`` clients.

    ``scheme`` is a :class:`Partitioning` or the name of a scheme (then ``alpha``
    and ``seed`` apply and the other settings keep their defaults). ``writers``
    (the writer of every sample) is needed by ``natural`` only.
    """
    spec = scheme if isinstance(scheme, Partitioning) else Partitioning(scheme, alpha=alpha, seed=seed)
    labels = np.ascontiguousarray(labels)
    writer_bytes = b"" if writers is None else np.ascontiguousarray(writers, dtype=np.int64).tobytes()
    return list(_cached_partition(labels.tobytes(), labels.dtype.str, writer_bytes, num_partitions, spec))


def group_writers(num_writers: int, num_clients: int) -> list[range]:
    """Writers of each client: floor(W / N) consecutive writers each, the last client the rest.

    PruneFL groups FEMNIST's 193 writers into 10 clients this way (9 x 19 + 22).
    """
    if not 1 <= num_clients <= num_writers:
        raise ValueError(f"cannot group {num_writers} writers into {num_clients} clients")
    per = num_writers // num_clients
    return [range(per * j, per * (j + 1) if j < num_clients - 1 else num_writers) for j in range(num_clients)]


def _natural(writers: np.ndarray, num_partitions: int) -> tuple[np.ndarray, ...]:
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    partitioner = NaturalIdPartitioner(partition_by="writer")
    partitioner.dataset = Dataset.from_dict({"writer": writers, "index": np.arange(len(writers))})
    by_writer: dict[int, np.ndarray] = {}
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar, one per process
        for pid in range(partitioner.num_partitions):  # builds the id -> writer map
            writer = partitioner.partition_id_to_natural_id[pid]
            by_writer[int(writer)] = _indices(partitioner.load_partition(pid))
    order = sorted(by_writer)  # writer numbers follow the data set's writer order
    groups = group_writers(len(order), num_partitions)
    return tuple(np.sort(np.concatenate([by_writer[order[w]] for w in group])) for group in groups)


def _indices(partition: object) -> np.ndarray:
    """The ``index`` column of a partition (Arrow format: no per-row Python objects)."""
    return np.asarray(partition.with_format("arrow")["index"].to_numpy(), dtype=np.int64)  # type: ignore[attr-defined]


def _iid_shards(index: np.ndarray, num_partitions: int) -> tuple[np.ndarray, ...]:
    """``IidPartitioner``'s partitions of the shuffled ``index``, sorted, without building datasets.

    ``IidPartitioner`` cuts with ``Dataset.shard(n, i, contiguous=True)``: rows
    [d i + min(i, m), that + d + (i < m)) of L, with d, m = divmod(L, n), which is
    ``np.array_split``'s cut. Cut here, 10,000 MNIST clients take milliseconds instead
    of the 37 s of one Arrow table per partition, paid by every process holding the data.
    """
    return tuple(np.sort(part) for part in np.array_split(index, num_partitions))


@lru_cache(maxsize=8)
def _cached_partition(
    label_bytes: bytes, dtype: str, writer_bytes: bytes, num_partitions: int, spec: Partitioning
) -> tuple[np.ndarray, ...]:
    labels = np.frombuffer(label_bytes, dtype=np.dtype(dtype))
    if num_partitions > len(labels):
        raise ValueError(f"cannot split {len(labels)} training samples across {num_partitions} clients")
    if spec.scheme == "iid":
        return _iid_shards(np.random.default_rng(spec.seed).permutation(len(labels)), num_partitions)
    if spec.scheme == "natural":
        if not writer_bytes:
            raise ValueError("the natural partitioning needs the writer of every sample (e.g. femnist)")
        return _natural(np.frombuffer(writer_bytes, dtype=np.int64), num_partitions)

    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        Partitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    index = np.arange(len(labels))
    partitioner: Partitioner
    if spec.scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=spec.alpha,
            min_partition_size=min(10, len(labels) // num_partitions),
            self_balancing=False,
            seed=spec.seed,
        )
    elif spec.scheme == "pathological":
        present = len(np.unique(labels))
        if spec.classes_per_client > present:
            raise ValueError(f"{spec.classes_per_client} classes per client, but the data has {present}")
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=spec.seed,
        )
    else:  # shards
        if num_partitions * spec.shards_per_client > len(labels):
            raise ValueError(
                f"{num_partitions} clients x {spec.shards_per_client} shards is more shards than "
                f"{len(labels)} samples"
            )
        partitioner = ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=spec.shards_per_client,
            seed=spec.seed,
        )
    partitioner.dataset = Dataset.from_dict({"label": labels, "index": index})
    with warnings.catch_warnings():  # pyarrow's deprecation notice about the partitioners' sort options
        warnings.simplefilter("ignore", FutureWarning)
        return tuple(np.sort(_indices(partitioner.load_partition(i))) for i in range(num_partitions))


def split_holdout(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, test) with ``fraction`` held out."""
    if fraction <= 0 or len(indices) < 2:
        return indices, indices[:0]
    order = np.random.default_rng(seed).permutation(len(indices))
    n_test = max(1, int(round(len(indices) * fraction)))
    return np.sort(indices[order[n_test:]]), np.sort(indices[order[:n_test]])


def label_skew(histograms: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the pooled one.

    ``histograms`` is clients x classes (samples per class). It is 0 when every
    client has the pooled distribution and 1 - 1/C when each client holds one of C
    balanced classes. Clients with no samples are left out.

        skew = mean_c  1/2 sum_k | n_ck / n_c  -  N_k / N |
    """
    counts = np.asarray(histograms, dtype=np.float64)
    counts = counts[counts.sum(axis=1) > 0]
    if len(counts) == 0:
        return 0.0
    pooled = counts.sum(axis=0) / counts.sum()
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float(np.mean(0.5 * np.abs(shares - pooled).sum(axis=1)))
