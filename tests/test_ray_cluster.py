"""A simulation attached to a running two-node Ray cluster on 127.0.0.1.

The cluster is real: a head and a second node started with ``ray start``, each with
one CPU, in a temporary folder of their own (so that no other Ray program on this
machine finds them), and stopped at the end by this test through the process ids
of the two ``ray start --block`` processes it started. The simulation is
``fedprune simulate`` with ``simulation.ray-address`` set; which node ran each
ClientApp actor is read from the process tree (a Ray worker descends from its
node's ``ray start``), not from anything fedprune reports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc"),
]

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the command name's ")"


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def root_among(pid: int, roots: set[int]) -> int | None:
    """The ancestor of ``pid`` in ``roots``, if any."""
    seen = 0
    while pid and seen < 64:
        if pid in roots:
            return pid
        pid = parent_of(pid) or 0
        seen += 1
    return None


def actors_by_node(roots: set[int]) -> dict[int, int]:
    """ClientApp actor processes running now, counted by the ``ray start`` they descend from."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and "ClientAppActor" in command_of(int(entry.name)):
            root = root_among(int(entry.name), roots)
            if root is not None:
                found[root] = found.get(root, 0) + 1
    return found


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a ``ray start --block`` and every process of its session, by its process id."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what the node left behind in its session
    except ProcessLookupError:
        pass


WAIT_FOR_NODES = """
import sys, time
import ray
ray.init(address=sys.argv[1])
wanted, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while sum(n["Alive"] for n in ray.nodes()) < wanted and time.monotonic() < deadline:
    time.sleep(0.5)
print(sum(n["Alive"] for n in ray.nodes()))
"""


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def fail_with_log(temp: str, name: str, what: str) -> None:
    text = (Path(temp) / f"{name}.log").read_text(errors="replace")
    pytest.fail(f"{what}:\n{text[-3000:]}")


@pytest.fixture
def two_node_cluster() -> Iterator[tuple[str, dict[str, int], dict[str, str]]]:
    temp = tempfile.mkdtemp(prefix="fpray", dir="/tmp")  # short: Ray's socket paths live in it
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    common = [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        "--disable-usage-stats",
    ]
    logs = []
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in (
            ("head", ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]),
            ("second", [f"--address={address}"]),
        ):
            log = open(Path(temp) / f"{name}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            processes[name] = subprocess.Popen(
                [str(RAY), "start", *argv, *common],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while name == "head" and not port_open(port):
                if processes["head"].poll() is not None or time.monotonic() > deadline:
                    fail_with_log(temp, "head", "the head node did not start")
                time.sleep(0.2)
        waited = subprocess.run(
            [sys.executable, "-c", WAIT_FOR_NODES, address, "2", str(START_TIMEOUT_S)],
            capture_output=True,
            text=True,
            env=env,
            timeout=START_TIMEOUT_S + 60,
        )
        if waited.returncode != 0 or waited.stdout.strip().splitlines()[-1:] != ["2"]:
            found = f"{waited.stdout}{waited.stderr}"
            fail_with_log(temp, "second", f"the cluster did not reach 2 nodes ({found})")
        yield address, {name: p.pid for name, p in processes.items()}, env
    finally:
        for process in reversed(list(processes.values())):
            stop(process)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_simulation_attached_to_a_running_cluster_runs_clients_on_both_nodes(two_node_cluster, tmp_path):
    address, pids, env = two_node_cluster
    roots = set(pids.values())
    command = [
        sys.executable, "-m", "simulations.cli", "simulate",
        "--set", f"simulation.ray-address={address}",
        "--set", "simulation.num-clients=4",
        "--set", "federation.rounds=2",
        "--set", "pruning.method=magnitude",
        "--set", f"output.dir={tmp_path}",
    ]  # fmt: skip
    run = subprocess.Popen(
        command, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen: dict[int, int] = {}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while run.poll() is None and time.monotonic() < deadline:
        for root, count in actors_by_node(roots).items():
            seen[root] = max(seen.get(root, 0), count)
        time.sleep(0.2)
    if run.poll() is None:
        run.kill()
    output = run.communicate()[0].decode(errors="replace")
    assert run.returncode == 0, output[-4000:]
    summaries = list(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 1, output[-2000:]
    summary = json.loads(summaries[0].read_text())
    assert summary["rounds"] == 2 and summary["method"] == "magnitude"
    by_name = {name: seen.get(pid, 0) for name, pid in pids.items()}
    assert by_name["head"] >= 1 and by_name["second"] >= 1, f"ClientApp actors per node: {by_name}"
