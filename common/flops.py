"""Counting the multiply-accumulates (MACs) of a client's training step under a mask.

A counted figure, not a measurement. Only convolutions and linear layers are
counted (they are nearly all of the arithmetic of the models here), with Liu et
al.'s convention for sparse models ("Rethinking the Value of Network Pruning",
ICLR 2019): a weight that is zero costs nothing. For one sample,

    MACs_fwd = sum over conv/linear weights W_l of  nnz(W_l) * P_l

with P_l the number of output positions of layer l (H_out * W_out for a
convolution, 1 for a linear layer on a vector). For a channel mask this equals the
MACs of the physically smaller model, since a removed channel's weights are all
zero. A training step on a batch of B samples costs the forward pass, the gradient
with respect to the inputs and the gradient with respect to the weights, about
3 * MACs_fwd * B, and FLOPs = 2 * MACs (a multiply and an add).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .layout import PRUNABLE_MODULES, ModelLayout
from .models import build_model

TRAINING_STEP_FACTOR = 3  # forward + backward (input and weight gradients)


def output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions per sample of every conv/linear module, by weight name."""
    positions: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES):

            def record(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                channels = output.shape[1] if not isinstance(module, nn.Linear) else output.shape[-1]
                positions[f"{name}.weight" if name else "weight"] = int(output.numel() // channels)

            handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return positions


@lru_cache(maxsize=16)
def positions_for(model_name: str, num_classes: int, input_shape: tuple[int, ...]) -> dict[str, int]:
    return output_positions(build_model(model_name, num_classes, input_shape, seed=0), input_shape)


def forward_macs(layout: ModelLayout, mask: np.ndarray, positions: dict[str, int]) -> int:
    """MACs of one sample's forward pass under ``mask`` (zero weights cost nothing)."""
    total = 0
    for t in layout.tensors:
        if t.name in positions:
            total += int(np.count_nonzero(mask[t.slice])) * positions[t.name]
    return total


def step_flops(forward_macs_per_sample: int, batch_size: int) -> float:
    """FLOPs of one training step: 2 * 3 * MACs_fwd * B."""
    return 2.0 * TRAINING_STEP_FACTOR * forward_macs_per_sample * batch_size


def client_step_flops(
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    layout: ModelLayout,
    mask: np.ndarray,
    batch_size: int,
) -> float:
    """FLOPs of one local step of a client training ``model_name`` under ``mask``."""
    positions = positions_for(model_name, num_classes, tuple(input_shape))
    return step_flops(forward_macs(layout, mask, positions), batch_size)
