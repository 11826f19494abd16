"""The partition summary and plot a run writes, from what the nodes report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from client.app import app as client_app
from common.config import load_config
from server.app import run_federation
from server.nodes import NodeInfo
from server.partition_report import PARTITIONS_FILE, PARTITIONS_PLOT, write_partition_report
from tests.inprocess_grid import InProcessGrid

DIGITS_TRAIN = 1438  # scikit-learn's 1,797 digits minus the 359 the server holds out for testing


def test_summary_and_plot_from_node_reports(tmp_path):
    nodes = [
        NodeInfo(11, 0, 2, train_size=6, test_size=1, train_labels=(4, 2, 0), test_labels=(1, 0, 0)),
        NodeInfo(12, 1, 2, train_size=5, test_size=0, train_labels=(0, 0, 5), test_labels=(0, 0, 0)),
    ]
    summary = write_partition_report(tmp_path, nodes, "toy", "dirichlet", 3)
    on_disk = json.loads((tmp_path / PARTITIONS_FILE).read_text())
    assert on_disk == summary
    assert (summary["clients"], summary["train_samples"], summary["test_samples"]) == (2, 11, 1)
    assert [c["classes"] for c in summary["per_client"]] == [2, 1]
    assert summary["per_client"][1]["train_labels"] == [0, 0, 5]
    # pooled (4, 2, 5)/11; client 0: (4, 2, 0)/6, client 1: (0, 0, 5)/5
    pooled = np.array([4, 2, 5]) / 11
    expected = np.mean(
        [0.5 * np.abs(np.array([4, 2, 0]) / 6 - pooled).sum(), 0.5 * np.abs([0, 0, 1] - pooled).sum()]
    )
    assert summary["label_skew"] == expected
    assert (tmp_path / PARTITIONS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_writes_what_each_node_holds(tmp_path):
    config = load_config(
        None,
        [
            f"output.dir={tmp_path}",
            "output.name=run",
            "simulation.num-clients=4",
            "federation.rounds=1",
            "pruning.method=none",
            "data.partitioning=dirichlet",
            "data.alpha=0.1",
        ],
    )
    summary = run_federation(InProcessGrid(client_app, 4), config)
    folder = Path(summary.results_dir)
    report = json.loads((folder / PARTITIONS_FILE).read_text())
    assert (folder / PARTITIONS_PLOT).is_file()
    clients = report["per_client"]
    assert [c["partition_id"] for c in clients] == [0, 1, 2, 3]
    for client in clients:
        assert sum(client["train_labels"]) == client["train_samples"]
        assert sum(client["test_labels"]) == client["test_samples"]
    assert report["train_samples"] + report["test_samples"] == DIGITS_TRAIN  # every sample once
    assert report["label_skew"] > 0.3  # alpha = 0.1 is far from IID
