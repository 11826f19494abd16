"""Derive a model's timings on a device from the device's fit of another model.

PruneFL's authors fitted their Raspberry Pi 4 only for Conv-2 (FEMNIST) and
VGG-11 (CIFAR-10). For a model they did not fit (LeNet-5, the digits CNN) the
closest honest figure keeps the device's fitted *seconds per FLOP* of each kind of
layer and applies it to the new model's FLOPs per kept weight (counted as in
:mod:`common.flops`: a training step costs 2 * 3 * P_l * B FLOPs per kept weight of
layer l, P_l its output positions per sample, B the batch):

    s_k      = comp_{src,k} / (6 P_{src,k} B_src)            seconds per FLOP of source layer k
    comp_l   = s_{k(l)} * 6 P_l B                            k(l): Conv-2's conv2 for a convolution,
                                                             fc1 for a hidden linear layer, fc2 for the output
    t0       = t0_src * (A * B) / (A_src * B_src)            A: activation elements per sample

The mask-independent t0 (activations, pooling, the first layer, framework
overhead) is scaled by the activations a step moves. The result is *derived*, not
measured: a sparse kernel's speed depends on the layer's shape as well as its
FLOPs, which this ignores. Run ``python -m simulations.derive_profile lenet5``
to print the TOML table (with ``--ratio r`` every time divided by a throughput
ratio r, as for the Jetson-class profile).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from common.cost_model import ModelTiming, load_profile
from common.data import DATASETS
from common.flops import TRAINING_STEP_FACTOR
from common.layout import PRUNABLE_MODULES
from common.models import build_model

SOURCE_PROFILE = "raspberry-pi-4-class"
SOURCE_MODEL, SOURCE_DATASET, SOURCE_BATCH = "conv2", "femnist", 20  # PruneFL's FEMNIST fit
CONV_SOURCE, HIDDEN_SOURCE, OUTPUT_SOURCE = "conv2.weight", "fc1.weight", "fc2.weight"
TARGETS = {"lenet5": ("mnist", 32), "digits-cnn": ("digits", 32)}  # model -> data set, fedprune's batch


@dataclass(frozen=True)
class LayerShape:
    """A prunable layer's output positions and activation elements per sample, and its kind."""

    positions: int
    activations: int
    kind: str  # "conv", "hidden" or "output"


def layer_shapes(model_name: str, dataset: str) -> dict[str, LayerShape]:
    """Every conv/linear weight of the model on the data set's input shape, in forward order."""
    source = DATASETS[dataset]
    model = build_model(model_name, source.num_classes, source.input_shape, seed=0)
    found: list[tuple[str, nn.Module, torch.Size]] = []
    handles = [
        module.register_forward_hook(lambda m, i, out, name=name: found.append((name, m, out.shape)))
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_MODULES)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *source.input_shape))
    for handle in handles:
        handle.remove()
    shapes = {}
    for index, (name, module, shape) in enumerate(found):
        activations = int(torch.Size(shape).numel())
        channels = shape[-1] if isinstance(module, nn.Linear) else shape[1]
        last = index == len(found) - 1
        kind = "output" if last and isinstance(module, nn.Linear) else "hidden"
        kind = kind if isinstance(module, nn.Linear) else "conv"
        shapes[f"{name}.weight"] = LayerShape(activations // channels, activations, kind)
    return shapes


def flops_per_weight(shape: LayerShape, batch: int) -> float:
    return 2.0 * TRAINING_STEP_FACTOR * shape.positions * batch


def derive(model_name: str, ratio: float = 1.0) -> ModelTiming:
    """The target model's timing from the source profile's Conv-2 fit, divided by ``ratio``."""
    fit = load_profile(SOURCE_PROFILE).models[SOURCE_MODEL]
    source = layer_shapes(SOURCE_MODEL, SOURCE_DATASET)
    per_flop = {
        kind: fit.per_weight[name] / flops_per_weight(source[name], SOURCE_BATCH)
        for kind, name in (("conv", CONV_SOURCE), ("hidden", HIDDEN_SOURCE), ("output", OUTPUT_SOURCE))
    }
    dataset, batch = TARGETS[model_name]
    target = layer_shapes(model_name, dataset)
    activation_ratio = (sum(s.activations for s in target.values()) * batch) / (
        sum(s.activations for s in source.values()) * SOURCE_BATCH
    )
    per_weight = {name: per_flop[s.kind] * flops_per_weight(s, batch) / ratio for name, s in target.items()}
    return ModelTiming(fit.t0 * activation_ratio / ratio, per_weight, "derived")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(TARGETS))
    parser.add_argument("--ratio", type=float, default=1.0, help="throughput ratio the times are divided by")
    args = parser.parse_args()
    timing = derive(args.model, args.ratio)
    print(f"[models.{args.model}]\nt0 = {timing.t0:.6e}\nbatch-size = {TARGETS[args.model][1]}\n")
    print(f"[models.{args.model}.layers]")
    for name, value in timing.per_weight.items():
        print(f'"{name}" = {value:.6e}')


if __name__ == "__main__":
    main()
