"""communication.csv written a round at a time: every row once, in order, cut back on resume."""

import csv
import gc

from common.wire import MessageBytes
from server.communication import COLUMNS, CommunicationLog


def rows(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def record(log, server_round, node_id, direction="down"):
    log.record(
        server_round, "train", direction, node_id, node_id - 1, MessageBytes(values=10 * node_id), 5.0, 99
    )


def test_rows_are_written_when_the_round_changes_and_at_the_end(tmp_path):
    path = tmp_path / "communication.csv"
    log = CommunicationLog(path)
    record(log, 1, 1)
    record(log, 1, 2, "up")
    assert rows(path) == [list(COLUMNS)]  # round 1 is still going
    record(log, 2, 1)
    assert [r[:4] for r in rows(path)[1:]] == [["1", "train", "down", "1"], ["1", "train", "up", "2"]]
    total = log.totals()  # the run's end
    assert total.down.messages == 2 and total.up.messages == 1
    assert [r[0] for r in rows(path)[1:]] == ["1", "1", "2"]
    assert rows(path)[1] == ["1", "train", "down", "1", "0", "10", "10", "0", "0", "0", "0", "5.0", "99"]
    assert log.bytes_of(1, "train", 2) == 20


def test_a_checkpoint_holds_every_row_and_a_resume_cuts_the_rest(tmp_path):
    path = tmp_path / "communication.csv"
    log = CommunicationLog(path)
    record(log, 1, 1)
    state = log.state_dict()  # taken at the end of round 1
    assert len(rows(path)) == 2 and state["csv_bytes"] == path.stat().st_size
    record(log, 2, 1)
    record(log, 3, 1)  # round 2 written, round 3 pending
    resumed = CommunicationLog(path, new_file=False)
    resumed.load_state_dict(state)
    assert len(rows(path)) == 2
    record(resumed, 2, 1)
    resumed.flush()
    assert [r[0] for r in rows(path)[1:]] == ["1", "2"]
    del log  # the first log's pending round 3 belonged to the run that was cut: not written
    gc.collect()
    assert [r[0] for r in rows(path)[1:]] == ["1", "2"]


def test_rows_still_pending_are_written_when_the_log_goes(tmp_path):
    path = tmp_path / "communication.csv"
    log = CommunicationLog(path)
    record(log, 4, 1)
    del log
    gc.collect()
    assert [r[0] for r in rows(path)[1:]] == ["4"]


def test_no_file_no_rows():
    log = CommunicationLog(None)
    record(log, 1, 1)
    log.flush()
    assert log.totals().down.messages == 1
