"""A method is one file behind one interface: a new one needs nothing in the strategy,
the ClientApp or the codec.

``VoteMethod`` below is such a file. Its clients upload a statistic of their own
(a vector over the prunable weights), scaled by a task entry of its own that the
server sends in training rounds; its server hook merges the uploads into a sum it
owns, checkpoints that sum, and reconfigures from it. Registered for the test
only (``METHODS``), it runs through the real app in process, and the mask it ends
with is checked against the hand-computed one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from client.app import app as client_app
from common.config import load_config
from common.cost_model import CostModel
from common.layout import ModelLayout
from common.pruning import METHODS, ClientReport, MethodEnv, MethodSettings, PruningMethod, RoundUpdate
from common.pruning.base import ConfigValue
from common.settings import Scalar
from common.training import LocalResult, NodeStore, TrainingHooks
from server.app import run_federation
from server.checkpoint import latest_checkpoint
from tests.inprocess_grid import InProcessGrid

SCALE = 2.0  # the task entry the server sends with every training message
NUM_NODES = 3


def vote(layout: ModelLayout, scale: float) -> np.ndarray:
    """What every client uploads: scale * (j mod 7) at prunable position j."""
    return (scale * (np.arange(layout.num_prunable) % 7)).astype(np.float32)


class VoteHooks(TrainingHooks):
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def upload(
        self, result: LocalResult, layout: ModelLayout, mask: np.ndarray, mask_version: int, store: NodeStore
    ) -> np.ndarray | None:
        rounds = store.load("rounds")  # the node's own count, kept between rounds
        store.save("rounds", np.array([1 if rounds is None else int(rounds[0]) + 1]))
        return vote(layout, self.scale)


class VoteMethod(PruningMethod):
    """Keeps the prunable weights whose summed votes reach 4/7 of the largest, after round 2."""

    name = "vote"
    Settings = MethodSettings

    def __init__(self, settings: MethodSettings, env: MethodEnv) -> None:
        super().__init__(settings, env)
        self.votes = np.zeros(env.layout.num_prunable, dtype=np.float64)
        self.seen: list[tuple[int, int]] = []  # (round, partition) of every merged upload

    def task_entries(self, server_round: int, training: bool) -> dict[str, ConfigValue]:
        return {"vote-scale": SCALE if training else 0.0}

    def training_hooks(self, client_config: Mapping[str, ConfigValue], seed: int = 0) -> TrainingHooks:
        return VoteHooks(float(client_config["vote-scale"]))  # type: ignore[arg-type]

    def upload_length(self, server_round: int, mask: np.ndarray) -> int | None:
        return self.env.layout.num_prunable

    def check_report(self, report: ClientReport) -> None:
        super().check_report(report)
        if report.upload is None or (report.upload < 0).any():
            raise ValueError("votes are non-negative")

    def merge_clients(self, update: RoundUpdate) -> np.ndarray | None:
        for report in update.reports:
            self.votes += report.upload.astype(np.float64)  # type: ignore[union-attr]
            self.seen.append((update.server_round, report.partition_id))
        return None

    def reconfigure(self, server_round: int, floats: np.ndarray, mask: np.ndarray, cost: CostModel):
        if server_round != 2:
            return None
        return self.env.layout.mask_from_prunable(self.votes >= 4 / 6 * self.votes.max())

    def state_dict(self) -> dict[str, np.ndarray | Scalar]:
        return {"votes": self.votes.copy()}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Scalar]) -> None:
        self.votes = np.asarray(state["votes"], dtype=np.float64).copy()


def test_a_method_of_its_own_uploads_merges_and_reconfigures_through_the_generic_code(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setitem(METHODS, "vote", VoteMethod)
    instances: list[VoteMethod] = []
    original_init = VoteMethod.__init__

    def init(self, settings, env):
        original_init(self, settings, env)
        instances.append(self)

    monkeypatch.setattr(VoteMethod, "__init__", init)
    config = load_config(
        None,
        [
            f"output.dir={tmp_path}",
            "output.name=run",
            f"simulation.num-clients={NUM_NODES}",
            "pruning.method=vote",
            "federation.rounds=3",
            "train.local-steps=1",
            "output.checkpoint-every=1",
        ],
    )
    grid = InProcessGrid(client_app, NUM_NODES)
    summary = run_federation(grid, config)

    server = next(m for m in instances if m.seen)  # the server's instance (clients build their own)
    layout = server.env.layout
    assert sorted(server.seen) == [(r, p) for r in (1, 2, 3) for p in range(NUM_NODES)]
    expected_votes = 3 * NUM_NODES * vote(layout, SCALE).astype(np.float64)  # 3 rounds x 3 clients
    assert np.array_equal(server.votes, expected_votes)
    # the mask chosen in round 2 from rounds 1-2's votes: j mod 7 >= 4 (4/6 of the largest, 6)
    kept = np.arange(layout.num_prunable) % 7 >= 4
    final = np.load(Path(summary.results_dir) / "mask.npz", allow_pickle=False)
    assert np.array_equal(np.concatenate([final[t.name].ravel() for t in layout.prunable]), kept)
    # the sum the method owns is in its checkpoint, and the uploads travelled in the replies
    checkpoint = latest_checkpoint(Path(summary.results_dir))
    assert np.array_equal(checkpoint.state["method"]["votes"], expected_votes)
    counted = [
        ctx.state.array_records["fedprune.method"]["rounds"].numpy()[0] for ctx in grid.contexts.values()
    ]
    assert [int(c) for c in counted] == [3] * NUM_NODES  # each node counted its 3 rounds in its store
