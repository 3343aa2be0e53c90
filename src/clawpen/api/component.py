"""The daemon component that serves the API: uvicorn inside the daemon's own event loop.

The listening socket is bound here (not by uvicorn, which would ``sys.exit`` the daemon when the
port is taken): a port in use is an event and a line in the daemon's log, and the bots stay
supervised. The URL goes to ``<state>/api.json`` for ``clawpen dashboard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import socket
import sys
from collections.abc import Generator
from pathlib import Path

import uvicorn

from clawpen.api.config import ApiConfig, config_from_env
from clawpen.daemon.server import Daemon
from clawpen.errors import ClawpenError
from clawpen.fsutil import write_atomic

START_TIMEOUT = 10.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def url_file(state: Path) -> Path:
    return state / "api.json"


def bind(config: ApiConfig) -> socket.socket:
    """A bound, listening TCP socket for ``config`` (OSError when the address is taken)."""
    family, kind, proto, _name, addr = socket.getaddrinfo(
        config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ApiComponent:
    name = "api"

    def __init__(self, state: Path) -> None:
        self.state = state
        self.server: _Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.url: str | None = None

    async def start(self, daemon: Daemon) -> None:
        try:
            config = config_from_env()
        except ClawpenError as err:  # `clawpen daemon` checks this first; the env may still be wrong
            self._report(daemon, f"the HTTP API is off: {err}")
            return
        if config is None:
            return
        try:
            sock = bind(config)
        except OSError as err:
            self._report(daemon, f"the HTTP API could not listen on {config.url()}: {err.strerror or err}")
            return
        # FastAPI's import takes ~0.2 s: in a thread, so the socket answers the CLI meanwhile
        try:
            app_module = await asyncio.to_thread(importlib.import_module, "clawpen.api.app")
        except ImportError as err:
            sock.close()
            self._report(daemon, f"the HTTP API is off: {err} (install clawpen's dependencies)")
            return
        uv = uvicorn.Config(
            app_module.create_app(daemon),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
        )
        self.server = _Server(uv)
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        waited = 0.0
        while not self.server.started and not self.task.done() and waited < START_TIMEOUT:
            await asyncio.sleep(0.01)
            waited += 0.01
        if not self.server.started:
            sock.close()
            self._report(daemon, f"the HTTP API did not start on {config.url()}")
            return
        self.url = config.url(sock.getsockname()[1])
        write_atomic(url_file(self.state), json.dumps({"url": self.url}).encode(), mode=0o600)
        daemon.note("api", f"API and dashboard on {self.url}")
        print(f"clawpen daemon: API and dashboard on {self.url}", file=sys.stderr, flush=True)

    def _report(self, daemon: Daemon, text: str) -> None:
        daemon.note("api", text)
        print(f"clawpen daemon: {text}", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            url_file(self.state).unlink()
        if self.server is None or self.task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, 10)
        except TimeoutError:
            self.task.cancel()
