"""The daemon component that serves the API: uvicorn inside the daemon's own event loop.

The listening socket is bound here (not by uvicorn, which would ``sys.exit`` the daemon when the
port is taken): a port in use is an event and a line in the daemon's log, and the bots stay
supervised. The URL goes to ``<state>/api.json`` for ``clawpen dashboard``.

Idle costs nothing: FastAPI, Starlette and uvicorn (about 10 MB and 0.3 s of imports) are
imported when the first connection arrives (the bound socket is watched by the event loop until
then; that connection waits for the import and is then served), and the server has no timer
(uvicorn's own main loop wakes ten times a second to refresh its ``Date`` header and look at
``should_exit``: here the header is made when a response asks for it and the exit is an event).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import socket
import sys
import time
from collections.abc import Generator
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawpen.api.config import ApiConfig, config_from_env
from clawpen.errors import ClawpenError
from clawpen.fsutil import write_atomic

if TYPE_CHECKING:
    from clawpen.daemon.server import Daemon

START_TIMEOUT = 10.0


class _FreshHeaders:
    """uvicorn's ``ServerState.default_headers`` made when a response reads them: the ``Date``
    header of this second, with no timer to refresh it."""

    def __init__(self, config: Any) -> None:
        self.config = config  # uvicorn's Config: its headers are known once it is loaded
        self._second = -1
        self._date: list[tuple[bytes, bytes]] = []

    def __get__(self, _obj: object, _owner: type | None = None) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = [(b"date", formatdate(now, usegmt=True).encode())]
        extra = list(getattr(self.config, "encoded_headers", []))
        return (self._date if self.config.date_header else []) + extra

    def __set__(self, _obj: object, _value: object) -> None:
        """uvicorn's ``ServerState()`` sets ``[]``: the headers stay made on demand."""


def _server_class() -> type[Any]:
    """uvicorn's Server without its signal handlers (the daemon owns SIGTERM and SIGINT) and
    without its 0.1 s tick (imported here: on the API's first use)."""
    import uvicorn
    from uvicorn.server import ServerState

    class _Server(uvicorn.Server):
        def __init__(self, config: uvicorn.Config) -> None:
            self._exit = asyncio.Event()
            super().__init__(config)
            headers = _FreshHeaders(config)

            class _State(ServerState):
                default_headers = headers

            self.server_state = _State()

        @property
        def should_exit(self) -> bool:
            return self._exit.is_set()

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            if value:
                self._exit.set()
            else:
                self._exit.clear()

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

        async def main_loop(self) -> None:
            await self._exit.wait()  # no request limit, no notify callback: nothing to tick for

    return _Server


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
        self.server: Any = None  # the uvicorn server, once the first connection started it
        self.task: asyncio.Task[None] | None = None
        self.url: str | None = None
        self.sock: socket.socket | None = None
        self._daemon: Daemon | None = None
        self._config: ApiConfig | None = None
        self._starting: asyncio.Task[None] | None = None

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
        self._daemon, self._config, self.sock = daemon, config, sock
        self.url = config.url(sock.getsockname()[1])
        asyncio.get_running_loop().add_reader(sock.fileno(), self._first_use)
        write_atomic(url_file(self.state), json.dumps({"url": self.url}).encode(), mode=0o600)
        daemon.note("api", f"API and dashboard on {self.url}")
        print(f"clawpen daemon: API and dashboard on {self.url}", file=sys.stderr, flush=True)

    def _first_use(self) -> None:
        """A connection waits on the listening socket: import and start the server (once)."""
        if self.sock is None or self._starting is not None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.sock.fileno())
        self._starting = loop.create_task(self.serve(), name="api-start")

    async def serve(self) -> None:
        """Import FastAPI and uvicorn (in a thread: the socket answers the CLI meanwhile) and
        serve the bound socket; a failure is an event, and the socket is closed."""
        daemon, config, sock = self._daemon, self._config, self.sock
        if daemon is None or config is None or sock is None or self.server is not None:
            return
        try:
            uvicorn = await asyncio.to_thread(importlib.import_module, "uvicorn")
            app_module = await asyncio.to_thread(importlib.import_module, "clawpen.api.app")
        except ImportError as err:
            self._close(daemon, f"the HTTP API is off: {err} (install clawpen's dependencies)")
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
        self.server = _server_class()(uv)
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        waited = 0.0
        while not self.server.started and not self.task.done() and waited < START_TIMEOUT:
            await asyncio.sleep(0.01)
            waited += 0.01
        if not self.server.started:
            self._close(daemon, f"the HTTP API did not start on {config.url()}")

    def _close(self, daemon: Daemon, text: str) -> None:
        if self.sock is not None:
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            url_file(self.state).unlink()
        self._report(daemon, text)

    def _report(self, daemon: Daemon, text: str) -> None:
        daemon.note("api", text)
        print(f"clawpen daemon: {text}", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            url_file(self.state).unlink()
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(Exception):
                await self._starting
        if self.server is None or self.task is None:
            if self.sock is not None:
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_reader(self.sock.fileno())
                self.sock.close()
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, 10)
        except TimeoutError:
            self.task.cancel()
