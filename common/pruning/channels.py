"""Channel groups of a model: which weights a structured mask must zero together.

Removing output channel c of a convolution also removes its bias and BatchNorm
entries and the input channel c of every layer that reads it (through residual
additions too, where the channels of all addends are tied). Torch-Pruning's
dependency graph (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR
2023; ``torch-pruning`` on PyPI) finds these coupled slices by tracing a forward
pass; this module turns each of its groups into positions of the flat float state:

* ``weights``: the prunable conv/linear weight slices of the group, output rows
  (dim 0) and input columns (dim 1), each index tagged with its root channel;
* ``outputs``: every parameter indexed by the group's output channels (conv and
  linear weights and biases, BatchNorm weight and bias), for gates (TGF).

A *channel mask* of a group zeroes, for every removed root channel, all of its
weight positions. Such a mask makes the masked full model compute exactly what
the physically smaller model computes (:mod:`~common.pruning.shrink`): every
consumer of a removed channel reads it through a zeroed input column.

Groups are left out (never structurally pruned) when they would remove output
channels of the model's output layer, touch a weight that is not prunable (a
model's ``never_pruned`` modules, such as ResNet downsample convolutions), or
contain a grouped convolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..layout import PRUNABLE_MODULES, ModelLayout
from ..models import build_model


@dataclass(frozen=True)
class TensorSlice:
    """Entries ``index`` along ``dim`` of tensor ``name``; ``root[i]`` is the root channel of ``index[i]``."""

    name: str
    dim: int
    index: np.ndarray
    root: np.ndarray


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels, indexed by the output channels of its root layer."""

    root: str  # module name of the root layer
    channels: int
    weights: tuple[TensorSlice, ...]
    outputs: tuple[TensorSlice, ...]
    positions: np.ndarray = field(repr=False)  # flat positions of the group's prunable weight entries
    position_channel: np.ndarray = field(repr=False)  # root channel of each of those positions

    def channel_mask(self, keep: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``mask`` with every weight position of the channels not in ``keep`` zeroed."""
        new = mask.copy()
        new[self.positions[~keep[self.position_channel]]] = False
        return new

    def removed(self, mask: np.ndarray) -> np.ndarray:
        """Bool per channel: True where every weight position of the channel is pruned."""
        kept_any = np.zeros(self.channels, dtype=bool)
        np.logical_or.at(kept_any, self.position_channel, mask[self.positions])
        return ~kept_any


@dataclass(frozen=True)
class LayerChannels:
    """How a prunable weight's output and input dimensions map to channel groups."""

    name: str
    out_size: int
    in_size: int
    outs: tuple[tuple[int, TensorSlice], ...]  # (group index, slice along dim 0)
    ins: tuple[tuple[int, TensorSlice], ...]  # (group index, slice along dim 1)


@dataclass(frozen=True)
class ChannelStructure:
    groups: tuple[ChannelGroup, ...]
    layers: tuple[LayerChannels, ...]  # one per prunable tensor, in layout order
    outputs: frozenset[str] = frozenset()  # weights of the layers that produce the model's output

    def channel_mask(self, keep: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        """``mask`` with the channels not kept (one bool vector per group) zeroed."""
        new = mask
        for group, kept in zip(self.groups, keep, strict=True):
            new = group.channel_mask(kept, new)
        return new

    def removed(self, mask: np.ndarray) -> list[np.ndarray]:
        return [g.removed(mask) for g in self.groups]

    def is_channel_mask(self, mask: np.ndarray, layout: ModelLayout) -> bool:
        """True if ``mask`` prunes exactly whole channels (and prunes something)."""
        removed = self.removed(mask)
        if not any(r.any() for r in removed):
            return False
        kept = [~r for r in removed]
        return bool(np.array_equal(self.channel_mask(kept, layout.full_mask()), mask))


def _positions(spec_offset: int, shape: tuple[int, ...], s: TensorSlice) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) + spec_offset
    taken = np.moveaxis(np.take(grid, s.index, axis=s.dim), s.dim, 0)
    channel = np.broadcast_to(s.root.reshape((-1,) + (1,) * (taken.ndim - 1)), taken.shape)
    return taken.reshape(-1), channel.reshape(-1)


def output_modules(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Modules whose output is (part of) the model's output: their channels must stay."""
    return [m for m, node in graph.module2node.items() if isinstance(m, nn.Module) and not node.outputs]


def trace_channels(model: nn.Module, example_input: torch.Tensor, layout: ModelLayout) -> ChannelStructure:
    """The channel groups of ``model`` (see the module docstring)."""
    was_training = model.training
    model.eval()  # the trace runs one forward pass: leave BatchNorm statistics alone
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    specs = {t.name: t for t in layout.tensors}
    prunable = {t.name for t in layout.prunable}
    params = {name for name, _ in model.named_parameters()}
    groups: list[ChannelGroup] = []
    outputs_of_model = output_modules(graph)
    for group in graph.get_all_groups(ignored_layers=outputs_of_model):
        root_module = group[0].dep.target.module
        weights: list[TensorSlice] = []
        outputs: list[TensorSlice] = []
        usable = True
        for item in group.items:
            module = item.dep.target.module
            if module not in names:
                continue  # torch-pruning's own element-wise, reshape and concat nodes
            name = names[module]
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            index = np.asarray(item.idxs, dtype=np.int64)
            root = np.asarray(item.root_idxs, dtype=np.int64)
            if isinstance(module, PRUNABLE_MODULES):
                weight = f"{name}.weight"
                if weight not in prunable or getattr(module, "groups", 1) != 1:
                    usable = False
                    break
                weights.append(TensorSlice(weight, 0 if is_out else 1, index, root))
                if is_out:
                    outputs += [TensorSlice(f"{name}.{p}", 0, index, root) for p in ("weight", "bias")]
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                outputs += [TensorSlice(f"{name}.{p}", 0, index, root) for p in ("weight", "bias")]
            elif any(True for _ in module.parameters(recurse=False)):
                usable = False  # a parametrised layer this module does not map (LayerNorm, PReLU...)
                break
        if not usable or not weights:
            continue
        positions, channels = [], []
        for s in weights:
            p, c = _positions(specs[s.name].offset, specs[s.name].shape, s)
            positions.append(p)
            channels.append(c)
        groups.append(
            ChannelGroup(
                root=names[root_module],
                channels=int(root_module.weight.shape[0]),
                weights=tuple(weights),
                outputs=tuple(o for o in outputs if o.name in params),
                positions=np.concatenate(positions),
                position_channel=np.concatenate(channels),
            )
        )
    layers = []
    for t in layout.prunable:
        outs = tuple(
            (i, s) for i, g in enumerate(groups) for s in g.weights if s.name == t.name and s.dim == 0
        )
        ins = tuple(
            (i, s) for i, g in enumerate(groups) for s in g.weights if s.name == t.name and s.dim == 1
        )
        layers.append(LayerChannels(t.name, t.shape[0], t.shape[1] if len(t.shape) > 1 else 1, outs, ins))
    output_weights = frozenset(
        f"{names[m]}.weight" for m in outputs_of_model if isinstance(m, PRUNABLE_MODULES)
    )
    return ChannelStructure(tuple(groups), tuple(layers), output_weights)


@lru_cache(maxsize=16)
def structure_for(model_name: str, num_classes: int, input_shape: tuple[int, ...]) -> ChannelStructure:
    """The channel structure of a registered model (traced once per process)."""
    model = build_model(model_name, num_classes, input_shape, seed=0)
    layout = ModelLayout.from_model(model)
    return trace_channels(model, torch.zeros(1, *input_shape), layout)
