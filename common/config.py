"""The run configuration: every key, its default and what is allowed.

The defaults here are the embedded default run (10 clients on scikit-learn's
digits with PruneFL); ``pyproject.toml``'s ``[tool.flwr.app.config]`` lists the
same keys and values (a test keeps the two equal), and presets in
``simulations/`` override only what differs. :meth:`AppConfig.from_flat` is the
one place a flat mapping becomes typed settings; anything invalid raises
:class:`~common.settings.ConfigError` before a client starts.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .cost_model import bundled_profiles
from .data import DATASETS, PARTITIONINGS
from .device import DEVICE_SPECS, check_device_spec
from .models import MODELS
from .profile_mix import ProfileMix, ProfileMixError
from .pruning import METHODS, MethodSettings, PruningMethod
from .settings import ConfigError, Scalar, Section, flatten, reject_unknown_keys
from .wire import WireFormat

DATA_DIR_ENV = "FEDPRUNE_DATA_DIR"
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # read by ray.init itself, too


@dataclass(frozen=True)
class FederationSettings(Section):
    PREFIX = "federation"

    rounds: int = 40  # FL rounds after initial pruning
    clients_per_round: int = 0  # 0: every connected client, every round
    min_clients: int = 2  # fewest replies a round aggregates; also waited for at start
    seed: int = 0
    round_timeout: float = 600.0  # seconds to wait for a round's replies
    connect_timeout: float = 300.0  # seconds to wait for min-clients nodes at start
    # when nodes are asked for their partition (server/nodes.py): "auto" describes a
    # simulation's nodes when first sampled if it samples clients-per-round, "all" every
    # node before round 1 (a deployment always does)
    describe: Literal["auto", "all"] = "auto"
    # torch CPU threads of the ServerApp's own work (initial pruning on the server, the
    # test-set evaluation); 0 = as many as one client in `fedprune simulate` (the server
    # shares the machine with its clients), torch's default in a deployment
    server_threads: int = 0
    # robustness against hostile clients (docs/robustness.md)
    aggregation: Literal["mean", "clip", "trimmed-mean", "median"] = "mean"
    clip_factor: float = 2.0  # clip: updates clipped to this multiple of the round's median update norm
    trim_fraction: float = 0.2  # trimmed-mean: share of the weight cut at each end, per position
    outlier_factor: float = 10.0  # replies whose update norm exceeds this multiple of the model's: outlier
    # ... or this multiple of the round's median update norm; 0 = off (the default: honest digits
    # rounds reach 14x the median, docs/robustness.md)
    outlier_median_factor: float = 0.0
    statistic_factor: float = 10.0  # a client's statistic is clipped to this multiple of the round's median

    def validate(self) -> None:
        self.require("rounds", self.rounds >= 1, "an integer >= 1")
        self.require("clients_per_round", self.clients_per_round >= 0, "an integer >= 0 (0 = all)")
        self.require("min_clients", self.min_clients >= 1, "an integer >= 1")
        self.require("seed", self.seed >= 0, "an integer >= 0")
        self.require("round_timeout", self.round_timeout > 0, "a number of seconds > 0")
        self.require("connect_timeout", self.connect_timeout > 0, "a number of seconds > 0")
        self.require("server_threads", self.server_threads >= 0, "an integer >= 0 (0 = see the docs)")
        self.require("clip_factor", self.clip_factor > 0, "a multiple of the median update norm > 0")
        self.require("trim_fraction", 0 <= self.trim_fraction < 0.5, "a fraction in [0, 0.5)")
        self.require("outlier_factor", self.outlier_factor > 0, "a multiple of the model's norm > 0")
        self.require(
            "outlier_median_factor",
            self.outlier_median_factor == 0 or self.outlier_median_factor > 1,
            "a multiple of the round's median update norm > 1, or 0 (off)",
        )
        self.require("statistic_factor", self.statistic_factor >= 1, "a multiple of the median >= 1")
        if self.clients_per_round:
            self.require(
                "min_clients",
                self.min_clients <= self.clients_per_round,
                f"at most federation.clients-per-round ({self.clients_per_round})",
            )


@dataclass(frozen=True)
class DataSettings(Section):
    PREFIX = "data"

    dataset: str = "digits"
    dir: str = ""  # where data files live; "" = $FEDPRUNE_DATA_DIR
    partitioning: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration (smaller = more skew)
    classes_per_client: int = 2  # k of the pathological partitioning
    shards_per_client: int = 2  # shards of the label-sorted data per client (shards partitioning)
    client_test_fraction: float = 0.1  # share of each client's samples held out for its evaluation
    download: bool = False  # fetch missing data sets from the Hugging Face hub

    def validate(self) -> None:
        self.require("dataset", self.dataset in DATASETS, f"one of {sorted(DATASETS)}")
        self.require("partitioning", self.partitioning in PARTITIONINGS, f"one of {list(PARTITIONINGS)}")
        if self.partitioning == "natural":
            with_writers = sorted(name for name, source in DATASETS.items() if source.has_writers)
            self.require(
                "partitioning",
                DATASETS[self.dataset].has_writers,
                f"a scheme other than natural for {self.dataset} (natural needs writers: {with_writers})",
            )
        self.require("alpha", self.alpha > 0, "a number > 0")
        classes = DATASETS[self.dataset].num_classes
        self.require(
            "classes_per_client",
            1 <= self.classes_per_client <= classes,
            f"an integer in [1, {classes}] ({self.dataset} has {classes} classes)",
        )
        self.require("shards_per_client", self.shards_per_client >= 1, "an integer >= 1")
        self.require("client_test_fraction", 0 <= self.client_test_fraction < 1, "a fraction in [0, 1)")

    def resolved_dir(self) -> Path | None:
        """The data folder: this key, else $FEDPRUNE_DATA_DIR, else none."""
        text = self.dir or os.environ.get(DATA_DIR_ENV, "")
        return Path(text).expanduser().resolve() if text else None


@dataclass(frozen=True)
class ModelSettings(Section):
    PREFIX = "model"

    name: str = "digits-cnn"

    def validate(self) -> None:
        self.require("name", self.name in MODELS, f"one of {sorted(MODELS)}")


@dataclass(frozen=True)
class TrainSettings(Section):
    PREFIX = "train"

    lr: float = 0.05
    lr_half_life: float = 0.0  # rounds for lr to halve; 0 = constant (PruneFL: 10000 on CIFAR-10)
    lr_warmup_rounds: int = 0  # first FL rounds at a linearly rising lr (0 = none, as PruneFL)
    local_steps: int = 10  # E, SGD steps per round (PruneFL: 5)
    batch_size: int = 32  # (PruneFL: 20)
    loss: Literal["cross-entropy", "bce-one-hot"] = "cross-entropy"
    momentum: float = 0.0
    weight_decay: float = 0.0
    weighting: Literal["samples-processed", "dataset-size"] = "samples-processed"
    # where the server evaluates and prunes, and simulated clients train (common/device.py);
    # a deployed node resolves its own (--node-config device=..., default auto)
    device: str = "auto"

    def validate(self) -> None:
        self.require("lr", self.lr > 0, "a learning rate > 0")
        self.require("device", check_device_spec(self.device), "one of " + ", ".join(DEVICE_SPECS))
        self.require("lr_half_life", self.lr_half_life >= 0, "a number of rounds >= 0 (0 = constant)")
        self.require("lr_warmup_rounds", self.lr_warmup_rounds >= 0, "a number of rounds >= 0 (0 = none)")
        self.require("local_steps", self.local_steps >= 1, "an integer >= 1")
        self.require("batch_size", self.batch_size >= 1, "an integer >= 1")
        self.require("momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        self.require("weight_decay", self.weight_decay >= 0, "a number >= 0")

    def lr_at(self, server_round: int) -> float:
        """The learning rate of FL round ``server_round`` (>= 1).

        lr_t = lr * 0.5 ** (t / half-life) * min(1, t / (W + 1)), W = ``lr-warmup-rounds``:
        PruneFL's decay (half-life 0 = constant), and with W > 0 a linear warm-up over
        rounds 1..W (round 1 at lr / (W + 1), round W + 1 onwards at the full rate).
        The warm-up is fedprune's remedy for the first rounds after initial pruning:
        IP trains many passes over one client's few samples and can end at a sharp
        solution on which the other clients' full-rate SGD steps diverge (their loss
        grows for a few rounds before FedAvg recovers). Not in PruneFL (W = 0 there).
        """
        lr = self.lr if self.lr_half_life == 0 else self.lr * 0.5 ** (server_round / self.lr_half_life)
        if self.lr_warmup_rounds and 0 < server_round <= self.lr_warmup_rounds:
            lr *= server_round / (self.lr_warmup_rounds + 1)
        return lr


@dataclass(frozen=True)
class PruningSettings(Section):
    PREFIX = "pruning"

    method: str = "prunefl"

    def validate(self) -> None:
        self.require("method", self.method in METHODS, f"one of {sorted(METHODS)}")


@dataclass(frozen=True)
class CostSettings(Section):
    PREFIX = "cost"

    profile: str = "x86-2core-sandbox"  # a bundled profile name or a .toml path
    link_bandwidth: float = 0.0  # bytes per second each way; 0 = the profile's

    def validate(self) -> None:
        self.require("profile", bool(self.profile), "a bundled profile name or a profile file")
        self.require("link_bandwidth", self.link_bandwidth >= 0, "bytes per second >= 0 (0 = profile's)")


@dataclass(frozen=True)
class WireSettings(Section):
    """How numbers travel (see common/wire): lossless float32 unless a lossy format is chosen."""

    PREFIX = "wire"

    values: Literal["float32", "float16", "bfloat16"] = "float32"  # kept weights, both directions
    importance: Literal["float32", "bfloat16"] = "float32"  # PruneFL's uploaded statistic
    compression_level: int = 1  # zstd level for masks, values and importance; 0 = off

    def validate(self) -> None:
        level = self.compression_level
        self.require("compression_level", 0 <= level <= 22, "an integer in [0, 22] (0 = off)")

    def format(self) -> WireFormat:
        return WireFormat(self.values, self.importance, self.compression_level)


@dataclass(frozen=True)
class EvaluateSettings(Section):
    PREFIX = "evaluate"

    server: bool = True  # evaluate the global model on the server-held test set
    client_fraction: float = 0.0  # share of clients asked to evaluate on their own test split
    every: int = 1  # rounds between evaluations
    overlap: bool = True  # the server evaluates round t while round t+1 trains (server/evaluation.py)

    def validate(self) -> None:
        self.require("client_fraction", 0 <= self.client_fraction <= 1, "a fraction in [0, 1]")
        self.require("every", self.every >= 1, "an integer >= 1")


@dataclass(frozen=True)
class OutputSettings(Section):
    PREFIX = "output"

    dir: str = "results"  # parent folder of the run's results folder
    name: str = ""  # the run's folder name; "" = <time>-<method>-<dataset>
    checkpoint_every: int = 10  # rounds between checkpoints (also after round 0 and the last); 0 = none
    resume: str = ""  # a results folder to continue from its latest checkpoint (flwr run); "" = a new run

    def validate(self) -> None:
        self.require("dir", bool(self.dir), "a folder path")
        self.require("name", "/" not in self.name and self.name not in (".", ".."), "a plain folder name")
        self.require("checkpoint_every", self.checkpoint_every >= 0, "an integer >= 0 (0 = no checkpoints)")
        self.require(
            "resume",
            self.resume == self.resume.strip() and Path(self.resume).name not in (".", ".."),
            'a results folder path without surrounding spaces, or "" for a new run',
        )


@dataclass(frozen=True)
class SimulationSettings(Section):
    PREFIX = "simulation"

    num_clients: int = 10  # SuperNodes of `fedprune simulate` (flwr run: --federation-config)
    client_cpus: float = 1.0  # Ray CPUs per client
    client_threads: int = 1  # torch threads per client
    client_gpus: float = 0.0  # Ray GPUs per client; 0.25 = four clients share a GPU
    ray_address: str = ""  # an existing Ray cluster to attach to ("" = $RAY_ADDRESS, else a new one)
    # device profile per partition (common/profile_mix.py): "name:fraction,..." (a mix, drawn
    # from federation.seed), "name,name,..." (one per partition), "" = every node on cost.profile
    profiles: str = ""

    def validate(self) -> None:
        try:
            mix = self.profile_mix()
        except ProfileMixError as exc:
            allowed = f"a mix 'name:fraction,...' or a list 'name,...' ({exc})"
            raise ConfigError("simulation.profiles", self.profiles, allowed) from exc
        for name in mix.names():
            self.require("profiles", known_profile(name), f"profile names among {profile_choices(name)}")
        self.require("num_clients", self.num_clients >= 1, "an integer >= 1")
        self.require("client_cpus", self.client_cpus > 0, "a number > 0")
        self.require("client_threads", self.client_threads >= 1, "an integer >= 1")
        self.require("client_gpus", self.client_gpus >= 0, "a number >= 0 (a fraction shares a GPU)")
        self.require(
            "ray_address",
            self.ray_address == self.ray_address.strip(),
            "an address such as 'auto', '127.0.0.1:6379' or 'ray://head:10001', without spaces",
        )

    def profile_mix(self) -> ProfileMix:
        """``profiles`` read (derived each time, never stored beside the string)."""
        return ProfileMix.parse(self.profiles)

    def cluster_address(self) -> str:
        """The Ray cluster to attach to: ``ray-address``, else ``$RAY_ADDRESS``; "" starts a new one."""
        return self.ray_address or os.environ.get(RAY_ADDRESS_ENV, "")


@dataclass(frozen=True)
class FleetSettings(Section):
    """Heterogeneous fleets (server/fleet.py): budgets per client."""

    PREFIX = "fleet"

    # modelled seconds a client may spend on a round (PruneFL's T(M) with its own profile);
    # a client that cannot afford the global mask trains a sub-mask of it. 0 = no budget
    round_budget: float = 0.0

    def validate(self) -> None:
        self.require("round_budget", self.round_budget >= 0, "modelled seconds >= 0 (0 = no budget)")


def known_profile(name: str) -> bool:
    """A bundled profile's name or a path to a profile file (read when the run starts)."""
    return name in bundled_profiles() or name.endswith(".toml")


def profile_choices(name: str) -> str:
    close = difflib.get_close_matches(name, bundled_profiles(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{bundled_profiles()} or a .toml file; {name!r} is none{hint}"


SECTIONS: tuple[type[Section], ...] = (
    FederationSettings,
    DataSettings,
    ModelSettings,
    TrainSettings,
    PruningSettings,
    CostSettings,
    WireSettings,
    EvaluateSettings,
    OutputSettings,
    SimulationSettings,
    FleetSettings,
)


def known_keys() -> list[str]:
    """Every key a configuration may set, the methods' own keys included."""
    keys = [key for section in SECTIONS for key in section.keys()]
    keys += [key for method in METHODS.values() for key in method.settings_keys()]
    return keys


@dataclass(frozen=True)
class AppConfig:
    """The whole, validated run configuration."""

    federation: FederationSettings
    data: DataSettings
    model: ModelSettings
    train: TrainSettings
    pruning: PruningSettings
    method: MethodSettings
    cost: CostSettings
    wire: WireSettings
    evaluate: EvaluateSettings
    output: OutputSettings
    simulation: SimulationSettings
    fleet: FleetSettings = FleetSettings()

    @property
    def method_class(self) -> type[PruningMethod]:
        return METHODS[self.pruning.method]

    @classmethod
    def from_flat(cls, flat: Mapping[str, object]) -> AppConfig:
        """Validate every key of ``flat`` and build the configuration.

        Every registered method's table is parsed, so a typo in any of them is
        caught, but only the selected method's settings are kept.
        """
        reject_unknown_keys(flat, known_keys())
        for method in METHODS.values():
            method.Settings.from_flat(flat)
        pruning = PruningSettings.from_flat(flat)
        config = cls(
            federation=FederationSettings.from_flat(flat),
            data=DataSettings.from_flat(flat),
            model=ModelSettings.from_flat(flat),
            train=TrainSettings.from_flat(flat),
            pruning=pruning,
            method=METHODS[pruning.method].Settings.from_flat(flat),
            cost=CostSettings.from_flat(flat),
            wire=WireSettings.from_flat(flat),
            evaluate=EvaluateSettings.from_flat(flat),
            output=OutputSettings.from_flat(flat),
            simulation=SimulationSettings.from_flat(flat),
            fleet=FleetSettings.from_flat(flat),
        )
        config.check_other_methods(flat)
        config.check_evaluation()
        return config

    def check_other_methods(self, flat: Mapping[str, object]) -> None:
        """A method's setting given while another method is selected is an error.

        Such a setting would be silently ignored (a target density handed to a
        method without one, say), so it stops the run. Keys at their default value
        pass, since ``flwr run`` hands every key of ``pyproject.toml`` to the app.
        """
        selected = self.pruning.method
        for name, method in METHODS.items():
            if name == selected or not method.settings_keys():
                continue
            given = method.Settings.from_flat(flat).to_flat()
            defaults = method.Settings().to_flat()
            for key in method.settings_keys():
                if key in flat and given[key] != defaults[key]:
                    raise ConfigError(
                        key,
                        flat[key],
                        f"a setting of pruning method {name!r}, but pruning.method = {selected!r} "
                        f"ignores it; remove it or select {name!r}",
                    )

    def check_evaluation(self) -> None:
        """The evaluation settings must evaluate something."""
        evaluate, rounds = self.evaluate, self.federation.rounds
        if evaluate.server:
            return  # the server evaluates every `every` rounds and always the last one
        if evaluate.client_fraction == 0:
            raise ConfigError(
                "evaluate.client-fraction",
                evaluate.client_fraction,
                "> 0 when evaluate.server = false; otherwise no round is evaluated",
            )
        if evaluate.every > rounds:
            raise ConfigError(
                "evaluate.every",
                evaluate.every,
                f"at most federation.rounds ({rounds}) when only clients evaluate "
                "(evaluate.server = false); otherwise no round is evaluated",
            )

    def check_simulation(self) -> None:
        """Checks against ``simulation.num-clients``, for runs that start their own clients."""
        fed, sim = self.federation, self.simulation
        if fed.clients_per_round > sim.num_clients:
            raise ConfigError(
                "federation.clients-per-round",
                fed.clients_per_round,
                f"at most simulation.num-clients ({sim.num_clients}), or 0 for all",
            )
        if fed.min_clients > sim.num_clients:
            raise ConfigError(
                "federation.min-clients",
                fed.min_clients,
                f"at most simulation.num-clients ({sim.num_clients})",
            )
        listed = sim.profile_mix().per_partition
        if listed and len(listed) != sim.num_clients:
            raise ConfigError(
                "simulation.profiles",
                sim.profiles,
                f"one profile per partition: {sim.num_clients} names (simulation.num-clients), "
                f"not {len(listed)}; or fractions 'name:fraction,...'",
            )
        ip_client = getattr(self.method, "ip_client", None)
        if ip_client is not None and ip_client >= sim.num_clients:
            raise ConfigError(
                f"{self.method.PREFIX}.ip-client",
                ip_client,
                f"a partition id below simulation.num-clients ({sim.num_clients})",
            )

    def to_flat(self) -> dict[str, Scalar]:
        """The resolved configuration as flat keys (the selected method's only)."""
        flat: dict[str, Scalar] = {}
        for section in (
            self.federation,
            self.data,
            self.model,
            self.train,
            self.pruning,
            self.method,
            self.cost,
            self.wire,
            self.evaluate,
            self.output,
            self.simulation,
            self.fleet,
        ):
            flat.update(section.to_flat())
        return flat


def default_flat() -> dict[str, Scalar]:
    """Every key with its default value, every method's keys included."""
    flat: dict[str, Scalar] = {}
    for section in SECTIONS:
        flat.update(section().to_flat())
    for method in METHODS.values():
        if method.settings_keys():
            flat.update(method.Settings().to_flat())
    return flat


def parse_override(text: str) -> tuple[str, object]:
    """Parse one ``key=value`` override; the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(
            "--set", text, "an override of the form key=value, e.g. train.lr=0.05", what="option"
        )
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def read_preset(path: Path) -> dict[str, object]:
    """Flat keys of a preset TOML file (nested tables or dotted keys)."""
    if not path.is_file():
        raise ConfigError("--config", str(path), "an existing TOML file or preset name", what="option")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", str(path), f"a valid TOML file ({exc})", what="option") from exc
    # A preset may also be a copy of pyproject.toml's [tool.flwr.app.config].
    table = table.get("tool", {}).get("flwr", {}).get("app", {}).get("config", table)
    return flatten(table)


def with_method(flat: Mapping[str, object], method: str) -> dict[str, object]:
    """``flat`` with ``pruning.method = method`` and without the other methods' settings.

    A preset may tune the method it names (``pruning.prunefl.reconfig-interval = 50``);
    choosing another method for it (``--set pruning.method=none``, a comparison, a
    benchmark) drops those settings rather than refusing them as contradictions:
    they were the preset's, not the user's.
    """
    own = f"pruning.{method}."
    kept = {
        k: v
        for k, v in flat.items()
        if not (k.count(".") >= 2 and k.startswith("pruning.")) or k.startswith(own)
    }
    kept["pruning.method"] = method
    return kept


def load_config(preset: Path | None = None, overrides: list[str] | None = None) -> AppConfig:
    """Defaults, then a preset file, then ``key=value`` overrides, validated once.

    An override of ``pruning.method`` sets aside the preset's settings of other
    methods (see :func:`with_method`); overrides themselves are never dropped.
    """
    flat: dict[str, object] = dict(read_preset(preset)) if preset is not None else {}
    given = dict(parse_override(text) for text in overrides or [])
    if "pruning.method" in given:
        flat = with_method(flat, str(given["pruning.method"]))
    flat.update(given)
    return AppConfig.from_flat(flat)
