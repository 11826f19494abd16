"""Benchmark: a model trained centrally (no federation), to check a data set and model before FL.

Plain SGD on the whole training set (every writer of FEMNIST, say), then the test
accuracy on the server's test set, as a new user would first try a setting::

    python simulations/bench_central.py --data-dir ../shared/data            # PruneFL's FEMNIST setting
    python simulations/bench_central.py --dataset femnist --steps 500 --batch-size 20 --lr 0.25 \
        --loss bce-one-hot --model conv2

The defaults are PruneFL's FEMNIST setting (Jiang et al., TNNLS 2022): Conv-2, batch
20, lr 0.25, BCE-with-logits on one-hot labels; 500 steps. ``--torch-default-init``
re-initialises the linear layers with torch's defaults (what fedprune's Conv-2 had
before it followed the authors' code) and ``--raw-pixels`` feeds LEAF's pixels as
stored (1 = background) instead of inverted, to measure either choice. It prints the
settings, the measured test accuracy and loss, and the wall time; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from common.data import load_dataset
from common.data.dataset import DataView, scale_255
from common.models import build_model
from common.training import evaluate, make_loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--dataset", default="femnist")
    parser.add_argument("--model", default="conv2")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.25)
    parser.add_argument("--loss", default="bce-one-hot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch-default-init", action="store_true", help="linear layers at torch's default")
    parser.add_argument("--raw-pixels", action="store_true", help="FEMNIST as stored (1 = background)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset, args.data_dir.resolve())
    to_inputs = scale_255 if args.raw_pixels else data.to_inputs
    train = DataView(data.x_train, data.y_train, torch.arange(len(data.y_train)), to_inputs)
    test = DataView(data.x_test, data.y_test, torch.arange(len(data.y_test)), to_inputs)
    model = build_model(args.model, data.num_classes, data.input_shape, seed=args.seed)
    if args.torch_default_init:
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
    loss_fn = make_loss(args.loss, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    model.train()
    for step, (inputs, labels) in enumerate(train.batches(args.batch_size, args.seed)):
        if step == args.steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(inputs), labels).backward()
        optimizer.step()
    trained = time.perf_counter() - start
    result = evaluate(model, test, loss_fn)
    init = "torch default (linear layers)" if args.torch_default_init else "the model's own"
    pixels = "as stored" if args.raw_pixels else "the loader's model inputs"
    print(
        f"{args.dataset} / {args.model}: {args.steps} SGD steps of {args.batch_size} at lr {args.lr}, "
        f"{args.loss}, {len(train)} training samples, init: {init}, pixels: {pixels}"
    )
    print(
        f"test accuracy {result.accuracy:.4f} (measured, {result.samples} samples), test loss "
        f"{result.loss:.4f}; training wall time {trained:.1f} s ({args.threads} thread(s))"
    )


if __name__ == "__main__":
    main()
