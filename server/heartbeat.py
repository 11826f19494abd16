"""Progress lines while one long, blocking step runs (initial pruning).

A step such as PruneFL's initial pruning can block the ServerApp for many
minutes, on the server or while it waits for the node doing it; in a deployment
nothing else is printed meanwhile, and a silent run cannot be told from a hung
one. :class:`Heartbeat` logs one line every ``interval`` seconds from a helper
thread until the step returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from logging import INFO
from types import TracebackType

from flwr.supercore import log

PROGRESS_INTERVAL_S = 20.0  # under the 30 s a deployment's operator may wait for a sign of life


class Heartbeat:
    """Within ``with Heartbeat(interval, line):``, log ``line(elapsed seconds)`` every ``interval`` s."""

    def __init__(self, interval: float, line: Callable[[float], str]) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval}")
        self.interval = interval
        self.line = line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fedprune-heartbeat", daemon=True)
        self._started = 0.0

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            log(INFO, "%s", self.line(time.monotonic() - self._started))

    def __enter__(self) -> Heartbeat:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
