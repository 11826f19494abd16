"""PruneFL's round-time model and the device profiles it reads.

Jiang et al. (TNNLS 2022, Sec. IV-B) model the time of one FL round of a device
training a model with mask M as a linear function of the kept weights:

    T(M) = T0 + sum_l c_l * |M_l|,      c_l = c_comm + E * comp_l,      T0 = E * t0

with E local iterations per round, ``comp_l`` the seconds per kept weight of layer
l per iteration and ``t0`` the mask-independent seconds per iteration, both fitted
on the device, and ``c_comm`` the seconds per kept weight to send it down and up.

Here ``comp_l`` and ``t0`` come from a *device profile* file, and ``c_comm`` is
not a constant: it is the number of bytes per kept value actually measured on the
wire divided by the link bandwidth. Every time computed from this model is a
*modelled* time and is labelled as such in the results.

Profile files are TOML::

    [device]
    name = "raspberry-pi-4-class"
    kind = "published"            # "published" figures, "measured" by fedprune profile, or
                                  # "derived" from another profile (see below)
    description = "..."
    source = "..."

    [link]
    bandwidth = 1438427.0         # bytes per second, each direction
    measured = false

    [models.conv2]
    t0 = 1.2492789765             # seconds per local iteration, mask-independent
    kind = "published"            # optional: this model's figures, if not the device's kind
    [models.conv2.layers]         # seconds per kept weight per local iteration
    "fc1.weight" = 1.927325e-7

A *derived* profile or model table holds no figure of its own device's: it is
computed from another's by a stated rule and source (a published throughput ratio
between two devices, or one model's seconds per FLOP applied to another model's
FLOPs, :mod:`simulations.derive_profile`), written in the file's comments.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .layout import ModelLayout

PROFILE_PACKAGE = "common.profiles"
PROFILE_KEY = "cost.profile"  # the configuration key that names the reference device's profile
PROFILE_KINDS = ("published", "measured", "derived")


class ProfileError(ValueError):
    """A device profile file is missing, malformed or lacks the model."""


@dataclass(frozen=True)
class ModelTiming:
    """Fitted compute figures of one model on one device."""

    t0: float
    per_weight: dict[str, float]
    kind: str = "published"  # where the figures come from: one of PROFILE_KINDS


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: str
    description: str
    source: str
    bandwidth: float
    bandwidth_measured: bool
    models: dict[str, ModelTiming]

    def timing(self, model_name: str, layout: ModelLayout) -> ModelTiming:
        """The model's timing, checked to cover every prunable layer of ``layout``."""
        if model_name not in self.models:
            raise ProfileError(
                f"device profile {self.name!r} has no timing for model {model_name!r} "
                f"(it has: {', '.join(sorted(self.models)) or 'none'}); measure one with "
                f"`fedprune profile --set model.name={model_name}` and pass it as cost.profile"
            )
        timing = self.models[model_name]
        missing = [t.name for t in layout.prunable if t.name not in timing.per_weight]
        if missing:
            raise ProfileError(
                f"device profile {self.name!r}, model {model_name!r}: no per-weight time for layers {missing}"
            )
        return timing


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped with fedprune."""
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files(PROFILE_PACKAGE).iterdir()
        if p.name.endswith(".toml")
    )


def _number(table: dict, key: str, where: str, minimum: float = 0.0) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ProfileError(f"{where}: '{key}' = {value!r} must be a number >= {minimum}")
    return float(value)


def load_profile(name_or_path: str) -> DeviceProfile:
    """Load a bundled profile by name, or a profile file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ProfileError(f"device profile file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
    elif name_or_path in bundled_profiles():
        text = resources.files(PROFILE_PACKAGE).joinpath(f"{name_or_path}.toml").read_text("utf-8")
    else:
        raise ProfileError(
            f"device profile {name_or_path!r} is neither a file nor a bundled profile "
            f"({', '.join(bundled_profiles())})"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"device profile {name_or_path!r} is not valid TOML: {exc}") from exc
    return parse_profile(data, name_or_path)


def same_profile(saved: str, current: str) -> bool:
    """Whether the ``cost.profile`` a run was saved with names the profile ``current`` names.

    A bundled profile is known by its name. A profile file is known by its file name and
    its contents: a results folder moves with the checkout its profile file is in (a
    claim's committed runs, read on another clone), so the saved path may differ from
    today's, or be gone. Files of one name whose contents differ, where both are still
    there, are two profiles.
    """
    if saved == current:
        return True
    before, now = Path(saved), Path(current)
    if before.suffix != ".toml" or now.suffix != ".toml" or before.name != now.name:
        return False
    if before.is_file() and now.is_file():
        return before.read_bytes() == now.read_bytes()
    return True


def parse_profile(data: dict, where: str) -> DeviceProfile:
    device, link, models = data.get("device", {}), data.get("link", {}), data.get("models", {})
    if not isinstance(device, dict) or not isinstance(link, dict) or not isinstance(models, dict):
        raise ProfileError(f"{where}: [device], [link] and [models] must be tables")
    kind = device.get("kind")
    if kind not in PROFILE_KINDS:
        raise ProfileError(f"{where}: device.kind = {kind!r} must be one of {PROFILE_KINDS}")
    timings = {}
    for model_name, table in models.items():
        if not isinstance(table, dict) or not isinstance(table.get("layers"), dict):
            raise ProfileError(f"{where}: [models.{model_name}] needs t0 and a [layers] table")
        layers = {
            layer: _number(table["layers"], layer, f"{where}: models.{model_name}.layers")
            for layer in table["layers"]
        }
        model_kind = table.get("kind", kind)
        if model_kind not in PROFILE_KINDS:
            raise ProfileError(
                f"{where}: models.{model_name}.kind = {model_kind!r} must be one of {PROFILE_KINDS}"
            )
        t0 = _number(table, "t0", f"{where}: models.{model_name}")
        timings[model_name] = ModelTiming(t0, layers, model_kind)
    return DeviceProfile(
        name=str(device.get("name", where)),
        kind=kind,
        description=str(device.get("description", "")),
        source=str(device.get("source", "")),
        bandwidth=_number(link, "bandwidth", f"{where}: [link]", minimum=1.0),
        bandwidth_measured=bool(link.get("measured", False)),
        models=timings,
    )


@dataclass(frozen=True)
class CostModel:
    """T(M) = E * t0 + sum_l (c_comm + E * comp_l) * |M_l|, all in modelled seconds.

    ``comp`` holds comp_l for the layout's prunable tensors, in layout order.
    ``bytes_per_value`` is the marginal number of bytes one kept weight costs on
    the wire in one round (down plus up); it starts at the codec's nominal figure
    and is replaced by the measured one after every round.
    """

    local_steps: int
    t0: float
    comp: np.ndarray
    bandwidth: float
    bytes_per_value: float

    @classmethod
    def from_profile(
        cls,
        profile: DeviceProfile,
        model_name: str,
        layout: ModelLayout,
        local_steps: int,
        bandwidth: float | None,
        bytes_per_value: float,
    ) -> CostModel:
        timing = profile.timing(model_name, layout)
        comp = np.array([timing.per_weight[t.name] for t in layout.prunable], dtype=np.float64)
        return cls(local_steps, timing.t0, comp, bandwidth or profile.bandwidth, bytes_per_value)

    @property
    def comm_per_value(self) -> float:
        """c_comm: modelled seconds to send one kept weight down and up."""
        return self.bytes_per_value / self.bandwidth

    @property
    def constant(self) -> float:
        """T0 = E * t0."""
        return self.local_steps * self.t0

    def coefficients(self) -> np.ndarray:
        """c_l = c_comm + E * comp_l for every prunable layer."""
        return self.comm_per_value + self.local_steps * self.comp

    def to_config(self) -> dict[str, float | int | list[float]]:
        """The model as message-config entries (for initial pruning on a client)."""
        return {
            "cost-local-steps": self.local_steps,
            "cost-t0": self.t0,
            "cost-comp": [float(c) for c in self.comp],
            "cost-bandwidth": self.bandwidth,
            "cost-bytes-per-value": self.bytes_per_value,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object], num_layers: int) -> CostModel:
        """Inverse of :meth:`to_config`; raises ValueError on missing or bad entries."""
        try:
            comp = np.asarray(config["cost-comp"], dtype=np.float64)
            model = cls(
                int(config["cost-local-steps"]),  # type: ignore[call-overload]
                float(config["cost-t0"]),  # type: ignore[arg-type]
                comp,
                float(config["cost-bandwidth"]),  # type: ignore[arg-type]
                float(config["cost-bytes-per-value"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cost model entries missing or malformed: {exc!r}") from exc
        if comp.shape != (num_layers,) or model.bandwidth <= 0 or model.bytes_per_value <= 0:
            raise ValueError("cost model entries do not fit the model layout")
        return model

    def with_bytes_per_value(self, bytes_per_value: float) -> CostModel:
        return CostModel(self.local_steps, self.t0, self.comp, self.bandwidth, bytes_per_value)

    def compute_time(self, kept_per_layer: np.ndarray, iterations: int | None = None) -> float:
        """Modelled seconds of ``iterations`` (default E) local iterations."""
        steps = self.local_steps if iterations is None else iterations
        return steps * (self.t0 + float(np.dot(self.comp, kept_per_layer)))

    def transfer_time(self, num_bytes: float) -> float:
        """Modelled seconds to move ``num_bytes`` over the link."""
        return num_bytes / self.bandwidth

    def round_time(self, kept_per_layer: np.ndarray) -> float:
        """T(M) with the nominal communication coefficient."""
        return self.constant + float(np.dot(self.coefficients(), kept_per_layer))
