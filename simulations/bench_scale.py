"""Start-up time and server memory against the number of clients: 10,000 MNIST clients against 10.

Both sample 10 clients per round.

Each configuration runs in a fresh Python process (``--one N``) on Flower's simulation
engine, exactly as ``fedprune simulate`` runs it: the ServerApp runs in that process
and the ClientApps in Ray's worker processes, so the process's peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, measured) is the server's,
together with the simulation engine's in-process parts (the SuperLink's state, one
Context per node). PruneFL with client sampling (importance uploaded by each
participant, one model-sized sum on the server), initial pruning off (it is on one
client's data and does not depend on the number of clients).

Times are wall-clock seconds from the call of ``simulate`` (Ray's start included),
observed through :class:`server.progress.RunProgress`:

* ``nodes_ready_s``: the nodes are known (eagerly: all described; lazily: registered);
* ``round1_start_s``: round 0's row is written (the initial model evaluated), round 1 starts;
* ``round1_end_s``: round 1's row is written. Under lazy description round 1 pays what
  eager description pays before it for the sampled nodes only: their describe and,
  in each Ray worker, the first load and partitioning of the data set.

    python -m simulations.bench_scale --data-dir /path/to/data [--clients 10000 --baseline 10 --rounds 3]

prints both runs' figures and their ratios, and writes them to ``--output``/scale.json.
``--describe all`` measures the eager description every node got before lazy
description (``federation.describe``; see docs/gpus-and-clusters.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from server.progress import RunProgress
from server.results import RoundRow

CLIENTS = 10_000  # the large federation; the baseline has 10


class StartClock(RunProgress):
    """The seconds since ``started`` at which the run reached its first milestones."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.marks: dict[str, float] = {}

    def _mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic() - self.started)

    def run_started(self, rounds: int, resumed_after: int | None) -> None:
        self._mark("nodes_ready_s")

    def round_ended(self, row: RoundRow) -> None:
        if row.round in (0, 1):
            self._mark("round1_start_s" if row.round == 0 else "round1_end_s")


def run_one(clients: int, sampled: int, rounds: int, output: Path, data_dir: str, describe: str) -> dict:
    """Run one federation in this process; return its figures and this process's peak RSS."""
    import logging

    from common.config import load_config
    from simulations.runner import simulate

    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = load_config(
        None,
        [
            "data.dataset=mnist",
            "model.name=lenet5",
            f"data.dir={data_dir}" if data_dir else "data.dir=''",
            f"simulation.num-clients={clients}",
            f"federation.clients-per-round={sampled}",
            f"federation.min-clients={min(sampled, clients)}",
            f"federation.rounds={rounds}",
            f"federation.describe={describe}",
            "pruning.prunefl.initial-pruning=off",
            "pruning.prunefl.reconfig-interval=2",
            "output.checkpoint-every=0",
            f"output.dir={output}",
            f"output.name=scale-{clients}-{describe}",
        ],
    )
    load = os.getloadavg()
    started = time.monotonic()
    clock = StartClock(started)
    summary = simulate(config, progress=clock, verbose=False)
    return {
        "clients": clients,
        "clients_per_round": sampled,
        "rounds": rounds,
        "describe": describe,
        **clock.marks,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "wall_s": time.monotonic() - started,
        "load_average_before": list(load),
        "load_average_after": list(os.getloadavg()),
        "final_accuracy": summary.final_accuracy,
        "results_dir": summary.results_dir,
    }


def child_command(n: int, sampled: int, rounds: int, output: Path, data_dir: str, describe: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "simulations.bench_scale",
        "--one",
        str(n),
        "--sampled",
        str(sampled),
        "--rounds",
        str(rounds),
        "--output",
        str(output),
        "--data-dir",
        data_dir,
        "--describe",
        describe,
    ]


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def describe_line(run: dict) -> str:
    return (
        f"{run['clients']:>7,} clients ({run['clients_per_round']} per round, {run['rounds']} rounds, "
        f"describe={run['describe']}): round 1 starts at {run['round1_start_s']:.1f} s "
        f"(nodes ready at {run['nodes_ready_s']:.1f} s), ends at {run['round1_end_s']:.1f} s; "
        f"server peak RSS {run['peak_rss_mib']:.0f} MiB; wall {run['wall_s']:.0f} s"
    )


def measure(
    clients: int,
    baseline: int,
    sampled: int,
    rounds: int,
    output: Path,
    data_dir: str,
    command: str,
    describe: str = "auto",
) -> dict:
    """Run the baseline and the large federation, each in its own process; return both and the ratios.

    ``command`` is the command line that asked for it, for the record.
    """
    output.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in (baseline, clients):
        child = child_command(n, sampled, rounds, output, data_dir, describe)
        done = subprocess.run(child, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{shlex.join(child)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        runs.append(json.loads(lines[-1]))
        print(describe_line(runs[-1]), flush=True)
    base, large = runs
    result = {
        "runs": runs,
        "start_ratio": large["round1_start_s"] / base["round1_start_s"],
        "ratio": large["peak_rss_mib"] / base["peak_rss_mib"],  # of the peak RSS
        "command": command,
        "commit": commit(),
        "cpus": os.cpu_count(),
    }
    (output / "scale.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--baseline", type=int, default=10)
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--describe", choices=("auto", "all"), default="auto", help="federation.describe")
    parser.add_argument("--output", type=Path, default=Path("results/bench-scale"))
    parser.add_argument("--data-dir", default="", help="data folder with mnist/ (else $FEDPRUNE_DATA_DIR)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: one federation
    args = parser.parse_args()
    if args.one is not None:
        output = args.output.resolve()
        print(json.dumps(run_one(args.one, args.sampled, args.rounds, output, args.data_dir, args.describe)))
        return
    command = shlex.join(["python", "-m", "simulations.bench_scale", *sys.argv[1:]])
    result = measure(
        args.clients,
        args.baseline,
        args.sampled,
        args.rounds,
        args.output.resolve(),
        args.data_dir,
        command,
        args.describe,
    )
    base, large = result["runs"]
    print(
        f"{args.clients:,} against {args.baseline:,} clients: round 1 starts after "
        f"{large['round1_start_s']:.1f} s against {base['round1_start_s']:.1f} s "
        f"(x{result['start_ratio']:.2f}); server peak RSS {large['peak_rss_mib']:.0f} MiB against "
        f"{base['peak_rss_mib']:.0f} MiB (x{result['ratio']:.2f}); measured, commit {result['commit']}, "
        f"results in {args.output}"
    )


if __name__ == "__main__":
    main()
