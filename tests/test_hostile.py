"""The benchmark's attacks (simulations/hostile.py) against the server in process, each rule.

One of three clients is hostile for two rounds; the table says how many of its
replies the always-on checks reject. Whatever the rule, the run ends with a
finite model and the honest clients' replies are all used.
"""

from __future__ import annotations

import numpy as np
import pytest

from server.app import run_federation
from server.results import read_rounds
from simulations.hostile import ATTACKS, HostileClientApp
from tests.inprocess_grid import InProcessGrid
from tests.test_reply_validation import config, final_model

EXPECTED = {
    # attack: (rejected in round 1, in round 2, a warning that must be logged)
    "values-1e30": (1, 1, "rejected: outlier"),
    "importance-1e30": (0, 0, "uploaded importance of node 100 scaled by"),
    "replay": (0, 1, "rejected: replay"),
    "bfloat16": (1, 1, "rejected: bad-payload: array 'values' is written in bfloat16"),
    "as-update": (1, 1, "rejected: bad-payload: array 'values' holds an update"),
    "wrong-round": (1, 1, "rejected: wrong-round"),
    "sign-flip": (0, 0, None),
    # x 5: above federation.outlier-median-factor = 4 (set below; off by default) x the median
    # of the three updates in round 1; in round 2 this client's own update is small enough for
    # x 5 to stay under it
    "scaled": (1, 0, "outlier-median-factor"),
}
CASES = [(attack, "mean") for attack in ATTACKS] + [
    (attack, rule)
    for attack in ("sign-flip", "scaled", "importance-1e30")
    for rule in ("clip", "trimmed-mean", "median")
]


@pytest.mark.parametrize(("attack", "rule"), CASES)
def test_each_attack_is_rejected_or_bounded(tmp_path, attack, rule, warnings_logged):
    grid = InProcessGrid(HostileClientApp(attack, frozenset({0})), 3)
    extra = [
        "federation.rounds=2",
        "pruning.prunefl.reconfig-interval=2",
        f"federation.aggregation={rule}",
        "federation.outlier-median-factor=4",
    ]
    run_federation(grid, config(tmp_path, extra))
    rows = read_rounds(tmp_path / "run")
    first, second, warning = EXPECTED[attack]
    assert [(int(r["rejected"]), int(r["failures"])) for r in rows[1:]] == [(first, 0), (second, 0)]
    if warning is not None:
        assert any(warning in w for w in warnings_logged), warnings_logged
    assert not any("within federation.round-timeout" in w for w in warnings_logged)
    assert not any("node 101" in w or "node 102" in w for w in warnings_logged)  # honest ones untouched
    assert all(np.isfinite(v).all() for v in final_model(tmp_path).values())
    assert all(r["train_loss"] != "" for r in rows[1:])  # no round was lost


def test_every_attack_has_an_expectation():
    assert set(EXPECTED) == set(ATTACKS)
