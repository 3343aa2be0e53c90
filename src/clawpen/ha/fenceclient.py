"""The daemon's side of the fence (:mod:`clawpen.ha.fence`): start it (or find the one an earlier
daemon started) and talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from clawpen.errors import HostError

CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 2.0


class FenceClient:
    """One connection to this state directory's fence, started on first use."""

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.socket_path))
            return
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # no fence listens: start one
        self._spawn()
        loop = asyncio.get_running_loop()
        end = loop.time() + CONNECT_TIMEOUT
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.socket_path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > end:
                    raise HostError(
                        "the failover fence did not start",
                        where=str(self.socket_path),
                        hint=f"see {self.log_path}",
                    ) from None
                await asyncio.sleep(0.02)

    def _spawn(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            # its own session (a signal to the daemon's group does not reach it); it forks once
            # listening, so this returns when it answers
            subprocess.run(
                [sys.executable, "-m", "clawpen.ha.fence", str(self.socket_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                timeout=CONNECT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pass  # the connect below says what happened
        finally:
            os.close(log)

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return the fence's reply; HostError when the fence is gone."""
        async with self._lock:
            for attempt in range(2):
                try:
                    if self._writer is None:
                        await self._connect()
                    assert self._reader is not None and self._writer is not None
                    self._writer.write(json.dumps(msg).encode() + b"\n")
                    await self._writer.drain()
                    line = await asyncio.wait_for(self._reader.readline(), REPLY_TIMEOUT)
                    if not line:
                        raise ConnectionResetError("the fence closed the connection")
                    reply: dict[str, Any] = json.loads(line)
                    return reply
                except (OSError, TimeoutError, ValueError) as err:
                    await self.close()
                    if attempt == 1:
                        raise HostError(
                            f"the failover fence does not answer: {err}",
                            where=str(self.socket_path),
                            hint=f"see {self.log_path}",
                        ) from None
            raise AssertionError("unreachable")

    async def checked(self, msg: dict[str, Any]) -> dict[str, Any]:
        reply = await self.request(msg)
        if not reply.get("ok"):
            raise HostError(f"the failover fence refused {msg.get('op')}: {reply.get('error')}",
                            where=str(self.socket_path))  # fmt: skip
        return reply

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None
