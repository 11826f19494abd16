"""Progress lines while initial pruning blocks the ServerApp (server/heartbeat.py)."""

from __future__ import annotations

import threading

import pytest

from server import heartbeat as heartbeat_module
from server.heartbeat import PROGRESS_INTERVAL_S, Heartbeat
from server.initial_pruning import progress_line


def test_a_line_is_logged_every_interval_until_the_step_returns(monkeypatch):
    lines: list[str] = []
    two = threading.Event()

    def record(level: int, fmt: str, text: str) -> None:
        lines.append(text)
        if len(lines) >= 2:
            two.set()

    monkeypatch.setattr(heartbeat_module, "log", record)
    heartbeat = Heartbeat(0.01, lambda elapsed: f"still running after {elapsed:.2f} s")
    with heartbeat:
        assert two.wait(timeout=30), "no second progress line"
    after = len(lines)
    assert not heartbeat._thread.is_alive() and len(lines) == after  # nothing once the step returned
    assert all(line.startswith("still running after ") for line in lines)
    seconds = [float(line.split()[3]) for line in lines]
    assert seconds == sorted(seconds) and seconds[0] > 0


def test_the_heartbeat_stops_when_the_step_fails(monkeypatch):
    monkeypatch.setattr(heartbeat_module, "log", lambda *args: None)
    heartbeat = Heartbeat(60.0, str)
    with pytest.raises(RuntimeError), heartbeat:
        raise RuntimeError("initial pruning failed")
    assert not heartbeat._thread.is_alive()


def test_the_interval_keeps_within_thirty_seconds_and_must_be_positive():
    assert 0 < PROGRESS_INTERVAL_S < 30
    with pytest.raises(ValueError, match="interval"):
        Heartbeat(0, str)


def test_the_lines_say_where_initial_pruning_runs_and_for_how_long():
    assert (
        progress_line("server", 3, 600.0)(40.4)
        == "initial pruning on the server (partition 3): running for 40 s"
    )
    assert progress_line("client", 0, 600.0)(20.0) == (
        "initial pruning on the node of partition 0: waiting for its reply for 20 s "
        "(federation.round-timeout 600 s)"
    )
