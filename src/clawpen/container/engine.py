"""Which container engine runs container bots, and a Docker SDK client to it.

Docker Engine and Podman both speak Docker's API (Podman through ``podman system service``), so
one client library serves both; only the socket differs. Nothing here starts an engine: a host's
engine is the host's (``clawpen doctor`` says when none answers).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, NamedTuple

from clawpen.errors import HostError

if TYPE_CHECKING:
    import docker

EngineName = Literal["docker", "podman"]

DOCKER_SOCKET = "/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"
SOCKETS: dict[EngineName, str] = {"docker": DOCKER_SOCKET, "podman": PODMAN_SOCKET}
# Where a host's engine listens elsewhere (rootless Podman: $XDG_RUNTIME_DIR/podman/podman.sock):
# the variable each engine's own client reads, when it names a unix socket.
HOST_VARS: dict[EngineName, str] = {"docker": "DOCKER_HOST", "podman": "CONTAINER_HOST"}
HINTS: dict[EngineName, str] = {
    "docker": "start Docker Engine (systemctl start docker, or dockerd) — Debian's package is docker.io",
    "podman": "start Podman's API service: podman system service --time=0 unix:///run/podman/podman.sock",
}


class Engine(NamedTuple):
    """An engine clawpen can reach: its name and the API socket."""

    name: EngineName
    socket: str


def socket_of(name: EngineName) -> str:
    """The engine's API socket: ``DOCKER_HOST`` / ``CONTAINER_HOST`` when it is ``unix://PATH``,
    else the rootful default."""
    value = os.environ.get(HOST_VARS[name], "")
    return value.removeprefix("unix://") if value.startswith("unix:///") else SOCKETS[name]


def detect(wanted: Literal["auto", "docker", "podman"] = "auto") -> Engine:
    """The engine ``wanted`` names, or with ``auto`` the first whose socket exists (Docker
    first); HostError naming how to start one when none is there."""
    names: tuple[EngineName, ...] = ("docker", "podman") if wanted == "auto" else (wanted,)
    for name in names:
        if os.path.exists(socket_of(name)):
            return Engine(name, socket_of(name))
    raise HostError(
        "no container engine is running" if wanted == "auto" else f"the {wanted} engine is not running",
        where="container engine",
        hint="; or ".join(HINTS[n] for n in names),
    )


def client(engine: Engine, *, timeout: float = 60.0) -> docker.DockerClient:
    """A Docker SDK client to ``engine``; HostError when it does not answer."""
    import docker
    import docker.errors

    try:
        api = docker.DockerClient(base_url=f"unix://{engine.socket}", timeout=int(timeout))
        api.ping()
    except (docker.errors.DockerException, OSError) as err:
        raise HostError(
            f"the {engine.name} engine at {engine.socket} does not answer: {err}",
            where="container engine",
            hint=HINTS[engine.name],
        ) from None
    return api
