"""PruneFL's importance statistic, on both sides: what clients compute and upload,
what the server merges.

Jiang et al., "Model Pruning Enables Efficient Federated Learning on Edge
Devices", IEEE TNNLS 2022, Sec. IV-B. The statistic is

    S_j = sum over clients c and rounds t of n_c * G_{c,j} ** 2

with G_c the sum of client c's local gradients in a round and n_c the samples it
processed. With plain SGD a kept weight moves by exactly -lr * G_c during local
training, so the server rebuilds S at kept positions from each reply,

    S_j += n_c * ((w_{c,j} - w_j) / lr) ** 2                   (kept j)

as the authors' device prototype does; clients therefore upload S only at pruned
positions (everywhere when momentum or weight decay break the identity), and the
server keeps one accumulator for all clients instead of one per client.

Under full participation a client adds its S_c to a sum on the node and uploads
it only in reconfiguration rounds; under client sampling each participant uploads
in the round it trains, so no per-client sum of model size outlives a round. What
a client does in a round travels as the task entries ``importance`` (``off`` |
``accumulate`` | ``upload``) and ``importance-scope`` (``pruned`` | ``all``); with
``pruning.prunefl.importance-upload = "top"`` an upload round adds the entries
``importance-top.*`` (:class:`~common.pruning.prunefl_top.TopRule`) and the client
sends only the top of each layer's pruned-position importance
(:mod:`common.pruning.prunefl_top`), which the server decodes with the rest zero.

Each client's influence is bounded (:mod:`common.bounds`): its uploaded mass
sum_j S_{c,j} is scaled down to at most ``federation.statistic-factor`` times the
round's median, so one client weighs at most as that many honest ones. The part
rebuilt from an update follows the aggregation rule: under ``mean`` the update is
used whole and so is the importance it implies; under the robust rules it is
bounded the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Any, Literal

import numpy as np
from flwr.supercore import log

from ..bounds import median_clip_scales
from ..layout import ModelLayout
from ..settings import Section
from ..training import GradientStatistic, LocalResult, NodeStore, TrainingHooks
from ..wire.sparse import SparsePlan
from .base import ClientReport, ConfigValue, RoundUpdate
from .prunefl_top import TopRule, keep_top, segment_plan

Request = Literal["off", "accumulate", "upload"]
SUM_KEY = "prunefl.importance"  # the node's sum, in its NodeStore
VERSION_KEY = "prunefl.importance-version"  # the mask version the sum belongs to


@dataclass(frozen=True)
class ImportanceTask(Section):
    """What a client does with the statistic in one round (task entries of every message)."""

    PREFIX = ""

    importance: Request = "off"
    importance_scope: Literal["pruned", "all"] = "pruned"


def task_entries(request: Request, plain_sgd: bool, top: TopRule | None = None) -> dict[str, ConfigValue]:
    """The round's task entries for ``request``; the scope follows from the optimiser.

    ``top`` (upload rounds of the ``top`` upload only) adds the bound's inputs; the
    exact upload's entries are unchanged.
    """
    scope = "pruned" if plain_sgd else "all"
    entries: dict[str, ConfigValue] = dict(ImportanceTask(request, scope).to_flat())
    if top is not None:
        entries.update(top.to_flat())
    return entries


def top_rule(client_config: Mapping[str, ConfigValue]) -> TopRule | None:
    """The ``top`` upload's rule when the task carries one, else None (the exact upload)."""
    if not any(key.startswith(TopRule.PREFIX + ".") for key in client_config):
        return None
    return TopRule.from_flat(client_config)


def statistic_positions(layout: ModelLayout, mask: np.ndarray, plain_sgd: bool) -> np.ndarray:
    """Where clients upload S: pruned positions with plain SGD, every parameter otherwise."""
    return layout.pruned_positions(mask) if plain_sgd else layout.parameter_positions


def statistic_values(
    layout: ModelLayout, vector: np.ndarray, mask: np.ndarray, plain_sgd: bool
) -> np.ndarray:
    """``vector[statistic_positions(layout, mask, plain_sgd)]``, gathered slice by slice."""
    return layout.pruned_values(vector, mask) if plain_sgd else layout.parameter_values(vector)


# -- client side ----------------------------------------------------------------------------
class ImportanceHooks(TrainingHooks):
    """Local training that sums the gradients and uploads n * (sum of gradients) ** 2."""

    statistic = GradientStatistic.SUM

    def __init__(self, task: ImportanceTask, top: TopRule | None = None) -> None:
        self.task = task
        self.top = top
        if top is not None and task.importance_scope != "pruned":
            raise ValueError("the 'top' importance upload covers pruned positions only (plain SGD)")

    def upload_plan(self, layout: ModelLayout, mask: np.ndarray) -> SparsePlan | None:
        """The segments of the ``top`` upload (None: the exact upload)."""
        return None if self.top is None else segment_plan(layout, mask, self.top)

    def upload(
        self,
        result: LocalResult,
        layout: ModelLayout,
        mask: np.ndarray,
        mask_version: int,
        store: NodeStore,
    ) -> np.ndarray | None:
        assert result.statistic is not None
        plain_sgd = self.task.importance_scope == "pruned"
        gradient_sum = statistic_values(layout, result.statistic, mask, plain_sgd)
        importance = client_importance(gradient_sum, result.samples)
        total = _add_to_node_sum(store, importance, mask_version)
        if self.task.importance == "accumulate":
            return None
        store.delete(SUM_KEY)
        store.delete(VERSION_KEY)
        plan = self.upload_plan(layout, mask)
        return total if plan is None else keep_top(total, plan)


BLOCK = 1 << 16  # elements per block of :func:`client_importance`'s float64 arithmetic


def client_importance(gradient_sum: np.ndarray, samples: int) -> np.ndarray:
    """S_c = n_c * G_c ** 2 (float64 arithmetic, rounded to float32), block by block.

    Jiang et al., TNNLS 2022, Sec. IV-B. Each block of ``gradient_sum`` (float32) is
    widened to float64 on its own, so no float64 copy of the whole vector is made
    (Conv-2: 6.5M pruned positions, 52 MB a copy); the result is bit for bit
    ``(n * G.astype(float64) * G.astype(float64)).astype(float32)``.
    """
    out = np.empty(len(gradient_sum), dtype=np.float32)
    for start in range(0, len(gradient_sum), BLOCK):
        block = gradient_sum[start : start + BLOCK].astype(np.float64)
        out[start : start + BLOCK] = samples * block * block
    return out


def _add_to_node_sum(store: NodeStore, values: np.ndarray, mask_version: int) -> np.ndarray:
    """Add ``values`` to the node's sum (in place) and return it; a sum kept under another mask is dropped."""
    total = values
    previous, version = store.load(SUM_KEY), store.load(VERSION_KEY)
    if previous is not None and version is not None and int(version[0]) == mask_version:
        if previous.shape == total.shape:
            total += previous
    store.save(SUM_KEY, total)
    store.save(VERSION_KEY, np.array([mask_version], dtype=np.int64))
    return total


def client_hooks(client_config: Mapping[str, ConfigValue]) -> TrainingHooks:
    """The round's hooks: plain training when the task asks for no statistic."""
    task = ImportanceTask.from_flat(client_config)
    return TrainingHooks() if task.importance == "off" else ImportanceHooks(task, top_rule(client_config))


# -- server side ----------------------------------------------------------------------------
class ImportanceAccumulator:
    """S over the whole float state, float64; rebuilt contributions are summed compactly.

    Every reply of a round has the same mask, so the rebuilt n (delta / lr) ** 2 of
    its kept positions is added into a buffer of the kept values' length (a
    contiguous add) and scattered into :attr:`values` once, when S is read or the
    mask changes: about 5x cheaper per reply than scattering each reply for Conv-2.
    Uploads are summed the same way, in a buffer over their positions: ten Conv-2
    uploads of 5.7M values took 0.5 s (2.8 s in a fresh process) scattered one by one.
    The buffered sum equals the one-by-one sum bit for bit wherever S was zero when
    the buffer started (as after every reconfiguration's :meth:`take`); reading S (a
    checkpoint) flushes the buffer, at the same round in a resumed run as in an
    uninterrupted one.
    """

    def __init__(self, layout: ModelLayout) -> None:
        self.layout = layout
        self._values = np.zeros(layout.num_floats, dtype=np.float64)
        self.is_parameter = np.zeros(layout.num_floats, dtype=bool)
        self.is_parameter[layout.parameter_positions] = True
        self.contributions = 0
        self._mask: np.ndarray | None = None  # the mask the pending sums belong to (a copy)
        self._kept = np.zeros(0, dtype=np.int64)
        self._kept_is_parameter = np.zeros(0, dtype=bool)
        self._pending: np.ndarray | None = None  # sums over the kept positions, not yet in _values
        self._upload_positions = np.zeros(0, dtype=np.int64)
        self._pending_upload: np.ndarray | None = None  # sums over _upload_positions, not yet in _values

    @property
    def values(self) -> np.ndarray:
        """S at every float position (pending sums included)."""
        self._flush()
        return self._values

    def add_from_update(
        self,
        mask: np.ndarray,
        start_values: np.ndarray,
        client_values: np.ndarray,
        samples: int,
        lr: float,
    ) -> None:
        """Rebuild n (delta / lr) ** 2 at the kept parameter positions of one reply."""
        self.add_rebuilt(mask, self.rebuild(mask, start_values, client_values, samples, lr))

    def _use_mask(self, mask: np.ndarray) -> None:
        if self._mask is None or not np.array_equal(self._mask, mask):
            self._flush()
            self._mask = mask.copy()
            self._kept = np.flatnonzero(mask)
            self._kept_is_parameter = self.is_parameter[self._kept]

    def rebuild(
        self,
        mask: np.ndarray,
        start_values: np.ndarray,
        client_values: np.ndarray,
        samples: int,
        lr: float,
    ) -> np.ndarray:
        """n (delta / lr) ** 2 over ``mask``'s kept positions, 0 at kept non-parameters (float64)."""
        self._use_mask(mask)
        delta = client_values - start_values  # float32, as the values travelled
        rebuilt = np.square(delta, dtype=np.float64)
        rebuilt *= samples / (lr * lr)
        rebuilt[~self._kept_is_parameter] = 0.0
        return rebuilt

    def add_rebuilt(self, mask: np.ndarray, rebuilt: np.ndarray) -> None:
        """Add one reply's :meth:`rebuild` output (possibly scaled down) for ``mask``."""
        self._use_mask(mask)
        if self._pending is None:
            self._pending = np.zeros(len(self._kept), dtype=np.float64)
        self._pending += rebuilt
        self.contributions += 1

    def _flush(self) -> None:
        if self._pending is not None:
            self._pending[~self._kept_is_parameter] = 0.0
            self._values[self._kept] += self._pending
            self._pending = None
        if self._pending_upload is not None:
            self._values[self._upload_positions] += self._pending_upload
            self._pending_upload = None

    def add_upload(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Add a client's uploaded statistic at ``positions`` of the float state."""
        if self._pending_upload is not None and not (
            positions is self._upload_positions or np.array_equal(positions, self._upload_positions)
        ):
            self._flush()
        if self._pending_upload is None:
            self._upload_positions = positions
            self._pending_upload = np.zeros(len(positions), dtype=np.float64)
        np.add(self._pending_upload, values, out=self._pending_upload)

    def merge(self, update: RoundUpdate, plain_sgd: bool, bound_rebuilt: bool, factor: float) -> None:
        """Add a round's contributions, each client's bounded by the round's median.

        Lossy formats: a reply is the values sent plus the client's update, so the
        rebuilt importance n ((w_c - w_start) / lr) ** 2 is the client's own movement.
        ``bound_rebuilt`` bounds the rebuilt parts as the uploads are (robust rules).
        """
        positions = statistic_positions(self.layout, update.mask, plain_sgd)
        reports = update.reports
        rebuilt = [
            self.rebuild(update.mask, update.sent_values, r.values, r.samples, update.lr)
            if plain_sgd and r.mask is None and r.values is not None
            else None
            for r in reports
        ]
        uploaded = [r.upload for r in reports]
        rebuilt_scales = [1.0] * len(reports)
        if bound_rebuilt:
            rebuilt_scales = _bounded(update.server_round, "rebuilt importance", reports, rebuilt, factor)
        upload_scales = _bounded(update.server_round, "uploaded importance", reports, uploaded, factor)
        for part, scale, upload, upload_scale in zip(
            rebuilt, rebuilt_scales, uploaded, upload_scales, strict=True
        ):
            if part is not None:
                self.add_rebuilt(update.mask, part * scale if scale < 1 else part)
            if upload is not None:
                self.add_upload(
                    positions, upload.astype(np.float64) * upload_scale if upload_scale < 1 else upload
                )

    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {"values": self.values, "contributions": self.contributions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = np.asarray(state["values"])
        if values.dtype != np.float64 or values.shape != self.values.shape:
            raise ValueError(
                f"checkpointed importance has dtype {values.dtype} and shape {values.shape}; "
                f"expected float64 of shape {self.values.shape}"
            )
        self._pending = None
        self._pending_upload = None
        self._values = values.copy()
        self.contributions = int(state["contributions"])

    def take(self) -> np.ndarray:
        """Return the accumulated S and start over."""
        out = self.values
        self._values = np.zeros_like(out)
        self.contributions = 0
        return out


def _bounded(
    server_round: int,
    what: str,
    reports: list[ClientReport],
    parts: list[np.ndarray | None],
    factor: float,
) -> list[float]:
    """Each report's scale for its ``part`` (1.0 where it has none), logged where below 1."""
    present = [i for i, part in enumerate(parts) if part is not None]
    sizes = [float(np.sum(parts[i], dtype=np.float64)) for i in present]  # type: ignore[arg-type]
    scales = [1.0] * len(parts)
    for i, scale in zip(present, median_clip_scales(sizes, factor), strict=True):
        scales[i] = float(scale)
        if scale < 1:
            log(
                WARNING,
                "round %d: %s of node %d scaled by %.3g to federation.statistic-factor = %g "
                "times the round's median",
                server_round,
                what,
                reports[i].node_id,
                scale,
                factor,
            )
    return scales
