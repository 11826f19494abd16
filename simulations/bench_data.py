"""Benchmark: how long loading each data set takes, and what it and its clients cost in memory.

Every figure is measured in a fresh Python process (so no cache or earlier load
helps), after the imports, with the wall-clock time of the call and the process's
resident memory (``VmRSS`` from ``/proc/self/status``) before and after:

* loading (and verifying) MNIST, Fashion-MNIST, CIFAR-10 and FEMNIST;
* MNIST held by 1 client versus by each of 100 clients (``client_split`` for every
  partition in one process, as a simulation process serving many clients does):
  clients hold index arrays into the one copy, so 100 cost barely more than 1.

Usage (a data folder laid out as ``common.data`` describes)::

    python simulations/bench_data.py --data-dir ../shared/data [--fashion-dir /usr/share/datasets]

It prints one line per measurement; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def rss_mib() -> float:
    """Resident memory of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_load(name: str, data_dir: str) -> dict:
    from common.data import load_dataset

    before = rss_mib()
    start = time.perf_counter()
    data = load_dataset(name, Path(data_dir))
    seconds = time.perf_counter() - start
    held = sum(t.numel() * t.element_size() for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    return {
        "what": f"load {name}",
        "seconds": round(seconds, 3),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(rss_mib(), 1),
        "arrays_mib": round(held / 2**20, 1),
        "train": len(data.y_train),
        "test": len(data.y_test),
        "pixel_dtype": str(data.x_train.dtype),
    }


def measure_clients(clients: int, data_dir: str, scheme: str) -> dict:
    import numpy as np

    from common.data import client_split, load_dataset
    from common.data.partition import partition_indices

    partition_indices(np.arange(20) % 2, 2, "iid")  # import flwr-datasets before measuring
    load_dataset("mnist", Path(data_dir))
    loaded = rss_mib()
    start = time.perf_counter()
    splits = [
        client_split("mnist", Path(data_dir), clients, pid, scheme, 0.5, 0, 0.1) for pid in range(clients)
    ]
    seconds = time.perf_counter() - start
    index_bytes = sum(s.train.indices.nbytes + s.test.indices.nbytes for s in splits)
    batches = [next(s.train.batches(32, 0)) for s in splits]  # every client draws a batch
    return {
        "what": f"mnist held by {clients} client(s), {scheme}",
        "seconds": round(seconds, 3),
        "rss_after_load_mib": round(loaded, 1),
        "rss_after_clients_mib": round(rss_mib(), 1),
        "client_increase_mib": round(rss_mib() - loaded, 1),
        "index_arrays_kib": round(index_bytes / 1024, 1),
        "batch": list(batches[0][0].shape),
    }


def run_isolated(args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON line."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"what": " ".join(args), "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, *rest = args.one
        result = measure_load(*rest) if kind == "load" else measure_clients(int(rest[0]), rest[1], rest[2])
        print(json.dumps(result))
        return
    jobs = [
        ["load", "mnist", args.data_dir],
        ["load", "fashion-mnist", args.fashion_dir],
        ["load", "cifar10", args.data_dir],
        ["load", "femnist", args.data_dir],
        ["clients", "1", args.data_dir, "iid"],
        ["clients", "100", args.data_dir, "iid"],
        ["clients", "100", args.data_dir, "dirichlet"],
    ]
    for job in jobs:
        print(json.dumps(run_isolated(job)), flush=True)


if __name__ == "__main__":
    main()
