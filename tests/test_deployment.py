"""The Docker topology, run for real as local processes on 127.0.0.1.

``docker/compose.yml`` is parsed and every service's exact command is started
here (see :mod:`tests.compose_topology` for the only substitutions: addresses,
ports and mounted paths): a SuperLink with TLS and SuperNode authentication, the
ServerApp's SuperExec, three SuperNodes registered with their public keys and
their ClientApp SuperExecs. Credentials come from ``docker/certs/generate.sh`` and
the run configuration from ``docker/run-config.toml``, as in the deployment guide.

Flower polls every 3 s on both sides and starts a fresh ClientApp process per
message, so a round costs several seconds whatever the model: one run of the
small digits CNN with 2 local steps serves all tests, 3 rounds on the three
nodes, then a fourth after one of them was killed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from common.settings import flatten

from .compose_topology import LocalNetwork, executable, load_services

pytestmark = pytest.mark.deployment

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
NODES = 3
CONNECTION = "fedprune"  # the operator's: the SuperLink's own port (Control API), on 127.0.0.1
DEVICES_CONNECTION = "devices"  # what a device can reach: the Fleet gateway, on 127.0.0.2
DEVICES_SIDE = "127.0.0.2"  # stands in for the server's LAN address, 127.0.0.1 for its loopback
RUN_TIMEOUT_S = 900  # a bound for a hung run: one takes 3-7 minutes on a busy 2-core machine
ROUNDS = 4  # three with every node, then one after node 2 died
KILL_AFTER = 3


class Federation:
    """The processes of ``docker/compose.yml`` and a ``flwr`` CLI configured for them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.certs = workdir / "certs"
        self.results = workdir / "results"
        env = {
            "CERTS_DIR": str(self.certs),
            "RESULTS_DIR": str(self.results),
            "DATA_DIR": str(workdir / "data"),
            "PROFILES_DIR": str(workdir / "profiles"),
            "STATE_DIR": str(workdir / "state"),
        }
        for folder in env.values():
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.services = load_services(DOCKER / "compose.yml", env)
        self.network = LocalNetwork(self.services, hosts={"fleet-gateway": DEVICES_SIDE})
        self.processes: dict[str, subprocess.Popen] = {}
        self.cli_home = workdir / "flwr-cli"

    # -- processes -------------------------------------------------------------------
    def start(self, name: str, argv: list[str] | None = None) -> subprocess.Popen:
        """Start service ``name`` (or ``argv`` under that name) with its own FLWR_HOME."""
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        command = executable(argv if argv is not None else self.network.argv(name), BIN)
        log = (self.workdir / f"{name}.log").open("a")  # a restarted service appends
        env = {**environment(home), "FEDPRUNE_CLIENT_THREADS": "1"}
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True
        )
        return self.processes[name]

    def kill(self, name: str) -> None:
        """SIGKILL service ``name`` and its children (a device losing power)."""
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(name)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def wait_for_port(self, service: str, container_port: str, timeout: float = 60) -> None:
        port = self.network.port(service, container_port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.processes[service].poll() is None, self.log(service)[-3000:]
            try:
                socket.create_connection((self.network.host(service), port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{service} did not listen on 127.0.0.1:{port} within {timeout} s")

    # -- the flwr CLI ----------------------------------------------------------------
    def configure_cli(self) -> None:
        """The operator's SuperLink connection in the CLI's config.toml, as the guide writes it,
        and one to the address the devices reach (the Fleet gateway), for the intruder tests."""
        self.cli_home.mkdir(parents=True, exist_ok=True)
        ca = self.certs / "ca.crt"
        connections = {
            CONNECTION: self.network.address("superlink", "9093"),
            DEVICES_CONNECTION: self.network.address("fleet-gateway", "9092"),
        }
        text = f'[superlink]\ndefault = "{CONNECTION}"\n'
        for name, address in connections.items():
            text += f'\n[superlink.{name}]\naddress = "{address}"\nroot-certificates = "{ca}"\n'
        (self.cli_home / "config.toml").write_text(text, encoding="utf-8")

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = environment(self.cli_home)
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def start_run(self, name: str, **overrides: object) -> tuple[subprocess.Popen, Path]:
        """``flwr run`` with docker/run-config.toml plus ``overrides``; output.dir mapped here."""
        run_config = flatten(tomllib.loads((DOCKER / "run-config.toml").read_text(encoding="utf-8")))
        mounts = dict(self.services["serverapp"].mounts)
        run_config["output.dir"] = mounts[str(run_config["output.dir"])]
        run_config.update({"output.name": name, **overrides})
        path = self.workdir / f"{name}.toml"
        path.write_text(toml_lines(run_config), encoding="utf-8")
        env = environment(self.cli_home)
        log = (self.workdir / f"run-{name}.log").open("w")
        command = [str(BIN / "flwr"), "run", ".", CONNECTION, "--stream", "--run-config", str(path)]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return process, self.results / name

    def check_alive(self, may_die: tuple[str, ...] = ()) -> None:
        """Fail at once, with their logs, if services other than ``may_die`` have stopped."""
        dead = [n for n, p in self.processes.items() if p.poll() is not None and n not in may_die]
        if dead:
            detail = "\n".join(f"--- {n}.log\n{self.log(n)[-3000:]}" for n in dead)
            raise AssertionError(f"services {dead} stopped during the run\n{detail}")

    def finish_run(self, process: subprocess.Popen, name: str, may_die: tuple[str, ...] = ()) -> str:
        """Wait for ``flwr run`` (at most RUN_TIMEOUT_S) while every other service stays up."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while process.poll() is None:
                self.check_alive(may_die)
                assert time.monotonic() < deadline, f"the run did not end within {RUN_TIMEOUT_S} s"
                time.sleep(1)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output = (self.workdir / f"run-{name}.log").read_text(errors="replace")
        assert process.returncode == 0, output[-4000:]
        return output


def environment(flwr_home: Path) -> dict[str, str]:
    """The caller's environment with this interpreter's scripts first on PATH.

    A SuperExec launches ``flwr-serverapp`` / ``flwr-clientapp`` by name, so they
    must be found even when the tests run as ``.venv/bin/python -m pytest``
    without an activated virtual environment.
    """
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home)}


def toml_lines(flat: dict[str, object]) -> str:
    """A run-config TOML file of dotted keys (str, bool, int and float values)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    return "".join(f"{key} = {value(v)}\n" for key, v in flat.items())


def small_run(**overrides: object) -> dict[str, object]:
    """PruneFL on digits, small enough for a test; federated evaluation in the last round."""
    return {
        "federation.rounds": ROUNDS,
        "federation.connect-timeout": 120.0,
        "train.local-steps": 2,
        "evaluate.every": ROUNDS,
        "pruning.prunefl.ip-max-rounds": 20,
        "pruning.prunefl.ip-reconfig-interval": 5,
        "pruning.prunefl.reconfig-interval": 2,
        **overrides,
    }


def read_rounds(folder: Path) -> list[dict[str, str]]:
    path = folder / "rounds.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_messages(folder: Path) -> list[dict[str, str]]:
    with (folder / "communication.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def bring_up(fed: Federation) -> None:
    """Credentials, then every service of compose.yml, the nodes registered by the operator."""
    # NODES registered key pairs and one more that is never registered.
    subprocess.run(
        [str(DOCKER / "certs" / "generate.sh"), "-o", str(fed.certs), "-n", str(NODES + 1), DEVICES_SIDE],
        check=True,
        capture_output=True,
    )
    fed.start("superlink")
    fed.wait_for_port("superlink", "9093")
    fed.start("fleet-gateway")
    fed.wait_for_port("fleet-gateway", "9092")
    fed.configure_cli()
    for i in range(NODES):
        registered = fed.flwr("supernode", "register", str(fed.certs / f"node-{i}.pub"), CONNECTION)
        assert registered.returncode == 0, registered.stdout + registered.stderr
    fed.start("serverapp")
    for i in range(NODES):
        fed.start(f"supernode-{i}")
        fed.start(f"clientapp-{i}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = Federation(tmp_path_factory.mktemp("federation"))
    try:
        bring_up(fed)
        yield fed
    finally:
        fed.stop_all()


@dataclass(frozen=True)
class FinishedRun:
    output: str  # what `flwr run --stream` printed: the ServerApp's log
    folder: Path  # its results folder
    rounds: list[dict[str, str]]
    messages: list[dict[str, str]]


@pytest.fixture(scope="module")
def killed_run(federation: Federation) -> FinishedRun:
    """One run: rounds 1-3 on all three nodes; then device 2 dies; round 4 runs without it.

    Device 2's SuperNode and SuperExec are killed (SIGKILL: the device loses
    power) once round 3 is written. Flower 1.41 keeps a node online for 2
    heartbeat intervals (2 x 30 s) after its last heartbeat; then the SuperLink
    answers the message waiting for it with a "Node Unavailable" error reply,
    which ends the round without waiting for ``federation.round-timeout``, and
    marks the node offline. ``federation.min-clients = 2`` lets round 4 aggregate
    the two live nodes; the run starts once all three are online.
    """
    wait_until_online(federation, NODES)
    overrides = {"federation.min-clients": 2, "federation.round-timeout": 150.0}
    process, folder = federation.start_run("run", **small_run(**overrides))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(read_rounds(folder)) < KILL_AFTER + 1:  # rounds 0 to KILL_AFTER written
        assert process.poll() is None, (federation.workdir / "run-run.log").read_text()[-4000:]
        federation.check_alive(may_die=("intruder", "rogue-superexec"))
        assert time.monotonic() < deadline, f"round {KILL_AFTER} did not finish"
        time.sleep(0.5)
    federation.kill("supernode-2")
    federation.kill("clientapp-2")
    output = federation.finish_run(
        process, "run", may_die=("intruder", "rogue-superexec", "supernode-2", "clientapp-2")
    )
    return FinishedRun(output, folder, read_rounds(folder), read_messages(folder))


def wait_until_online(federation: Federation, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = federation.flwr("supernode", "list", CONNECTION, "--format", "json")
        if listed.returncode == 0:
            if sum(n["status"] == "online" for n in json.loads(listed.stdout)["nodes"]) >= count:
                return
        time.sleep(1)
    raise TimeoutError(f"fewer than {count} SuperNodes online after {timeout} s")


def uploads(run: FinishedRun, server_round: int) -> set[str]:
    """Partitions whose training reply of ``server_round`` reached the server."""
    return {
        m["partition_id"]
        for m in run.messages
        if m["round"] == str(server_round) and m["phase"] == "train" and m["direction"] == "up"
    }


def test_the_processes_run_the_compose_commands(federation):
    superlink = federation.network.argv("superlink")
    assert superlink[0] == "flower-superlink"
    assert "--enable-supernode-auth" in superlink and "--insecure" not in superlink
    assert superlink[superlink.index("--host") + 1] == "127.0.0.1"
    supernode = federation.network.argv("supernode-1")
    assert supernode[supernode.index("--superlink") + 1] == federation.network.address(
        "fleet-gateway", "9092"
    )
    assert supernode[supernode.index("--auth-supernode-private-key") + 1] == str(federation.certs / "node-1")
    assert "partition-id=1 num-partitions=3" in supernode[supernode.index("--node-config") + 1]


def test_the_superlink_is_not_reachable_from_the_devices_side(federation):
    """Only the Fleet gateway listens on the devices' address.

    Flower 1.41 serves the Fleet, Control and Runtime APIs on the SuperLink's one
    port, and its Control API has no authentication without Flower Enterprise,
    so that port listens on the loopback only (compose publishes it as
    127.0.0.1:9093); here the devices' side is 127.0.0.2.
    """
    superlink = federation.network.port("superlink", "9093")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((DEVICES_SIDE, superlink), timeout=5).close()
    gateway = federation.network.port("fleet-gateway", "9092")
    socket.create_connection((DEVICES_SIDE, gateway), timeout=5).close()


def test_the_gateway_forwards_no_control_or_runtime_call(federation):
    gateway = f"https://{federation.network.address('fleet-gateway', '9092')}"
    seen = len(federation.log("superlink"))
    with httpx.Client(verify=ssl.create_default_context(cafile=federation.certs / "ca.crt")) as client:
        for path in (
            "/v1/control/start-run",
            "/v1/control/register-node",
            "/v1/runtime/acquire-task",
            "/docs",
        ):
            reply = client.post(gateway + path, content=b"")
            assert reply.status_code == 404 and "only POST /v1/fleet/*" in reply.text, path
    later = federation.log("superlink")[seen:]
    assert "/v1/control/" not in later and "/v1/runtime/" not in later  # none reached the SuperLink


def test_registering_a_node_key_from_the_devices_side_is_refused(federation):
    intruder_key = str(federation.certs / f"node-{NODES}.pub")
    registered = federation.flwr("supernode", "register", intruder_key, DEVICES_CONNECTION)
    assert registered.returncode != 0, registered.stdout
    listed = federation.flwr("supernode", "list", CONNECTION, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["nodes"]) == NODES  # the operator's registrations only


def test_starting_an_app_from_the_devices_side_is_refused(federation):
    before = federation.flwr("ls", CONNECTION, "--format", "json")
    assert before.returncode == 0, before.stdout + before.stderr
    started = federation.flwr("run", ".", DEVICES_CONNECTION, "--run-config", "federation.rounds=1")
    assert started.returncode != 0, started.stdout
    after = federation.flwr("ls", CONNECTION, "--format", "json")
    assert json.loads(after.stdout)["runs"] == json.loads(before.stdout)["runs"]


def test_a_superexec_without_the_shared_secret_gets_no_task(federation):
    """The Runtime API answers a SuperExec's task requests only when signed with the secret."""
    argv = federation.network.argv("serverapp")
    flag = argv.index("--superexec-auth-secret-file")
    del argv[flag : flag + 2]
    federation.start("rogue-superexec", argv)
    deadline = time.monotonic() + 120
    while "SuperExec authentication failed" not in federation.log("superlink"):
        assert time.monotonic() < deadline, federation.log("rogue-superexec")[-3000:]
        time.sleep(0.5)
    federation.kill("rogue-superexec")


def test_an_unregistered_node_is_refused(federation):
    argv = federation.network.argv("supernode-2")
    key = argv.index("--auth-supernode-private-key") + 1
    argv[key] = str(federation.certs / f"node-{NODES}")  # a key pair nobody registered
    argv[argv.index("--port") + 1] = str(federation.network.port("intruder", "9094"))
    intruder = federation.start("intruder", argv)
    intruder.wait(timeout=120)

    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in federation.log("intruder")
    assert "No SuperNode found with the given public key" in federation.log("superlink")
    listed = federation.flwr("supernode", "list", CONNECTION, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["nodes"]) == NODES  # the registered ones only


def test_three_rounds_of_prunefl_over_tls_with_authenticated_nodes(killed_run):
    rounds = killed_run.rounds
    assert [int(r["round"]) for r in rounds] == list(range(ROUNDS + 1))
    for row in rounds[1 : KILL_AFTER + 1]:
        assert int(row["clients"]) == NODES and int(row["failures"]) == 0 and int(row["rejected"]) == 0
        assert int(row["bytes_down"]) > 0 and int(row["bytes_up"]) > 0
        assert float(row["bound_bytes"]) > 0 and int(row["dense_bytes"]) > 0
        assert uploads(killed_run, int(row["round"])) == {"0", "1", "2"}
    assert any(int(row["reconfigured"]) for row in rounds[1 : KILL_AFTER + 1])  # PruneFL's ΔR = 2
    # Initial pruning ran on node 0, with the data only the nodes hold.
    initial = json.loads((killed_run.folder / "initial_pruning.json").read_text())
    assert initial["where"] == "client" and initial["bytes_up"] > 0 and initial["density"] < 1
    summary = json.loads((killed_run.folder / "summary.json").read_text())
    assert summary["bytes_total"] == sum(int(r["bytes_down"]) + int(r["bytes_up"]) for r in rounds)
    assert f"fedprune: prunefl on digits, {ROUNDS} rounds" in killed_run.output


def test_a_killed_supernode_does_not_stop_the_run(killed_run, federation):
    last = killed_run.rounds[-1]  # round 4: the dead node counted as failed, the others aggregated
    assert (int(last["clients"]), int(last["failures"])) == (NODES, 1)
    assert int(last["bytes_up"]) > 0 and last["train_loss"] != ""
    assert uploads(killed_run, ROUNDS) == {"0", "1"}
    assert 0 < float(last["accuracy"]) <= 1  # evaluated by the live nodes
    assert "Node Unavailable" in killed_run.output
    listed = federation.flwr("supernode", "list", CONNECTION, "--format", "json")
    statuses = sorted(n["status"] for n in json.loads(listed.stdout)["nodes"])
    assert statuses == ["offline", "online", "online"]
