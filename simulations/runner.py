"""Running the app on Flower's simulation engine (Ray backend) in this process."""

from __future__ import annotations

import logging
import os

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from client.app import DEVICE_ENV, THREADS_ENV
from client.app import app as client_app
from common.config import AppConfig, SimulationSettings
from common.device import cpu_threads
from server.app import RunSummary, build_server_app
from server.checkpoint import Checkpoint
from server.progress import RunProgress


class SimulationError(RuntimeError):
    """The simulation ended without a summary; the log above says why."""


def backend_config(settings: SimulationSettings, verbose: bool = True) -> dict[str, object]:
    """Flower's Ray backend configuration: each client's resources and ``ray.init``'s arguments.

    Flower's actor pool places one ClientApp actor per ``client_resources`` that the
    cluster can hold, on whichever nodes have them, so a cluster of several nodes
    runs clients on all of them; a fractional ``num_gpus`` lets clients share a GPU.
    With an address, ``ray.init`` attaches to that running cluster instead of
    starting one on this machine. Without ``verbose`` the ClientApps' log stays in Ray's
    worker processes.
    """
    init_args: dict[str, object] = {"logging_level": logging.ERROR, "log_to_driver": verbose}
    address = settings.cluster_address()
    if address:
        init_args["address"] = address
    return {
        "client_resources": {"num_cpus": settings.client_cpus, "num_gpus": settings.client_gpus},
        "init_args": init_args,
    }


def simulate(
    config: AppConfig,
    resume: Checkpoint | None = None,
    progress: RunProgress | None = None,
    verbose: bool = True,
    client: ClientApp = client_app,
) -> RunSummary:
    """Run ``config`` with ``simulation.num-clients`` virtual SuperNodes on Ray.

    With ``resume``, continue the run of ``config``'s results folder after that checkpoint;
    ``progress`` is told where the run stands by the ServerApp (in this process);
    without ``verbose``, the log of Ray's worker processes (the ClientApps') is not
    forwarded here (a ClientApp's failure still reaches the server as an error reply,
    which it logs).
    ``client`` replaces the ClientApp (a benchmark's hostile one, :mod:`simulations.hostile`).
    The ServerApp (initial pruning on the server, test-set evaluation) runs with
    ``federation.server-threads`` torch threads, by default as many as one client
    (``simulation.client-threads``): it shares the machine with them
    (:func:`common.device.cpu_threads`).

    ``run_simulation`` (Flower's in-process entry point to the simulation engine)
    is used rather than ``flwr run`` so that the resolved configuration, presets and
    ``--set`` overrides included, is bound to the ServerApp directly; the ClientApp
    takes everything it needs from the messages and its node config.
    """
    os.environ[THREADS_ENV] = str(config.simulation.client_threads)
    os.environ[DEVICE_ENV] = config.train.device
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    summaries: list[RunSummary] = []
    server_app = build_server_app(config, on_finish=summaries.append, resume=resume, progress=progress)
    with cpu_threads(config.federation.server_threads or config.simulation.client_threads):
        run_simulation(
            server_app=server_app,
            client_app=client,
            num_supernodes=config.simulation.num_clients,
            backend_config=backend_config(config.simulation, verbose),  # type: ignore[arg-type]
        )
    if not summaries:
        raise SimulationError("the simulation ended before the ServerApp finished; see the log above")
    return summaries[0]
