"""The few QMP exchanges clawpen has with a VM's QEMU: power-down, quit, status.

QMP is JSON over a Unix socket: a greeting, ``qmp_capabilities``, then commands, each answered
by ``return`` or ``error`` (with asynchronous events in between, skipped here). Each call has a
deadline: a stopped or stuck QEMU must not hold the daemon. The socket is reached through an
``O_PATH`` descriptor of its folder (``/proc/self/fd/N/qmp``), so a long state path never meets
the 108-byte limit of a socket address.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from clawpen.errors import HostError


class QmpError(HostError):
    """QEMU did not answer, or refused the command."""


def command(
    folder: Path, execute: str, arguments: dict[str, Any] | None = None, *, timeout: float = 2.0
) -> Any:
    """Send one command to the QMP socket ``folder/qmp``; its ``return`` value."""
    deadline = time.monotonic() + timeout
    dirfd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(f"/proc/self/fd/{dirfd}/qmp")
            except OSError as e:
                raise QmpError(
                    f"QEMU's QMP socket does not answer: {e.strerror}", where=str(folder)
                ) from None
            reader = _Lines(sock, deadline)
            reader.next_reply(greeting=True)
            for cmd in (
                {"execute": "qmp_capabilities"},
                {"execute": execute, **({"arguments": arguments} if arguments else {})},
            ):
                sock.sendall(json.dumps(cmd).encode() + b"\n")
                reply = reader.next_reply()
                if "error" in reply:
                    raise QmpError(
                        f"QEMU refused {cmd['execute']}: {reply['error'].get('desc', reply['error'])}"
                    )
            return reply.get("return")
    finally:
        os.close(dirfd)


class _Lines:
    """JSON messages off the socket, one per line, within the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.buf = sock, deadline, b""

    def next_reply(self, *, greeting: bool = False) -> dict[str, Any]:
        while True:
            while b"\n" not in self.buf:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise QmpError("QEMU's QMP socket did not answer in time")
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except OSError as e:
                    raise QmpError(f"QEMU's QMP socket: {e}") from None
                if not chunk:
                    raise QmpError("QEMU closed its QMP socket")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and (
                    "QMP" in msg if greeting else ("return" in msg or "error" in msg)
                ):
                    return msg
