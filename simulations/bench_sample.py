"""Where a simulated round's server time goes: a sampling profiler of every thread (no py-spy needed).

Runs ``fedprune simulate`` in this process for one of ``bench_overhead``'s
configurations (same model, data and settings) while a thread records every other
thread's Python stack every ``--interval`` seconds, then prints, for the thread that
runs the ServerApp, the frames found in the most samples (inclusive: a function
counts while it or anything it calls runs) with their share of the thread's samples
and the seconds they stand for. Waiting is included (Flower's ``send_and_receive``
sleeps while the clients train); the ClientApps run in Ray's worker processes and
are not sampled, ``phases.csv`` times their phases.

    python -m simulations.bench_sample --model conv2 --configuration dense --rounds 6 --skip 2

``--skip`` leaves out the samples before the given round starts (node discovery, the
first round's warm-up), as read from ``rounds.csv`` (its cumulative ``elapsed_s``,
counted from the ServerApp thread's first sample).
"""

from __future__ import annotations

import argparse
import collections
import csv
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

Sample = tuple[float, str, tuple[str, ...]]  # (time, thread name, frames outermost first)


def frame_names(frame) -> tuple[str, ...]:  # noqa: ANN001 - a frame object
    """``file:function`` of a stack, outermost first, with the repository and site-packages left out."""
    names = []
    root, site = str(Path(__file__).resolve().parents[1]) + os.sep, f"site-packages{os.sep}"
    while frame is not None:
        path = frame.f_code.co_filename.replace(root, "")
        path = path.split(site, 1)[-1]
        names.append(f"{path}:{frame.f_code.co_name}")
        frame = frame.f_back
    return tuple(reversed(names))


class Sampler:
    """Records the stacks of every other thread every ``interval`` seconds, until stopped."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            now = time.time()
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self.samples.append((now, names.get(ident, str(ident)), frame_names(frame)))


def inclusive_counts(samples: Iterable[Sample], thread: str) -> tuple[int, collections.Counter]:
    """The number of samples of the threads whose name contains ``thread``, and per frame
    the number of those samples it appears in (once per sample, however deep the recursion)."""
    total, counts = 0, collections.Counter()
    for _, name, frames in samples:
        if thread in name:
            total += 1
            counts.update(set(frames))
    return total, counts


def busiest_thread(samples: Iterable[Sample], frame: str) -> str:
    """The name of the thread with the most samples that contain a frame ending in ``frame``."""
    counts = collections.Counter(
        name for _, name, frames in samples if any(f.endswith(frame) for f in frames)
    )
    return counts.most_common(1)[0][0] if counts else ""


def round_start(results: Path, server_round: int) -> float | None:
    """Seconds from the run's start at which ``server_round`` started (``rounds.csv``)."""
    with open(results / "rounds.csv", newline="") as handle:
        rows = {int(r["round"]): r for r in csv.DictReader(handle)}
    previous = rows.get(server_round - 1)
    return float(previous["elapsed_s"]) if previous and previous.get("elapsed_s") else None


def main(argv: list[str] | None = None) -> int:
    from common.config import load_config
    from simulations.bench_overhead import MODELS, overrides
    from simulations.runner import simulate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--configuration", choices=("dense", "prunefl"), default="dense")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip", type=int, default=2, help="leave out samples before this round")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between samples")
    parser.add_argument("--top", type=int, default=40, help="frames to print")
    parser.add_argument("--data-dir", default=os.environ.get("FEDPRUNE_DATA_DIR", ""))
    parser.add_argument("--output", type=Path, default=Path("results/bench_sample"))
    args = parser.parse_args(argv)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = load_config(
        None, overrides(args.model, args.configuration, args.rounds, 2, args.data_dir, args.output)
    )
    with Sampler(args.interval) as sampler:
        summary = simulate(config, verbose=False)
    server = "server/app.py:run_federation"
    thread = busiest_thread(sampler.samples, server)
    server_started = min((t for t, name, _ in sampler.samples if name == thread), default=0.0)
    start = round_start(Path(summary.results_dir), args.skip) if args.skip > 1 else None
    samples = [s for s in sampler.samples if start is None or s[0] - server_started >= start]
    total, counts = inclusive_counts(samples, thread)
    span = samples[-1][0] - samples[0][0] if samples else 0.0
    print(
        f"# {args.model} {args.configuration}: {total} samples of thread {thread!r} over {span:.1f} s "
        f"from round {args.skip}; load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| samples | share | seconds | frame |\n|---|---|---|---|")
    for frame, count in counts.most_common(args.top):
        print(f"| {count} | {count / total:.1%} | {count * span / total:.2f} | `{frame}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
