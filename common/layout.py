"""The flat layout of a model's state, shared by the server and the clients.

Both sides build the same architecture, so the order, shapes and dtypes of the
``state_dict`` tensors are known on both ends and never travel. A model state is
handled as two flat vectors:

* ``floats``: every floating-point tensor (parameters and buffers such as
  BatchNorm statistics) concatenated in ``state_dict`` order, as float32;
* ``ints``: the integer buffers (BatchNorm's ``num_batches_tracked``), as int64.

A *mask* is a bool vector over ``floats``; it is True at every non-prunable
position, so ``floats[mask]`` is exactly what a client must receive. The prunable
tensors are the ``weight`` of every ``nn.Conv*`` and ``nn.Linear`` module except
those a model lists in ``never_pruned`` (PruneFL prunes no bias, no BatchNorm and
no ResNet downsample convolution).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

PRUNABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the state: where it lives in the flat vector it belongs to."""

    name: str
    shape: tuple[int, ...]
    offset: int
    is_float: bool
    is_parameter: bool
    prunable: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


def prunable_names(model: nn.Module) -> set[str]:
    """Names of the ``weight`` tensors that pruning may touch."""
    excluded = set(getattr(model, "never_pruned", ()))
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES) and module_name not in excluded:
            names.add(f"{module_name}.weight" if module_name else "weight")
    return names


@dataclass(frozen=True)
class ModelLayout:
    """Ordered tensor specs of a model and the sizes of its two flat vectors."""

    tensors: tuple[TensorSpec, ...]
    num_floats: int
    num_ints: int

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelLayout:
        prunable = prunable_names(model)
        parameters = {name for name, _ in model.named_parameters()}
        specs: list[TensorSpec] = []
        float_offset = int_offset = 0
        for name, tensor in model.state_dict().items():
            is_float = tensor.is_floating_point()
            offset = float_offset if is_float else int_offset
            spec = TensorSpec(
                name=name,
                shape=tuple(tensor.shape),
                offset=offset,
                is_float=is_float,
                is_parameter=name in parameters,
                prunable=name in prunable,
            )
            specs.append(spec)
            if is_float:
                float_offset += spec.size
            else:
                int_offset += spec.size
        return cls(tuple(specs), float_offset, int_offset)

    # -- views ----------------------------------------------------------------
    @cached_property
    def prunable(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.prunable)

    @cached_property
    def parameters(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.is_parameter)

    @cached_property
    def num_prunable(self) -> int:
        return sum(t.size for t in self.prunable)

    @cached_property
    def num_parameters(self) -> int:
        return sum(t.size for t in self.parameters)

    @cached_property
    def prunable_positions(self) -> np.ndarray:
        """Indices into ``floats`` of the prunable entries, in layout order."""
        if not self.prunable:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(t.offset, t.offset + t.size) for t in self.prunable])

    @cached_property
    def parameter_positions(self) -> np.ndarray:
        """Indices into ``floats`` of every parameter (buffers excluded)."""
        if not self.parameters:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(t.offset, t.offset + t.size) for t in self.parameters])

    def pruned_positions(self, mask: np.ndarray) -> np.ndarray:
        """Indices into ``floats`` of the pruned weights, in layout order."""
        if not self.prunable:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.flatnonzero(~mask[t.slice]) + t.offset for t in self.prunable])

    def pruned_values(self, vector: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``vector[self.pruned_positions(mask)]``, tensor by tensor, without the positions.

        For Conv-2 at density 0.016 (6.5M pruned weights): 23 ms against 108 ms for
        building the int64 positions and gathering by them.
        """
        if not self.prunable:
            return np.zeros(0, dtype=vector.dtype)
        return np.concatenate([vector[t.slice][~mask[t.slice]] for t in self.prunable])

    def parameter_values(self, vector: np.ndarray) -> np.ndarray:
        """``vector[self.parameter_positions]``, tensor by tensor (contiguous slices)."""
        if not self.parameters:
            return np.zeros(0, dtype=vector.dtype)
        return np.concatenate([vector[t.slice] for t in self.parameters])

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of names, shapes and dtypes; both ends must agree on it."""
        text = ";".join(
            f"{t.name}:{'x'.join(map(str, t.shape))}:{'f' if t.is_float else 'i'}:{int(t.prunable)}"
            for t in self.tensors
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- masks ------------------------------------------------------------------
    def full_mask(self) -> np.ndarray:
        """The mask of the dense model: True everywhere."""
        return np.ones(self.num_floats, dtype=bool)

    def prunable_part(self, mask: np.ndarray) -> np.ndarray:
        """The entries of a full mask at prunable positions (what travels)."""
        if not self.prunable:
            return np.zeros(0, dtype=mask.dtype)
        return np.concatenate([mask[t.slice] for t in self.prunable])

    def mask_from_prunable(self, prunable_mask: np.ndarray) -> np.ndarray:
        """Expand a mask over prunable positions into a full mask."""
        if len(prunable_mask) != self.num_prunable:
            raise ValueError(f"{len(prunable_mask)} mask entries for {self.num_prunable} prunable weights")
        mask = self.full_mask()
        start = 0
        for t in self.prunable:
            mask[t.slice] = prunable_mask[start : start + t.size]
            start += t.size
        return mask

    def num_kept(self, mask: np.ndarray) -> int:
        """How many prunable weights ``mask`` keeps (counted slice by slice)."""
        return int(sum(np.count_nonzero(mask[t.slice]) for t in self.prunable))

    def density(self, mask: np.ndarray) -> float:
        """Kept fraction of the prunable weights (1.0 for a model with none)."""
        if self.num_prunable == 0:
            return 1.0
        return self.num_kept(mask) / self.num_prunable

    def kept_per_layer(self, mask: np.ndarray) -> np.ndarray:
        """|M_l| for every prunable tensor, in layout order."""
        return np.array([np.count_nonzero(mask[t.slice]) for t in self.prunable], dtype=np.int64)

    # -- state <-> flat -----------------------------------------------------------
    def flatten(self, state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(floats, ints)`` of a ``state_dict``."""
        floats = np.empty(self.num_floats, dtype=np.float32)
        ints = np.empty(self.num_ints, dtype=np.int64)
        for t in self.tensors:
            target = floats if t.is_float else ints
            target[t.slice] = state[t.name].detach().reshape(-1).cpu().numpy()
        return floats, ints

    def unflatten(self, floats: np.ndarray, ints: np.ndarray) -> dict[str, torch.Tensor]:
        """Return a ``state_dict`` whose tensors are views of the flat vectors.

        Views of read-only vectors (a client's received model, see
        ``client.app._thread_received``) are for reading, as ``load_state_dict`` does:
        torch has no read-only tensors, and its warning that it has none is not shown.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            source_floats = torch.from_numpy(np.ascontiguousarray(floats, dtype=np.float32))
            source_ints = torch.from_numpy(np.ascontiguousarray(ints, dtype=np.int64))
        state = {}
        for t in self.tensors:
            source = source_floats if t.is_float else source_ints
            state[t.name] = source[t.slice].view(t.shape)
        return state

    def gradient_vector(self, model: nn.Module) -> np.ndarray:
        """Flat float vector of the parameters' ``.grad`` (zero where none)."""
        grads = np.zeros(self.num_floats, dtype=np.float32)
        named = dict(model.named_parameters())
        for t in self.parameters:
            grad = named[t.name].grad
            if grad is not None:
                grads[t.slice] = grad.detach().reshape(-1).cpu().numpy()
        return grads
