"""Resume in a deployment: the SuperLink and the ServerApp die mid-run, restart, and the run continues.

The processes of ``docker/compose.yml`` run on 127.0.0.1 as in
:mod:`tests.test_deployment`. One run goes through uninterrupted; a second,
identical run is killed (SIGKILL to the SuperLink and to the ServerApp's
SuperExec with its ``flwr-serverapp``: the server machine losing power) after
its checkpoint of round 2; both services are started again with the same
commands, the SuperLink on the same ``--database`` file, and the operator starts
the same run configuration with ``output.resume`` naming the killed run's
results folder. The resumed run must end with the uninterrupted run's final
model and mask, bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import checkpoint_rounds

from .test_deployment import (
    NODES,
    RUN_TIMEOUT_S,
    Federation,
    federation,  # noqa: F401 - the same module-scoped fixture as there
    read_rounds,
    small_run,
    wait_until_online,
)

pytestmark = [pytest.mark.deployment, pytest.mark.long]

KILL_AFTER_CHECKPOINT = 2
SETTINGS = small_run(**{"output.checkpoint-every": KILL_AFTER_CHECKPOINT})
SERVER_SIDE = ("superlink", "serverapp")
DEVICES = tuple(f"{kind}-{i}" for i in range(NODES) for kind in ("supernode", "clientapp"))


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def restart_what_died(fed: Federation, names: tuple[str, ...]) -> None:
    """Start again the services among ``names`` that stopped, as compose's ``restart: unless-stopped``."""
    for name in names:
        if fed.processes[name].poll() is not None:
            fed.start(name)


def test_a_run_killed_with_its_superlink_resumes_to_the_same_final_model(federation):  # noqa: F811
    wait_until_online(federation, NODES)
    reference, reference_folder = federation.start_run("reference", **SETTINGS)
    federation.finish_run(reference, "reference")

    killed, folder = federation.start_run("killed", **SETTINGS)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while KILL_AFTER_CHECKPOINT not in checkpoint_rounds(folder):
        assert killed.poll() is None, (federation.workdir / "run-killed.log").read_text()[-4000:]
        federation.check_alive()
        assert time.monotonic() < deadline, f"no checkpoint of round {KILL_AFTER_CHECKPOINT}"
        time.sleep(0.2)
    for name in SERVER_SIDE:
        federation.kill(name)  # the process group: the SuperExec's flwr-serverapp too
    killed.kill()
    killed.wait()
    written = len(read_rounds(folder)) - 1
    assert KILL_AFTER_CHECKPOINT <= written < SETTINGS["federation.rounds"]  # it died mid-run

    # The same commands again; the nodes are still registered (the SuperLink's database).
    federation.start("superlink")
    federation.wait_for_port("superlink", "9093")
    federation.start("serverapp")
    deadline = time.monotonic() + 180
    while True:
        restart_what_died(federation, DEVICES)
        try:
            wait_until_online(federation, NODES, timeout=10)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, (
                "the SuperNodes did not come back after the SuperLink restarted"
            )
    resumed, _ = federation.start_run("resumed", **SETTINGS, **{"output.resume": str(folder)})
    output = federation.finish_run(resumed, "resumed", may_die=DEVICES)

    assert f"resuming after round {KILL_AFTER_CHECKPOINT}" in output
    for name in ("model.npz", "mask.npz"):
        first, second = arrays(reference_folder / name), arrays(folder / name)
        assert first.keys() == second.keys()
        for key in first:
            assert np.array_equal(first[key], second[key]), (name, key)
    ref_rows, rows = read_rounds(reference_folder), read_rounds(folder)
    assert [r["round"] for r in rows] == [str(r) for r in range(SETTINGS["federation.rounds"] + 1)]
    for key in ("loss", "train_loss", "density", "accuracy", "clients", "values_up"):
        assert [r[key] for r in rows] == [r[key] for r in ref_rows], key
    assert not (federation.results / "resumed").exists()  # it wrote into the killed run's folder
