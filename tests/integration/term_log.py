"""A recorder for the split-brain checker that no simulated fault can cut: a Unix datagram socket
of the test process, in a 0755 folder a bot mounts read-write (``filesystem.rw``).

The simulated hosts share the machine's file system, and a path-bound Unix socket is reached
through the file system, not the network: a bot on a partitioned host (its namespace drops
everything but loopback) still reports, so the checker sees every moment an instance believes
it is primary, including the ones a real partition would hide. Each datagram is one record,
stamped with the receive time (``time.monotonic()`` of the test process: one clock for all).

Bot side (Debian's python in the sandbox)::

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(f"{host} {token} {time.time()}".encode(), "/termlog/log.sock")
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

SANDBOX_DIR = "/termlog"


class TermLog:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="clawpen-termlog-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.path = self.dir / "log.sock"
        self.records: list[tuple[float, str]] = []  # (monotonic receive time, text)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self.path.chmod(0o666)  # any bot uid may send
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def mount(self) -> str:
        """The ``filesystem.rw`` entry that shows the socket at ``/termlog/log.sock``."""
        return f"{self.dir}:{SANDBOX_DIR}"

    def _serve(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return  # closed
            if not data:
                return  # shut down (bots send no empty records)
            with self._lock:
                self.records.append((time.monotonic(), data.decode(errors="replace")))

    def lines(self) -> list[str]:
        with self._lock:
            return [text for _, text in self.records]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)
