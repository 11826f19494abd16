"""Which torch device a process trains and evaluates on (``train.device``).

``auto`` takes the first CUDA device when one is visible and the CPU otherwise;
``cpu``, ``cuda``, ``cuda:N`` and ``mps`` ask for one explicitly and fail with one
clear line when this machine has no such device. The spelling is checked when the
configuration is parsed (:func:`check_device_spec`), availability where the model
is built (:func:`resolve_device`): in a deployment the server and every node
resolve ``auto`` on their own hardware, so a Jetson trains on its GPU while the
server that sent the task has none. A node may also override the run's choice with
its own ``--node-config device=...``.

What stays on the CPU whatever the device: the wire (numpy arrays), masks,
importance sums once a round's training has ended, aggregation, and checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .settings import ConfigError

DEVICE_SPECS = ("auto", "cpu", "cuda", "cuda:N", "mps")
_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def check_device_spec(spec: str) -> bool:
    """True when ``spec`` is spelled as one of :data:`DEVICE_SPECS`."""
    return bool(_SPEC.match(spec))


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str, key: str = "train.device", what: str = "config key") -> torch.device:
    """The device ``spec`` names on this machine.

    A spelling outside :data:`DEVICE_SPECS`, or a device this machine lacks, raises
    :class:`~common.settings.ConfigError` naming ``key`` (``train.device``, or a
    node's ``device`` node-config key).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if not check_device_spec(spec):
        raise ConfigError(key, spec, "one of " + ", ".join(DEVICE_SPECS), what)
    if spec == "auto":
        return torch.device("cuda") if cuda_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps_available():
            raise ConfigError(
                key, spec, "a device this machine has: it has no Apple GPU (use auto or cpu)", what
            )
        return torch.device("mps")
    if not cuda_available():
        raise ConfigError(
            key,
            spec,
            f"a device this machine has: torch {torch.__version__} sees no CUDA device here "
            "(a CPU-only wheel, or no GPU; use auto or cpu)",
            what,
        )
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            key, spec, f"a device this machine has: it has {torch.cuda.device_count()} CUDA device(s)", what
        )
    return device


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200)``, for logs and reports."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op CPU threads, then restore the previous number.

    A simulation's server shares the machine's cores with its ClientApps (one per
    ``simulation.client-cpus``); with more threads than it can have to itself, torch's
    pool waits on threads the scheduler has given to another process, and a step
    slows several-fold (server-side initial pruning of LeNet-5 under a loaded 2-core
    machine: 11 s with one thread, 84 s with two).
    """
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
