"""The partition summary of a run: samples and label histogram per client, and a plot.

Built from what the nodes reported in their ``query.describe`` replies (samples
per class of their training and test splits), so it shows the data the clients
actually hold, in a simulation and on devices alike. Written to the run's
results folder as ``partitions.json`` and ``partitions.png``.

When every node is described before round 1 (every deployment, every run in which
all clients train every round) the report covers every client. Under lazy
description (a simulation sampling ``federation.clients-per-round``, see
:mod:`server.nodes`) a node is described when first sampled, so the report,
written at the end of the run, covers the clients sampled at least once: its
``clients``, sample totals, label skew and ``per_client`` are theirs, and two more
keys say so: ``description`` (``"lazy"``) and ``connected_clients``, the number of
clients the run could sample from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data import label_skew

from .nodes import NodeInfo

PARTITIONS_FILE = "partitions.json"
PARTITIONS_PLOT = "partitions.png"


def _histograms(nodes: list[NodeInfo], num_classes: int, split: str) -> np.ndarray:
    table = np.zeros((len(nodes), num_classes), dtype=np.int64)
    for row, node in enumerate(nodes):
        counts = node.train_labels if split == "train" else node.test_labels
        table[row, : min(len(counts), num_classes)] = counts[:num_classes]
    return table


def partition_summary(
    nodes: list[NodeInfo], dataset: str, partitioning: str, num_classes: int, connected: int | None = None
) -> dict:
    """Samples, label histograms and label skew of every described node, by partition id.

    ``connected``: the run describes nodes lazily and could sample from this many.
    """
    train, test = _histograms(nodes, num_classes, "train"), _histograms(nodes, num_classes, "test")
    lazy = {} if connected is None else {"description": "lazy", "connected_clients": connected}
    return {
        "dataset": dataset,
        "partitioning": partitioning,
        "num_classes": num_classes,
        **lazy,
        "clients": len(nodes),
        "train_samples": int(sum(n.train_size for n in nodes)),
        "test_samples": int(sum(n.test_size for n in nodes)),
        "label_skew": label_skew(train),  # mean total-variation distance to the pooled labels
        "per_client": [
            {
                "partition_id": node.partition_id,
                "node_id": node.node_id,
                "train_samples": node.train_size,
                "test_samples": node.test_size,
                "classes": int(np.count_nonzero(train[row])),
                "train_labels": train[row].tolist(),
                "test_labels": test[row].tolist(),
            }
            for row, node in enumerate(nodes)
        ],
    }


def plot_partitions(summary: dict, path: Path) -> None:
    """A stacked bar per client: its training samples by class (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = summary["per_client"]
    counts = np.array([c["train_labels"] for c in clients], dtype=np.int64).reshape(
        len(clients), summary["num_classes"]
    )
    labels = [str(c["partition_id"]) for c in clients]
    colours = plt.get_cmap("tab10" if summary["num_classes"] <= 10 else "turbo")(
        np.linspace(0, 1, summary["num_classes"]) if summary["num_classes"] > 10 else np.arange(10)
    )
    figure, axes = plt.subplots(figsize=(min(4 + 0.25 * len(clients), 24), 4.5), layout="constrained")
    bottom = np.zeros(len(clients))
    for k in range(summary["num_classes"]):
        axes.bar(labels, counts[:, k], bottom=bottom, color=colours[k], width=0.85, label=str(k))
        bottom += counts[:, k]
    axes.set_xlabel("client (partition id)")
    axes.set_ylabel("training samples")
    clients_text = f"{summary['clients']} clients"
    if "connected_clients" in summary:
        clients_text = f"the {summary['clients']} sampled of {summary['connected_clients']} clients"
    axes.set_title(
        f"{summary['dataset']}, {summary['partitioning']} partitioning: {clients_text}, "
        f"label skew {summary['label_skew']:.3f}"
    )
    if len(clients) > 40:
        axes.set_xticks(range(0, len(clients), max(1, len(clients) // 20)))
    if summary["num_classes"] <= 20:
        axes.legend(title="class", ncols=2, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_partition_report(
    folder: Path,
    nodes: list[NodeInfo],
    dataset: str,
    partitioning: str,
    num_classes: int,
    connected: int | None = None,
) -> dict:
    """Write ``partitions.json`` and ``partitions.png`` to ``folder``; return the summary."""
    summary = partition_summary(nodes, dataset, partitioning, num_classes, connected)
    path = folder / PARTITIONS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    plot_partitions(summary, folder / PARTITIONS_PLOT)
    return summary
