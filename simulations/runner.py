"""Running the app on Flower's simulation engine (Ray backend) in this process."""

from __future__ import annotations

import logging
import os

from flwr.simulation import run_simulation

from client.app import THREADS_ENV
from client.app import app as client_app
from common.config import AppConfig
from server.app import RunSummary, build_server_app
from server.checkpoint import Checkpoint
from server.progress import RunProgress


class SimulationError(RuntimeError):
    """The simulation ended without a summary; the log above says why."""


def simulate(
    config: AppConfig,
    resume: Checkpoint | None = None,
    progress: RunProgress | None = None,
    verbose: bool = True,
) -> RunSummary:
    """Run ``config`` with ``simulation.num-clients`` virtual SuperNodes on Ray.

    With ``resume``, continue the run of ``config``'s results folder after that checkpoint;
    ``progress`` is told where the run stands by the ServerApp (in this process);
    without ``verbose``, the log of Ray's worker processes (the ClientApps') is not
    forwarded here (a ClientApp's failure still reaches the server as an error reply,
    which it logs).

    ``run_simulation`` (Flower's in-process entry point to the simulation engine)
    is used rather than ``flwr run`` so that the resolved configuration, presets and
    ``--set`` overrides included, is bound to the ServerApp directly; the ClientApp
    takes everything it needs from the messages and its node config.
    """
    os.environ[THREADS_ENV] = str(config.simulation.client_threads)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    summaries: list[RunSummary] = []
    server_app = build_server_app(config, on_finish=summaries.append, resume=resume, progress=progress)
    backend_config = {
        "client_resources": {"num_cpus": config.simulation.client_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": verbose},
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=config.simulation.num_clients,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    if not summaries:
        raise SimulationError("the simulation ended before the ServerApp finished; see the log above")
    return summaries[0]
