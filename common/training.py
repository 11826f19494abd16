"""Local training under a mask, and evaluation, for clients and the server alike.

PruneFL's local step (Jiang et al., TNNLS 2022, Sec. IV): before each of the E SGD
steps and after the last, pruned weights are set to zero. The mask is enforced on
the *weights*, never on the gradients, so the gradient is dense, pruned positions
included, and the importance statistic

    S = n * (sum_{t=1..E} g_t) ** 2            (n: samples processed)

can bring pruned weights back at the next reconfiguration. Initial pruning uses a
masked forward instead (``masked_forward=True``): pruned weights get no gradient,
keep their stale value, and the statistic accumulates ``sum_t g_t ** 2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import DataView
from .layout import ModelLayout
from .wire.sparse import SparsePlan

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("cross-entropy", "bce-one-hot")


def make_loss(name: str, num_classes: int) -> LossFn:
    """Cross-entropy, or PruneFL's BCE-with-logits on one-hot labels (FEMNIST, CIFAR-10)."""
    if name == "cross-entropy":
        return F.cross_entropy
    if name == "bce-one-hot":

        def bce_one_hot(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            target = F.one_hot(labels, num_classes).to(logits.dtype)
            return F.binary_cross_entropy_with_logits(logits, target)

        return bce_one_hot
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")


class GradientStatistic(Enum):
    """Which gradient statistic local training accumulates."""

    NONE = "none"
    SUM = "sum"  # sum_t g_t, for PruneFL's FL-stage importance
    SUM_OF_SQUARES = "sum-of-squares"  # sum_t g_t ** 2, for initial pruning


@dataclass(frozen=True)
class SgdSettings:
    """Plain SGD as PruneFL runs it; momentum and weight decay are optional."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class LocalResult:
    samples: int
    mean_loss: float
    statistic: np.ndarray | None  # flat over the layout's float vector


class NodeStore(Protocol):
    """Arrays a node keeps between rounds for its pruning method (Flower's ``Context.state``)."""

    def load(self, key: str) -> np.ndarray | None:
        """The array saved under ``key``, or None."""

    def save(self, key: str, array: np.ndarray) -> None:
        """Keep ``array`` under ``key`` until it is replaced or deleted."""

    def delete(self, key: str) -> None:
        """Forget ``key`` (nothing happens if it is absent)."""


class TrainingHooks:
    """What a pruning method changes in a client's local training; defaults change nothing.

    The defaults are PruneFL's local step: the received mask is enforced on the
    weights, the forward pass is the model's own, nothing is added to the loss, the
    reply carries the values at the received mask and no extra statistics. A method
    overrides only what it changes:

    * ``enforce_mask = False`` lets weights outside the received mask train
      (Gibbs pruning samples its own masks);
    * :meth:`forward` replaces ``model(inputs)`` (a sampled mask, channel gates);
    * :meth:`penalty` adds a term to the loss (a FLOPs budget);
    * :meth:`extra_parameters` are trained with the model's (gate parameters), on
      the model's device once :meth:`place` has moved them;
    * :meth:`client_mask` is the mask the client reports after training, when it
      chose its own; the reply then carries that mask and its values;
    * :attr:`statistic` is the gradient statistic local training accumulates, and
      :meth:`upload` the vector the reply carries from it (PruneFL's importance),
      with the node's :class:`NodeStore` to keep sums between rounds;
    * :meth:`report` adds per-round statistics to the reply (gate values);
    * :meth:`train` replaces the whole local loop (training a physically smaller
      model and writing it back).
    """

    enforce_mask: bool = True
    statistic: GradientStatistic = GradientStatistic.NONE

    def place(self, device: torch.device) -> None:
        """Move the hooks' own tensors (gates) to the model's device, before training starts."""

    def before_forward(self, model: nn.Module, step: int) -> None:
        """Called after the mask is enforced and before the forward pass."""

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The training forward pass."""
        return model(inputs)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """An extra loss term (for example a FLOPs budget); None for none."""
        return None

    def extra_parameters(self) -> list[torch.Tensor]:
        """Tensors outside the model that the optimiser trains too."""
        return []

    def client_mask(self, model: nn.Module, layout: ModelLayout, mask: np.ndarray) -> np.ndarray | None:
        """The mask this client reports after training, or None to keep the received one.

        A returned mask must be zero-consistent: the caller zeroes the weights
        outside it before anything is sent.
        """
        return None

    def report(self) -> dict[str, float | list[float]]:
        """Extra statistics for the server (sent as ``method.<key>`` metrics)."""
        return {}

    def upload(
        self,
        result: LocalResult,
        layout: ModelLayout,
        mask: np.ndarray,
        mask_version: int,
        store: NodeStore,
    ) -> np.ndarray | None:
        """The statistic vector the reply carries (float32), or None for none.

        Called after training with its :class:`LocalResult` (whose ``statistic`` is
        :attr:`statistic`'s), the mask trained under and its version; ``store``
        keeps arrays on the node between rounds.
        """
        return None

    def upload_plan(self, layout: ModelLayout, mask: np.ndarray) -> SparsePlan | None:
        """Segments to send :meth:`upload`'s vector sparse in (its nonzero entries), or None: whole."""
        return None

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
        """One round of local training; by default :func:`train_locally` with these hooks."""
        return train_locally(model, layout, mask, batches, steps, sgd, loss_fn, statistic, hooks=self)


def _prunable_masks(
    model: nn.Module, layout: ModelLayout, mask: np.ndarray
) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(parameter, float mask) pairs for the prunable tensors that have pruned entries."""
    named = dict(model.named_parameters())
    pairs = []
    for t in layout.prunable:
        part = mask[t.slice]
        if not part.all():
            parameter = named[t.name]
            float_mask = torch.from_numpy(part.reshape(t.shape).astype(np.float32)).to(parameter.device)
            pairs.append((parameter, float_mask))
    return pairs


@torch.no_grad()
def _apply_masks(pairs: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
    for parameter, float_mask in pairs:
        parameter.mul_(float_mask)


def zero_pruned(model: nn.Module, layout: ModelLayout, mask: np.ndarray) -> None:
    """Set the weights ``mask`` prunes to zero, in place."""
    _apply_masks(_prunable_masks(model, layout, mask))


def model_device(model: nn.Module) -> torch.device:
    """The device ``model``'s parameters live on (see :mod:`common.device`)."""
    return next(model.parameters()).device


def on_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` on ``device``; the same tensors when they are there already (a view on the device)."""
    inputs, labels = batch
    if inputs.device != device:
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return inputs, labels


class GradientAccumulator:
    """Running sum of each parameter's gradient, or of its square, kept per tensor.

    Summing in place in torch, tensor by tensor and in float32 (the gradients' own
    precision; a sum over a round's few dozen steps loses nothing that matters to a
    ranking), avoids a flat float64 copy of the whole gradient at every step: for
    Conv-2 that copy cost about as much as the step itself. :meth:`vector` flattens
    once, in layout order, at the end.
    """

    def __init__(self, model: nn.Module, layout: ModelLayout, squares: bool) -> None:
        named = dict(model.named_parameters())
        self.layout = layout
        self.squares = squares
        self.entries: list[tuple[slice, nn.Parameter, torch.Tensor]] = []
        for t in layout.parameters:
            parameter = named[t.name]  # the sum lives where the gradient does (CPU or GPU)
            total = torch.zeros(parameter.shape, dtype=torch.float32, device=parameter.device)
            self.entries.append((t.slice, parameter, total))

    def add(self) -> None:
        """Add the parameters' current ``.grad`` (g_t, or g_t ** 2)."""
        for _, parameter, total in self.entries:
            grad = parameter.grad
            if grad is not None:
                if self.squares:
                    total.addcmul_(grad, grad)
                else:
                    total.add_(grad)

    def vector(self) -> np.ndarray:
        """The sums as one float32 vector over the layout's floats (zero where no parameter)."""
        flat = np.zeros(self.layout.num_floats, dtype=np.float32)
        for where, _, total in self.entries:
            flat[where] = total.reshape(-1).cpu().numpy()
        return flat


def flush_denormals() -> None:
    """Treat subnormal floats as zero in torch's CPU kernels (x86 SSE3, AArch64).

    Masked training produces subnormal activations and gradients: measured on the
    2-core x86 sandbox, a LeNet-5 step slowed from about 10 ms to 24-28 ms once they
    appeared, and ``fedprune profile`` fitted that slowdown as cost. Values below
    about 1.2e-38 change nothing a model learns.
    """
    torch.set_flush_denormal(True)


def train_locally(
    model: nn.Module,
    layout: ModelLayout,
    mask: np.ndarray,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    sgd: SgdSettings,
    loss_fn: LossFn,
    statistic: GradientStatistic = GradientStatistic.NONE,
    masked_forward: bool = False,
    hooks: TrainingHooks | None = None,
) -> LocalResult:
    """Run ``steps`` SGD steps on ``model`` under ``mask`` and return what happened.

    With ``masked_forward=False`` (the FL stage) pruned weights are zeroed before
    each step and after the last. With ``masked_forward=True`` (initial pruning)
    pruned weights are zero during each step, receive no gradient, and get their
    previous value back afterwards, as a masked forward pass would leave them.
    """
    hooks = hooks or TrainingHooks()
    flush_denormals()
    device = model_device(model)
    hooks.place(device)
    model.train()
    pairs = _prunable_masks(model, layout, mask) if hooks.enforce_mask or masked_forward else []
    optimizer = torch.optim.SGD(
        [*model.parameters(), *hooks.extra_parameters()],
        lr=sgd.lr,
        momentum=sgd.momentum,
        weight_decay=sgd.weight_decay,
    )
    accumulated = (
        None
        if statistic is GradientStatistic.NONE
        else GradientAccumulator(model, layout, squares=statistic is GradientStatistic.SUM_OF_SQUARES)
    )
    samples, loss_sum = 0, 0.0
    for step in range(steps):
        stale = [p.detach().clone() for p, _ in pairs] if masked_forward else []
        _apply_masks(pairs)
        hooks.before_forward(model, step)
        inputs, labels = on_device(next(batches), device)
        optimizer.zero_grad(set_to_none=False)
        loss = loss_fn(hooks.forward(model, inputs), labels)
        penalty = hooks.penalty(model)
        (loss if penalty is None else loss + penalty).backward()
        if masked_forward:
            for p, m in pairs:
                p.grad.mul_(m)
        if accumulated is not None:
            accumulated.add()
        optimizer.step()
        if masked_forward:
            with torch.no_grad():
                for (p, m), old in zip(pairs, stale, strict=True):
                    p.copy_(torch.where(m.bool(), p, old))
        samples += len(labels)
        loss_sum += float(loss.detach()) * len(labels)
    if not masked_forward:
        # zero_pruned, with the float masks of the steps where they were built
        _apply_masks(pairs if hooks.enforce_mask else _prunable_masks(model, layout, mask))
    result_statistic = None if accumulated is None else accumulated.vector()
    return LocalResult(samples=samples, mean_loss=loss_sum / max(samples, 1), statistic=result_statistic)


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    samples: int


@torch.no_grad()
def evaluate(model: nn.Module, view: DataView, loss_fn: LossFn, batch_size: int = 512) -> Evaluation:
    """Mean loss and accuracy of ``model`` on ``view`` (zeros for an empty view)."""
    flush_denormals()
    model.eval()
    device = model_device(model)
    loss_sum, correct = 0.0, 0
    for batch in view.in_order(batch_size):
        inputs, labels = on_device(batch, device)
        logits = model(inputs)
        loss_sum += float(loss_fn(logits, labels)) * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
    n = len(view)
    return Evaluation(loss=loss_sum / n if n else 0.0, accuracy=correct / n if n else 0.0, samples=n)


@torch.no_grad()
def masked_accuracy(
    model: nn.Module,
    layout: ModelLayout,
    mask: np.ndarray,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> float:
    """Accuracy on ``batches`` with pruned weights zeroed; the weights are left as found."""
    pairs = _prunable_masks(model, layout, mask)
    stale = [p.detach().clone() for p, _ in pairs]
    for p, m in pairs:
        p.mul_(m)
    model.eval()
    device = model_device(model)
    correct = 0
    for batch in batches:
        x, y = on_device(batch, device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    total = sum(len(y) for _, y in batches)
    for (p, _), old in zip(pairs, stale, strict=True):
        p.copy_(old)
    model.train()
    return correct / max(total, 1)


def load_flat(model: nn.Module, layout: ModelLayout, floats: np.ndarray, ints: np.ndarray) -> None:
    """Copy flat vectors into ``model``'s state."""
    model.load_state_dict(layout.unflatten(floats, ints))
