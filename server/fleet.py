"""A heterogeneous fleet: each node's device profile, and a round's straggler.

Which profile a node runs on, in order of precedence:

1. the one it names itself (``--node-config profile=<name>``; the node reports it in
   its description, :func:`client.app.describe`);
2. its partition's entry of ``simulation.profiles`` (:mod:`common.profile_mix`);
3. ``cost.profile``.

PruneFL (Jiang et al., TNNLS 2022, Sec. IV-B) models a round of one device as
T(M) = T0 + sum_l c_l |M_l|. With devices of several kinds, a synchronous round
lasts as long as its slowest sampled client, the *straggler*:

    T_round = max_c T_c,     T_c = E (t0_c + sum_l comp_{c,l} |M_{c,l}|) + (B_c^down + B_c^up) / bw_c

with t0_c, comp_{c,l} and bw_c from client c's own profile, M_c the mask it
trains and B_c its measured bytes. With one profile for every node this is the
round time fedprune always recorded (E t0 + sum_l comp_l |M_l| is the same for
every client, and the max picks the client with the most bytes). The straggler
share of a round is T_round / mean_c T_c (1 = every client takes as long; 2 = the
straggler takes twice the average client's time: the others wait). All of these
are *modelled* seconds.

PruneFL's greedy reconfiguration keeps using the ``cost.profile`` model (the
server's reference device); per-client budgets (:mod:`common.budget`) use each
client's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.config import AppConfig
from common.cost_model import CostModel, ProfileError, load_profile
from common.layout import ModelLayout
from common.profile_mix import ProfileMixError
from common.settings import ConfigError

from .nodes import NodeInfo

NOMINAL_BYTES_PER_VALUE = 8.0  # float32 down and up, before any round is measured


def profile_cost(config: AppConfig, layout: ModelLayout, name: str) -> CostModel:
    """The cost model of profile ``name`` for the run's model; raises ProfileError."""
    return CostModel.from_profile(
        load_profile(name),
        config.model.name,
        layout,
        config.train.local_steps,
        config.cost.link_bandwidth or None,
        NOMINAL_BYTES_PER_VALUE,
    )


@dataclass(frozen=True)
class ClientTime:
    """One sampled client's modelled round: compute from its profile and mask, transfer from its bytes."""

    node_id: int
    partition_id: int
    profile: str
    compute_s: float
    transfer_s: float

    @property
    def seconds(self) -> float:
        return self.compute_s + self.transfer_s


@dataclass(frozen=True)
class RoundTime:
    """A round's modelled time: its slowest client's (see the module)."""

    clients: tuple[ClientTime, ...]

    @property
    def straggler(self) -> ClientTime | None:
        """The slowest client (the first by partition of equally slow ones); None without clients."""
        ordered = sorted(self.clients, key=lambda c: (c.partition_id, c.node_id))
        return max(ordered, key=lambda c: c.seconds, default=None)

    @property
    def seconds(self) -> float:
        straggler = self.straggler
        return straggler.seconds if straggler is not None else 0.0

    @property
    def straggler_share(self) -> float:
        """T_round / mean_c T_c (NaN without clients or time)."""
        mean = float(np.mean([c.seconds for c in self.clients])) if self.clients else 0.0
        return self.seconds / mean if mean > 0 else math.nan


class Fleet:
    """Each node's device profile (see the module) and that profile's cost model.

    The node's own claim is the :class:`~server.nodes.NodeBook`'s (``NodeInfo.profile``);
    the mix and the default are the configuration's; this class only resolves them
    and keeps one cost model per profile name.
    """

    def __init__(self, config: AppConfig, layout: ModelLayout) -> None:
        self.config = config
        self.layout = layout
        self.costs: dict[str, CostModel] = {}
        for name in [config.cost.profile, *config.simulation.profile_mix().names()]:
            key = "cost.profile" if name == config.cost.profile else "simulation.profiles"
            try:
                self.costs.setdefault(name, profile_cost(config, layout, name))
            except ProfileError as exc:
                raise ConfigError(key, name, str(exc)) from exc
        self._assignments: dict[int, tuple[str, ...]] = {}  # partition count -> profile per partition

    @property
    def default(self) -> str:
        return self.config.cost.profile

    @property
    def reference(self) -> CostModel:
        """The ``cost.profile`` model, with the nominal bytes per value (PruneFL's greedy starts from it)."""
        return self.costs[self.default]

    def assignment(self, num_partitions: int) -> tuple[str, ...]:
        """``simulation.profiles`` drawn for ``num_partitions`` (empty without a mix).

        Raises ProfileMixError for a list of another length.
        """
        if num_partitions not in self._assignments:
            mix = self.config.simulation.profile_mix()
            self._assignments[num_partitions] = mix.assign(num_partitions, self.config.federation.seed)
        return self._assignments[num_partitions]

    def resolve(self, claimed: str, partition_id: int, num_partitions: int) -> str:
        """The profile of a node that claims ``claimed`` ("" for none).

        Raises ProfileError (no such profile, or none for the model) or ProfileMixError.
        """
        if claimed:
            name = claimed
        else:
            assigned = self.assignment(num_partitions)
            name = assigned[partition_id] if assigned else self.default
        if name not in self.costs:
            self.costs[name] = profile_cost(self.config, self.layout, name)
        return name

    def refusal(self, claimed: str, partition_id: int, num_partitions: int) -> str | None:
        """Why a node with this description cannot be modelled (None when it can)."""
        try:
            self.resolve(claimed, partition_id, num_partitions)
        except (ProfileError, ProfileMixError) as exc:
            return f"device profile: {exc}"
        return None

    def profile_of(self, node: NodeInfo) -> str:
        return self.resolve(node.profile, node.partition_id, node.num_partitions)

    def cost_of(self, node: NodeInfo) -> CostModel:
        return self.costs[self.profile_of(node)]

    def client_time(self, node: NodeInfo, kept_per_layer: np.ndarray, num_bytes: float) -> ClientTime:
        """T_c of ``node`` training a mask with ``kept_per_layer`` weights, moving ``num_bytes``."""
        name = self.profile_of(node)
        cost = self.costs[name]
        compute, transfer = cost.compute_time(kept_per_layer), cost.transfer_time(num_bytes)
        return ClientTime(node.node_id, node.partition_id, name, compute, transfer)
