"""Server memory against the number of clients: 1,000 MNIST clients, 10 sampled per round, against 10.

Each configuration runs in a fresh Python process (``--one N``) on Flower's simulation
engine, exactly as ``fedprune simulate`` runs it: the ServerApp runs in that process
and the ClientApps in Ray's worker processes, so the process's peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, measured) is the server's,
together with the simulation engine's in-process parts (the SuperLink's state).
PruneFL with client sampling (importance uploaded by each participant, one
model-sized sum on the server), initial pruning off (it is on one client's data
and does not depend on the number of clients).

    python -m simulations.bench_scale --data-dir /path/to/data [--clients 1000 --baseline 10 --rounds 3]

prints both peak RSS figures and their ratio, and writes them to ``--output``/scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run_one(clients: int, sampled: int, rounds: int, output: Path, data_dir: str) -> dict:
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
            "pruning.prunefl.initial-pruning=off",
            "pruning.prunefl.reconfig-interval=2",
            "output.checkpoint-every=0",
            f"output.dir={output}",
            f"output.name=scale-{clients}",
        ],
    )
    started = time.monotonic()
    summary = simulate(config)
    return {
        "clients": clients,
        "clients_per_round": sampled,
        "rounds": rounds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "wall_s": time.monotonic() - started,
        "final_accuracy": summary.final_accuracy,
        "results_dir": summary.results_dir,
    }


def measure(
    clients: int, baseline: int, sampled: int, rounds: int, output: Path, data_dir: str, command: str
) -> dict:
    """Run the baseline and the large federation, each in its own process; return both and the ratio.

    ``command`` is the command line that asked for it, for the record.
    """
    output.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in (baseline, clients):
        command = [
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
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        runs.append(json.loads(lines[-1]))
        print(
            f"{n} clients ({sampled} per round, {rounds} rounds): server peak RSS "
            f"{runs[-1]['peak_rss_mib']:.0f} MiB, wall {runs[-1]['wall_s']:.0f} s",
            flush=True,
        )
    result = {
        "runs": runs,
        "ratio": runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"],
        "command": command,
    }
    (output / "scale.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=10)
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("results/bench-scale"))
    parser.add_argument("--data-dir", default="", help="data folder with mnist/ (else $FEDPRUNE_DATA_DIR)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: one federation
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.sampled, args.rounds, args.output.resolve(), args.data_dir)))
        return
    command = shlex.join(["python", "-m", "simulations.bench_scale", *sys.argv[1:]])
    result = measure(
        args.clients, args.baseline, args.sampled, args.rounds, args.output.resolve(), args.data_dir, command
    )
    print(
        f"server peak RSS: {result['runs'][1]['peak_rss_mib']:.0f} MiB with {args.clients} clients, "
        f"{result['runs'][0]['peak_rss_mib']:.0f} MiB with {args.baseline}: ratio {result['ratio']:.2f} "
        f"(measured; results in {args.output})"
    )


if __name__ == "__main__":
    main()
