"""Check fedprune on an NVIDIA GPU: one step against the CPU, then a simulation on each.

Meant for a machine with CUDA (a GPU server, a Jetson); on one without, it says so
and exits with status 2. It runs, and prints as it goes:

1. one local training step of LeNet-5 under a PruneFL-style mask on CUDA and on the
   CPU from the same state and batch, and the largest difference of the weights
   (tolerance: 1e-4 absolute, float32 kernels differ in summation order; the
   masked positions must be exactly zero on both);
2. a 10-client LeNet-5/MNIST PruneFL simulation for ``--rounds`` rounds with
   ``train.device=cuda`` and ``simulation.client-gpus=--client-gpus`` (0.2: five
   clients share the GPU);
3. the same simulation on the CPU (``train.device=cpu``, no GPUs);

then a table of the measured round wall times (from each run's ``rounds.csv``)
and the speed-up, and one last line ``gpu: ok speedup=X.XX`` (or ``gpu: FAILED
...``). Initial pruning is off in both runs so that only federated rounds are
compared. Needs MNIST under ``--data-dir``/mnist (or ``$FEDPRUNE_DATA_DIR``).

    python -m simulations.check_gpu --data-dir ../shared/data [--rounds 5 --client-gpus 0.2]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

STEP_TOLERANCE = 1e-4


def one_step(device: torch.device) -> np.ndarray:
    """LeNet-5's weights after one masked SGD step on ``device`` from a fixed state and batch."""
    from common.layout import ModelLayout
    from common.models import build_model
    from common.training import SgdSettings, make_loss, train_locally

    model = build_model("lenet5", 10, (1, 28, 28), seed=0).to(device)
    layout = ModelLayout.from_model(model)
    mask = layout.full_mask()
    for t in layout.prunable:
        mask[t.slice][::2] = False  # every other weight pruned
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(32, 1, 28, 28, generator=generator), torch.randint(0, 10, (32,), generator=generator))
    train_locally(model, layout, mask, iter([batch]), 1, SgdSettings(0.05), make_loss("cross-entropy", 10))
    floats, _ = layout.flatten(model.state_dict())
    assert not floats[~mask].any(), f"pruned weights are not zero on {device}"
    return floats


def simulate_on(device: str, client_gpus: float, rounds: int, data_dir: str, output: Path) -> list[float]:
    """Round wall times (s) of a 10-client LeNet-5/MNIST PruneFL run on ``device``."""
    from common.config import load_config
    from server.results import ROUNDS_FILE
    from simulations.runner import simulate

    config = load_config(
        None,
        [
            "data.dataset=mnist",
            "model.name=lenet5",
            f"data.dir={data_dir}",
            "simulation.num-clients=10",
            f"simulation.client-gpus={client_gpus}",
            f"train.device={device}",
            f"federation.rounds={rounds}",
            "pruning.prunefl.initial-pruning=off",
            "output.checkpoint-every=0",
            f"output.dir={output}",
            f"output.name={device}",
        ],
    )
    summary = simulate(config)
    with open(Path(summary.results_dir) / ROUNDS_FILE, newline="") as handle:
        return [float(row["wall_time_s"]) for row in csv.DictReader(handle) if int(row["round"]) >= 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("FEDPRUNE_DATA_DIR", ""))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client-gpus", type=float, default=0.2)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu: no CUDA device visible to torch {torch.__version__}; run this on a machine with one")
        return 2
    if not args.data_dir:
        print("gpu: give --data-dir (the folder holding mnist/) or set FEDPRUNE_DATA_DIR")
        return 2
    name = torch.cuda.get_device_name(0)
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")

    cpu, cuda = one_step(torch.device("cpu")), one_step(torch.device("cuda"))
    difference = float(np.abs(cpu - cuda).max())
    step_ok = difference <= STEP_TOLERANCE
    print(
        f"1. one step, CUDA vs CPU: largest weight difference {difference:.3g} (tolerance {STEP_TOLERANCE:g})"
    )

    with tempfile.TemporaryDirectory(prefix="fedprune-gpu-") as folder:
        timings = {}
        for step, (device, gpus) in enumerate((("cuda", args.client_gpus), ("cpu", 0.0)), start=2):
            started = time.monotonic()
            timings[device] = simulate_on(device, gpus, args.rounds, args.data_dir, Path(folder))
            print(f"{step}. {device}: {args.rounds} rounds in {time.monotonic() - started:.1f} s")

    print("\n| device | client GPUs | rounds | median round (s) | mean round (s) | min | max |")
    print("|---|---|---|---|---|---|---|")
    for device, gpus in (("cuda", args.client_gpus), ("cpu", 0.0)):
        times = timings[device]
        print(
            f"| {device} | {gpus:g} | {len(times)} | {statistics.median(times):.3f} | "
            f"{statistics.fmean(times):.3f} | {min(times):.3f} | {max(times):.3f} |"
        )
    speedup = statistics.fmean(timings["cpu"]) / statistics.fmean(timings["cuda"])
    if not step_ok:
        print(f"gpu: FAILED step difference {difference:.3g} > {STEP_TOLERANCE:g} speedup={speedup:.2f}")
        return 1
    print(f"gpu: ok speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
