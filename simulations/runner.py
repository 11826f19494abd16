"""Running the app on Flower's simulation engine (Ray backend) in this process."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from client.app import THREADS_ENV
from client.app import app as client_app
from common.config import AppConfig
from server.app import RunSummary, build_server_app
from server.checkpoint import Checkpoint
from server.results import RoundRow


class SimulationError(RuntimeError):
    """The simulation ended without a summary; the log above says why."""


def simulate(
    config: AppConfig,
    resume: Checkpoint | None = None,
    on_round: Callable[[RoundRow], None] | None = None,
    client: ClientApp = client_app,
) -> RunSummary:
    """Run ``config`` with ``simulation.num-clients`` virtual SuperNodes on Ray.

    With ``resume``, continue the run of ``config``'s results folder after that checkpoint;
    ``on_round`` receives every round's row as the ServerApp (in this process) writes it;
    ``client`` replaces the ClientApp (a benchmark's hostile one, :mod:`simulations.hostile`).

    ``run_simulation`` (Flower's in-process entry point to the simulation engine)
    is used rather than ``flwr run`` so that the resolved configuration, presets and
    ``--set`` overrides included, is bound to the ServerApp directly; the ClientApp
    takes everything it needs from the messages and its node config.
    """
    os.environ[THREADS_ENV] = str(config.simulation.client_threads)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    summaries: list[RunSummary] = []
    server_app = build_server_app(config, on_finish=summaries.append, resume=resume, on_round=on_round)
    backend_config = {
        "client_resources": {"num_cpus": config.simulation.client_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": True},
    }
    run_simulation(
        server_app=server_app,
        client_app=client,
        num_supernodes=config.simulation.num_clients,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    if not summaries:
        raise SimulationError("the simulation ended before the ServerApp finished; see the log above")
    return summaries[0]
