"""What ``fedprune simulate`` (and compare, rethink, bench) show while a run goes.

:class:`RunView` observes a run (:class:`server.progress.RunProgress`) and shows

* on a terminal, one live view (rich): a progress bar over the rounds with its ETA,
  a progress bar for initial pruning (IP rounds, density, training accuracy), and one
  table row per round printed above the bars as the round ends;
* anywhere else (a pipe, CI, a log file), the same rows as plain lines, a line when
  initial pruning starts, passes its accuracy gate and reconfigures the mask, and no
  control characters.

:func:`flower_log` decides what of Flower's log reaches the screen: everything with
``--verbose``; otherwise only warnings and errors, each once, shown through the view
(so they do not tear the live display), with Flower's notices about its own API
(``DEPRECATED FEATURE``) left to ``--verbose``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from common.pruning import InitialPruningStep
from server.progress import RunProgress
from server.recorder import format_bytes
from server.results import RoundRow

# (heading, width) of each column of the round table; every cell is right-aligned
COLUMNS = (
    ("round", 5),
    ("accuracy", 8),
    ("loss", 7),
    ("density", 7),
    ("bytes down", 10),
    ("bytes up", 10),
    ("/dense", 6),
    ("/bound", 6),
    ("wall s", 7),
    ("model s", 8),
    ("rej/fail", 8),
)
LEGEND = (
    "/dense, /bound: the round's bytes (measured) over the dense model's and the bound's; "
    "wall s measured, model s modelled (cost.profile); rej/fail: replies rejected / failed"
)


def _number(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.3f}" if denominator else "n/a"


def row_cells(row: RoundRow) -> list[str]:
    """The table cells of one round (round 0: the initial model, after initial pruning)."""
    sent = row.bytes_down + row.bytes_up
    return [
        str(row.round),
        _number(row.accuracy, 4),
        _number(row.loss, 3),
        _number(row.density, 4),
        format_bytes(row.bytes_down),
        format_bytes(row.bytes_up),
        _ratio(sent, row.dense_bytes),
        _ratio(sent, row.bound_bytes),
        f"{row.wall_time_s:.1f}",
        f"{row.modelled_round_time_s:.1f}",
        f"{row.rejected + row.evaluate_rejected}/{row.failures + row.evaluate_failures}",
    ]


def table_line(cells: list[str]) -> str:
    """Cells aligned under :data:`COLUMNS` (a wider cell pushes the rest right, never cut)."""
    return "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def header_line() -> str:
    return table_line([heading for heading, _ in COLUMNS])


def ip_status(step: InitialPruningStep) -> str:
    """Density, training accuracy (and when it was measured) and reconfigurations so far."""
    gate = "" if step.gate_passed else ", below the gate"
    count = step.reconfigurations
    return (
        f"density {step.density:.4f}, training accuracy {_number(step.accuracy, 4)} "
        f"(IP round {step.measured_at}{gate}), {count} reconfiguration{'' if count == 1 else 's'}"
    )


def ip_line(step: InitialPruningStep) -> str:
    return f"initial pruning: IP round {step.ip_round}/{step.max_rounds}, {ip_status(step)}"


class RunView(RunProgress):
    """The live view (``live=True``) or plain lines of one run; use it as a context manager.

    ``console`` is where the view goes (stdout for ``fedprune``); ``live`` defaults to
    whether that is a terminal. ``errors`` receives Flower's warnings and errors in
    plain mode (stderr), so that a pipe of stdout holds the table only.
    """

    def __init__(
        self, console: Console, title: str, live: bool | None = None, errors: Console | None = None
    ) -> None:
        self.console = console
        self.title = title
        self.live = console.is_terminal if live is None else live
        self.errors = errors or Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.rounds = 0
        self.headed = False
        self.last_reconfigurations = -1
        self.gate_passed = False
        self.progress: Progress | None = None
        self.round_task: TaskID | None = None
        self.ip_task: TaskID | None = None

    # -- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> RunView:
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description:<16}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def say(self, text: str, style: str = "") -> None:
        """One line above the live bars (or a plain line)."""
        if self.live:  # one screen line each, cut at the right edge of a narrow terminal
            markup = f"[{style}]{escape(text)}[/]" if style else escape(text)
            self.console.print(markup, highlight=False, no_wrap=True, overflow="crop")
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, level: str, text: str) -> None:
        """A warning or error of the run's log, shown once by :func:`flower_log`."""
        if self.live:
            style = "bold red" if level in ("ERROR", "CRITICAL") else "yellow"
            self.console.print(f"[{style}]{level.lower()}:[/] {escape(text)}", highlight=False)
        else:
            self.errors.print(f"{level.lower()}: {text}", markup=False, highlight=False)

    # -- RunProgress -----------------------------------------------------------------------
    def run_started(self, rounds: int, resumed_after: int | None) -> None:
        self.rounds = rounds
        self.say(self.title, "bold")
        if resumed_after is not None:
            self.say(f"resuming after round {resumed_after} of {rounds}")
        if self.progress is not None:
            done = resumed_after or 0
            self.round_task = self.progress.add_task(
                "rounds", total=rounds, completed=done, status="", start=resumed_after is not None
            )

    def initial_pruning_started(self, where: str, partition_id: int) -> None:
        where_text = "the server" if where == "server" else "a client"
        self.say(f"initial pruning on {where_text}, on the data of partition {partition_id} ...")
        if self.progress is not None:
            self.ip_task = self.progress.add_task("initial pruning", total=None, status="")

    def initial_pruning_step(self, step: InitialPruningStep) -> None:
        if self.progress is not None and self.ip_task is not None:
            self.progress.update(
                self.ip_task, total=step.max_rounds, completed=step.ip_round, status=ip_status(step)
            )
            return
        # plain lines: when the gate is passed, at every reconfiguration, and every tenth of the rounds
        reconfigured = step.reconfigurations > max(self.last_reconfigurations, 0)
        gate = step.gate_passed and not self.gate_passed
        tenth = step.ip_round % max(1, step.max_rounds // 10) == 0
        self.last_reconfigurations, self.gate_passed = step.reconfigurations, step.gate_passed
        if reconfigured or gate or tenth:
            self.say(ip_line(step))

    def round_ended(self, row: RoundRow) -> None:
        if not self.headed:
            self.headed = True
            self.say(header_line(), "bold")
        self.say(table_line(row_cells(row)))
        if self.progress is None or self.round_task is None:
            return
        if self.ip_task is not None:
            self.progress.remove_task(self.ip_task)
            self.ip_task = None
        if row.round == 0:
            self.progress.start_task(self.round_task)  # the ETA counts federated rounds only
        accuracy = _number(row.accuracy, 4)
        self.progress.update(
            self.round_task,
            completed=row.round,
            status=f"accuracy {accuracy}, density {row.density:.4f}",
        )


class _PassThrough(logging.Handler):
    """Flower's warnings and errors, each once, to the view (or stderr when there is none)."""

    def __init__(self, view: RunView | None, errors: Console) -> None:
        super().__init__(level=logging.WARNING)
        self.view = view
        self.errors = errors
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().strip()
        except (TypeError, ValueError):
            text = str(record.msg)
        if not text or text in self.seen or "DEPRECATED FEATURE" in text:
            return
        self.seen.add(text)
        if self.view is not None:
            self.view.warn(record.levelname, text)
        else:
            self.errors.print(f"{record.levelname.lower()}: {text}", markup=False, highlight=False)


@contextmanager
def flower_log(verbose: bool, view: RunView | None = None, errors: Console | None = None) -> Iterator[None]:
    """Within the block, Flower's log goes in full (``verbose``) or as warnings and errors, once."""
    if verbose:
        yield
        return
    logger = logging.getLogger("flwr")
    handlers = list(logger.handlers)
    for handler in handlers:
        logger.removeHandler(handler)
    passthrough = _PassThrough(view, errors or Console(file=sys.stderr, highlight=False, soft_wrap=True))
    logger.addHandler(passthrough)
    try:
        yield
    finally:
        logger.removeHandler(passthrough)
        for handler in handlers:
            logger.addHandler(handler)


def stdout_console() -> Console:
    """The console of the live view: stdout, a terminal's width or 160 columns in a pipe."""
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=160)
    return console
