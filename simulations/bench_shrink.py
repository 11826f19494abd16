"""Benchmark: what physically removing channels saves a client, measured on this CPU.

    python -m simulations.bench_shrink --model digits-cnn --dataset digits --keep 0.5

Builds the model, prunes ``--keep`` of the channels of every channel group by the
L1 norm of their filters (Li et al., ICLR 2017), removes them with Torch-Pruning
(:mod:`common.pruning.shrink`) and prints, before and after:

* parameters (counted from the modules) and MACs per sample, both our count
  (:mod:`common.flops`: conv/linear only) and Torch-Pruning's own
  ``count_ops_and_params`` (all layers) as a cross-check;
* the measured wall time of one forward-backward step on a batch (median of
  ``--repeats`` after ``--warmup``), for the full model, the full model under the
  channel mask (zeros still multiplied: what a client without shrinking computes)
  and the smaller model, and their ratio.

Times are measured, on whatever else this machine runs at the time: repeat and
report the machine's load with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from common.data import DATASETS
from common.flops import forward_macs, output_positions
from common.layout import ModelLayout
from common.models import MODELS, build_model
from common.pruning.channels import trace_channels
from common.pruning.l1filter import channel_scores, keep_channels
from common.pruning.shrink import count_parameters, removable_channels, shrink_model
from common.training import load_flat


def step_seconds(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, repeats: int, warmup: int
) -> float:
    """Median wall time of forward + backward + SGD update on one batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model.train()
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits-cnn", choices=sorted(MODELS))
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    parser.add_argument("--keep", type=float, default=0.5, help="kept share of each group's channels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a client's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = DATASETS[args.dataset]
    shape = source.input_shape
    model = build_model(args.model, source.num_classes, shape, seed=0)
    layout = ModelLayout.from_model(model)
    structure = trace_channels(model, torch.zeros(1, *shape), layout)
    floats, ints = layout.flatten(model.state_dict())
    alive = [np.ones(g.channels, dtype=bool) for g in structure.groups]
    keep = keep_channels(channel_scores(floats, layout, structure), alive, args.keep)
    mask = structure.channel_mask(keep, layout.full_mask())
    masked_floats = np.where(mask, floats, np.float32(0))
    example = torch.zeros(1, *shape)
    small = shrink_model(model, layout, masked_floats, ints, removable_channels(structure, mask), example)
    masked = build_model(args.model, source.num_classes, shape, seed=0)
    load_flat(masked, layout, masked_floats, ints)

    positions = output_positions(model, shape)
    small_positions = output_positions(small.model, shape)
    macs_full = forward_macs(layout, layout.full_mask(), positions)
    macs_small = forward_macs(small.layout, small.layout.full_mask(), small_positions)
    tp_full = tp.utils.count_ops_and_params(model, example_inputs=example)
    tp_small = tp.utils.count_ops_and_params(small.model, example_inputs=example)

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch_size, *shape, generator=generator)
    labels = torch.randint(0, source.num_classes, (args.batch_size,), generator=generator)
    t_full = step_seconds(model, inputs, labels, args.repeats, args.warmup)
    t_masked = step_seconds(masked, inputs, labels, args.repeats, args.warmup)
    t_small = step_seconds(small.model, inputs, labels, args.repeats, args.warmup)

    kept = [int(k.sum()) for k in keep]
    print(f"model {args.model} on {args.dataset} {shape}, batch {args.batch_size}, threads {args.threads}")
    print(f"channel groups kept: {dict(zip([g.root for g in structure.groups], kept, strict=True))}")
    print(f"weight density of the channel mask: {layout.density(mask):.4f}")
    print(f"{'':34}{'full':>14}{'smaller':>14}{'ratio':>9}")
    rows = [
        ("parameters", count_parameters(model), count_parameters(small.model)),
        ("MACs/sample, conv+linear (ours)", macs_full, macs_small),
        ("MACs/sample, all (torch-pruning)", tp_full[0], tp_small[0]),
    ]
    for label, full, after in rows:
        print(f"{label:34}{full:>14,.0f}{after:>14,.0f}{after / full:>9.3f}")
    step = "fwd+bwd step, measured (ms)"
    print(f"{step:34}{t_full * 1e3:>14.3f}{t_small * 1e3:>14.3f}{t_small / t_full:>9.3f}")
    print(f"{'  full model under the mask (ms)':34}{t_masked * 1e3:>14.3f}{'':>14}{t_masked / t_full:>9.3f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"median of {args.repeats} steps after {args.warmup} warm-up; 1-minute load average {load:.2f}")


if __name__ == "__main__":
    main()
