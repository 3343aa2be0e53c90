"""The CLI's side of the daemon: connect (starting the daemon when it is not running), call."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clawpen.daemon import rpc
from clawpen.errors import HostError

START_TIMEOUT = 15.0


class Client:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.path = state / "clawpen.sock"

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        return sock

    def ensure_daemon(self, *, quiet: bool = False) -> None:
        """Start the daemon in the background if nothing answers on the socket."""
        if os.geteuid() != 0:
            raise HostError(
                "the daemon's commands need root: its socket is root's alone",
                where=str(self.path),
                hint="run clawpen as root (sudo clawpen ...)",
            )
        try:
            self.call("ping", autostart=False)
            return
        except rpc.RemoteError:
            return  # it answered (perhaps refusing our token): it runs
        except OSError:
            pass
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = self.state / "daemon.log"
        with open(log, "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "clawpen", "daemon"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env={**os.environ, "CLAWPEN_HOME": str(self.state)},
                cwd="/",
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.call("ping", autostart=False)
                if not quiet:
                    print(f"clawpen: started the daemon (log: {log})", file=sys.stderr)
                return
            except OSError:
                time.sleep(0.05)
        raise HostError(
            f"the daemon did not start within {START_TIMEOUT:g} s",
            where=str(log),
            hint=f"read {log}, or run `clawpen daemon` in the foreground to see why",
        )

    @staticmethod
    def _request(op: str, args: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {"op": op, "args": args}
        token = os.environ.get("CLAWPEN_TOKEN")
        if token:
            request["token"] = token
        return request

    def _open(self, autostart: bool) -> socket.socket:
        """A connection to the daemon; when none answers and ``autostart``, start it first."""
        try:
            return self._connect()
        except OSError:
            if not autostart:
                raise
        self.ensure_daemon()
        return self._connect()

    def call(self, op: str, autostart: bool = True, **args: Any) -> Any:
        with self._open(autostart) as sock:
            sock.sendall(rpc.encode(self._request(op, args)))
            with sock.makefile("rb") as stream:
                line = stream.readline(rpc.MAX_LINE)
        if not line:
            raise HostError("the daemon closed the connection", where=str(self.path))
        return rpc.raise_for(json.loads(line))

    def _exchange(self, op: str, args: dict[str, Any]) -> Iterator[tuple[bool, Any]]:
        """Send one request; yield ``(True, item)`` for each item the daemon streams, then
        ``(False, result)`` for its final reply (raising a RemoteError it carries)."""
        with self._open(autostart=True) as sock:
            sock.sendall(rpc.encode(self._request(op, args)))
            with sock.makefile("rb") as stream:
                for line in stream:
                    reply = json.loads(line)
                    if "item" in reply:
                        yield True, reply["item"]
                    else:
                        yield False, rpc.raise_for(reply)
                        return

    def call_with_progress(self, op: str, on_item: Callable[[Any], None], **args: Any) -> Any:
        """Like :meth:`call`, handing each ``item`` the daemon sends before its reply to ``on_item``."""
        for is_item, value in self._exchange(op, args):
            if not is_item:
                return value
            on_item(value)
        raise HostError("the daemon closed the connection without a reply", where=f"daemon op {op}")

    def stream(self, op: str, **args: Any) -> Iterator[Any]:
        """Items as the daemon sends them (``-f`` commands); a final list reply is yielded too."""
        for is_item, value in self._exchange(op, args):
            if is_item:
                yield value
            elif isinstance(value, list):
                yield from value
