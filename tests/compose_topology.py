"""The commands of a compose file, run as local processes on 127.0.0.1.

No Docker engine runs on the development and CI machines, so the deployment
tests start the exact commands of ``docker/compose.yml`` (entrypoint plus
command of every service, after compose's variable interpolation) as processes
of this machine. What a container network provides is replaced explicitly:

* a service name in ``host:port`` becomes ``127.0.0.1:<a free local port>``,
  one port per (service, container port), so that three SuperNodes that all
  listen on 9094 in their own containers get three ports here;
* ``--port N`` of a service becomes that service's local port for N, and
  ``--host 0.0.0.0`` becomes ``--host 127.0.0.1`` (nothing listens beyond loopback),
  or the loopback address the caller gives that service (``hosts``: e.g. the
  devices' side of the server on 127.0.0.2, its operator side on 127.0.0.1);
* a container path of a bind mount becomes the host path it is mounted from
  (the service's own mount, else the one host path all services mount there).

Nothing else of a command is changed.
"""

from __future__ import annotations

import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]+)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?$", re.S)


class ComposeError(ValueError):
    """A compose file this helper cannot interpret; the message says what."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}`` and ``$$`` for ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        braced = _BRACED.match(match.group("braced"))
        if braced is None:
            raise ComposeError(f"cannot interpolate {match.group(0)!r}")
        name, op, arg = braced.group("name", "op", "arg")
        if arg and "${" in arg:
            raise ComposeError(f"nested interpolation is not supported: {match.group(0)!r}...")
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return arg if missing else str(value)
        if op in ("?", ":?"):
            if missing:
                raise ComposeError(f"required variable {name} is missing: {arg}")
            return str(value)
        return "" if value is None else value

    return _VARIABLE.sub(replace, text)


@dataclass(frozen=True)
class Service:
    """One service of a compose file: its full command line and its bind mounts."""

    name: str
    argv: tuple[str, ...]  # entrypoint followed by command
    mounts: tuple[tuple[str, str], ...]  # (container path, host path)
    depends_on: tuple[str, ...]


def _words(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v) for v in value]
    raise ComposeError(f"{where} must be a string or a list of strings, not {value!r}")


def _mounts(volumes: object, base: Path, env: Mapping[str, str], where: str) -> list[tuple[str, str]]:
    mounts = []
    for entry in volumes or []:  # type: ignore[attr-defined]
        if not isinstance(entry, str):
            raise ComposeError(f"{where}: only the short volume syntax is supported, not {entry!r}")
        source, _, rest = interpolate(entry, env).partition(":")
        target = rest.split(":")[0]
        if source.startswith((".", "/", "~")):  # a bind mount (a bare name is a named volume)
            mounts.append((target, str((base / Path(source).expanduser()).resolve())))
    return mounts


def load_services(path: Path, env: Mapping[str, str]) -> dict[str, Service]:
    """The services of compose file ``path``, interpolated with ``env``."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise ComposeError(f"{path} has no services table")
    services = {}
    for name, spec in document["services"].items():
        where = f"{path.name}: services.{name}"
        words = _words(spec.get("entrypoint"), f"{where}.entrypoint")
        words += _words(spec.get("command"), f"{where}.command")
        if not words:
            raise ComposeError(f"{where} has neither entrypoint nor command")
        depends = spec.get("depends_on") or []
        services[name] = Service(
            name=name,
            argv=tuple(interpolate(word, env) for word in words),
            mounts=tuple(_mounts(spec.get("volumes"), path.parent, env, where)),
            depends_on=tuple(depends if isinstance(depends, list) else list(depends)),
        )
    return services


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalNetwork:
    """Stands in for the compose network: every (service, container port) gets a local port."""

    def __init__(self, services: Mapping[str, Service], hosts: Mapping[str, str] | None = None) -> None:
        self.services = services
        self.hosts = dict(hosts or {})
        for service, host in self.hosts.items():
            if not host.startswith("127."):
                raise ComposeError(f"{service}: {host} is not a loopback address")
        self.ports: dict[tuple[str, str], int] = {}

    def host(self, service: str) -> str:
        """The loopback address service ``service`` listens on here."""
        return self.hosts.get(service, "127.0.0.1")

    def port(self, service: str, container_port: str) -> int:
        key = (service, container_port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def address(self, service: str, container_port: str) -> str:
        return f"{self.host(service)}:{self.port(service, container_port)}"

    def _mounts_seen_by(self, name: str) -> dict[str, str]:
        """Container path -> host path: the service's own mounts, and those every
        service that mounts the path mounts from the same host path (a SuperNode
        passes ``data-dir`` to the ClientApp, whose container mounts the data)."""
        shared: dict[str, set[str]] = {}
        for other in self.services.values():
            for container, host in other.mounts:
                shared.setdefault(container, set()).add(host)
        seen = {container: hosts.pop() for container, hosts in shared.items() if len(hosts) == 1}
        seen.update(dict(self.services[name].mounts))
        return seen

    def argv(self, name: str) -> list[str]:
        """Service ``name``'s command as it runs here."""
        service = self.services[name]
        mounts = sorted(self._mounts_seen_by(name).items(), key=lambda m: len(m[0]), reverse=True)
        argv: list[str] = []
        previous = ""
        for word in service.argv:
            if previous == "--port":
                word = str(self.port(name, word))
            elif previous == "--host" and word == "0.0.0.0":
                word = self.host(name)
            else:
                host, sep, port = word.rpartition(":")
                if sep and host in self.services and port.isdigit():
                    word = self.address(host, port)
                for container, host_path in mounts:
                    word = word.replace(container, host_path)
            argv.append(word)
            previous = service.argv[len(argv) - 1]
        return argv


def executable(argv: list[str], bin_dir: Path) -> list[str]:
    """``argv`` with its program taken from ``bin_dir`` (the test's virtual environment)."""
    program = bin_dir / argv[0]
    if not program.exists():
        raise ComposeError(f"{argv[0]} is not installed in {bin_dir}")
    return [str(program), *argv[1:]]
