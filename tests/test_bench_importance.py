"""simulations/bench_importance.py: the replay counts what the run's accounting counts, and compares masks."""

from __future__ import annotations

from client.app import app as client_app
from server.app import run_federation
from server.results import read_rounds
from simulations.bench_importance import Replay, Variant, replaying
from tests.inprocess_grid import InProcessGrid
from tests.test_reply_validation import config


def test_the_replay_counts_the_exact_upload_as_the_accounting_does(tmp_path):
    settings = config(tmp_path)  # one round, which reconfigures: every client uploads
    variants = [Variant(0.0, 1.0), Variant(1000.0, 1000.0), Variant(1000.0, 1000.0, "float32")]
    replay = Replay(variants, settings.wire.format())
    with replaying(replay):
        run_federation(InProcessGrid(client_app, 3), settings)
    row = read_rounds(tmp_path / "run")[1]
    assert replay.uploads == 3 and replay.exact_bytes == int(row["importance_up"])
    default, everything, exact = replay.shadows
    assert [len(s.reconfigurations) for s in replay.shadows] == [1, 1, 1]
    # every nonzero entry in float32: the same sum, so the same mask
    assert exact.reconfigurations[0]["identical"]
    assert 0 < default.sent_entries <= everything.sent_entries <= replay.pruned_entries
    assert default.upload_bytes < replay.exact_bytes
    record = default.reconfigurations[0]
    assert record["round"] == 1 and isinstance(record["identical"], bool)
