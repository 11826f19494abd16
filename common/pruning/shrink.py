"""Training a physically smaller model for a channel mask, and writing it back.

For a mask that removes whole channels (:mod:`~common.pruning.channels`), a client
need not compute with zeros: Torch-Pruning removes the channels from a copy of the
model, the client trains that smaller dense model, and the trained values go back
into the full layout, so the server sees the same kept-values payload as for any
mask. Which entry of the small model is which entry of the full one is found by
*tagging*: a float64 copy of the model holds, in every float tensor, each entry's
own position in the flat state; after pruning, the surviving tags are the map.

Biases and BatchNorm entries of removed channels are not in the small model and
stay as received. The masked full model and the small model compute the same
function (every reader of a removed channel reads it through a zeroed column), so
training either is the same optimisation, on fewer multiply-accumulates.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..layout import ModelLayout
from ..training import (
    GradientStatistic,
    LocalResult,
    LossFn,
    SgdSettings,
    TrainingHooks,
    load_flat,
    train_locally,
)
from .channels import ChannelStructure


@dataclass
class ShrunkModel:
    """A physically smaller copy of a model and where its entries live in the full state."""

    model: nn.Module
    layout: ModelLayout
    positions: np.ndarray  # position in the full float vector of each small float


def removable_channels(structure: ChannelStructure, mask: np.ndarray) -> list[tuple[str, list[int]]]:
    """(root module, channels) to remove: whole channels of ``mask``, one channel always kept."""
    removal = []
    for group, removed in zip(structure.groups, structure.removed(mask), strict=True):
        channels = np.flatnonzero(removed)
        if len(channels) == group.channels:
            channels = channels[1:]  # a layer keeps one (all-zero) channel: its shape stays valid
        if len(channels):
            removal.append((group.root, channels.tolist()))
    return removal


def _tagged_copy(model: nn.Module, layout: ModelLayout) -> nn.Module:
    tagged = copy.deepcopy(model).to(torch.float64)
    state = tagged.state_dict()
    with torch.no_grad():
        for t in layout.tensors:
            if t.is_float:
                tag = torch.arange(t.offset, t.offset + t.size, dtype=torch.float64).view(t.shape)
                state[t.name].copy_(tag)
    return tagged


def shrink_model(
    model: nn.Module,
    layout: ModelLayout,
    floats: np.ndarray,
    ints: np.ndarray,
    removal: list[tuple[str, list[int]]],
    example_input: torch.Tensor,
) -> ShrunkModel:
    """A copy of ``model`` without the channels of ``removal``, holding ``floats`` and ``ints``."""
    tagged = _tagged_copy(model, layout)
    tagged.eval()  # tracing runs a forward pass; BatchNorm must not update its (tag) statistics
    graph = tp.DependencyGraph().build_dependency(tagged, example_inputs=example_input.to(torch.float64))
    modules = dict(tagged.named_modules())
    for root, channels in removal:
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        graph.get_pruning_group(module, pruner.prune_out_channels, channels).prune()
    small_layout = ModelLayout.from_model(tagged)
    if small_layout.num_ints != layout.num_ints:
        raise RuntimeError("pruning channels changed the integer buffers; this model cannot be shrunk")
    state = tagged.state_dict()
    positions = np.concatenate(
        [
            state[t.name].detach().reshape(-1).cpu().numpy().astype(np.int64)
            for t in small_layout.tensors
            if t.is_float
        ]
    )
    small = tagged.to(torch.float32)
    small.train(model.training)
    load_flat(small, small_layout, floats[positions], ints)
    return ShrunkModel(small, small_layout, positions)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ShrinkingHooks(TrainingHooks):
    """Local training of the physically smaller model for a channel mask.

    Wraps another method's hooks (``inner``), which then act on the small model.
    Positions the mask prunes inside kept channels stay zero: the small model is
    trained under the restriction of the mask to it. ``last`` records the
    parameter counts of the latest round.
    """

    def __init__(self, structure: ChannelStructure, inner: TrainingHooks | None = None) -> None:
        self.structure = structure
        self.inner = inner or TrainingHooks()
        self.last: dict[str, float] = {}

    def train(
        self,
        model: nn.Module,
        layout: ModelLayout,
        mask: np.ndarray,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        steps: int,
        sgd: SgdSettings,
        loss_fn: LossFn,
        statistic: GradientStatistic = GradientStatistic.NONE,
    ) -> LocalResult:
        removal = removable_channels(self.structure, mask)
        if not removal:
            return train_locally(
                model, layout, mask, batches, steps, sgd, loss_fn, statistic, hooks=self.inner
            )
        first = next(batches)
        floats, ints = layout.flatten(model.state_dict())
        floats = np.where(mask, floats, np.float32(0))
        shrunk = shrink_model(model, layout, floats, ints, removal, first[0][:1])
        result = train_locally(
            shrunk.model,
            shrunk.layout,
            mask[shrunk.positions],
            itertools.chain([first], batches),
            steps,
            sgd,
            loss_fn,
            statistic,
            hooks=self.inner,
        )
        small_floats, small_ints = shrunk.layout.flatten(shrunk.model.state_dict())
        floats[shrunk.positions] = small_floats
        load_flat(model, layout, floats, small_ints)
        self.last = {
            "parameters-full": count_parameters(model),
            "parameters-trained": count_parameters(shrunk.model),
        }
        if result.statistic is not None:
            full = np.zeros(layout.num_floats, dtype=np.float32)
            full[shrunk.positions] = result.statistic
            result.statistic = full
        return result

    def report(self) -> dict[str, float | list[float]]:
        return self.inner.report()
