"""The fence: a small process, apart from the daemon, that kills a primary's bot when its etcd
lease runs out without a renewal.

The daemon renews each primary's lease and, after every renewal etcd confirmed, moves the bot's
deadline here (the time the renewal was *sent* + the lease's TTL - a margin: etcd's own expiry
is later). The fence kills the bot's cgroup when a deadline passes. Renewing and killing live in
two processes so that a daemon that is SIGSTOPped, SIGKILLed or cut off from etcd cannot keep a
bot running past its lease: by the time the backup may take over (the lease expired at etcd), the
old primary's bot is already dead. A fence that is asked to stop (SIGTERM, SIGINT) kills every
bot it guards first: it fails closed.

Deadlines are CLOCK_BOOTTIME seconds (the same clock in every process, running through a
suspend). The protocol is one JSON object a line on a Unix socket the daemon owns (0600):

    {"op": "arm", "bot": B, "cgroup": C, "deadline": T, "lease": L, "token": N}
    {"op": "extend", "bot": B, "deadline": T}       (only ever later)
    {"op": "disarm", "bot": B}                       (the daemon stopped the bot itself)
    {"op": "list"}                                   -> {"ok": true, "guards": [...]}

Each gets ``{"ok": true}`` or ``{"ok": false, "error": "..."}``. A guard that fired stays listed
(``"fired": true``) until disarmed, so a daemon that reconnects learns its bot was killed.
Run as ``python -m clawpen.ha.fence SOCKET``; it leaves when no guard is left to fire and no
daemon has been connected for a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

IDLE_EXIT = 60.0
MAX_LINE = 64 << 10
MAX_CLIENTS = 16


def now() -> float:
    """The fence's clock (CLOCK_BOOTTIME seconds); the daemon computes deadlines on it too."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Guard:
    """One primary's bot under guard."""

    bot: str
    cgroup: str
    deadline: float
    lease: int
    token: int
    fired: bool = False
    fired_at: float | None = None


def kill_cgroup(name: str) -> None:
    """SIGKILL every process of the bot's cgroup (forks included) and wait until it is empty."""
    from clawpen.sandbox import cgroups

    cgroups.detect().attach(name).kill(timeout=5.0)


class Fence:
    """The guards and their deadlines; :meth:`serve` runs them on a socket."""

    def __init__(
        self, *, kill: Callable[[str], None] = kill_cgroup, clock: Callable[[], float] = now
    ) -> None:
        self.guards: dict[str, Guard] = {}
        self.kill = kill
        self.clock = clock

    def handle(self, msg: dict[str, object]) -> dict[str, object]:
        op = msg.get("op")
        bot = str(msg.get("bot", ""))
        if op == "list":
            return {"ok": True, "guards": [asdict(g) for g in self.guards.values()]}
        if not bot:
            return {"ok": False, "error": f"{op!r}: no bot named"}
        if op == "arm":
            cgroup, deadline = msg.get("cgroup"), msg.get("deadline")
            if not isinstance(cgroup, str) or not isinstance(deadline, int | float):
                return {"ok": False, "error": "arm needs a cgroup and a deadline"}
            lease, token = msg.get("lease", 0), msg.get("token", 0)
            self.guards[bot] = Guard(bot, cgroup, float(deadline), int(lease), int(token))  # type: ignore[call-overload]
            return {"ok": True, "armed": bot}
        guard = self.guards.get(bot)
        if op == "disarm":
            self.guards.pop(bot, None)
            return {"ok": True}
        if guard is None:
            return {"ok": False, "error": f"no guard for bot {bot}"}
        if op == "extend":
            deadline = msg.get("deadline")
            if not isinstance(deadline, int | float):
                return {"ok": False, "error": "extend needs a deadline"}
            if guard.fired:
                return {"ok": False, "error": f"bot {bot} was already killed at its deadline"}
            guard.deadline = max(guard.deadline, float(deadline))
            return {"ok": True, "deadline": guard.deadline}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def expire(self) -> float | None:
        """Kill every bot past its deadline; the seconds until the next deadline (None: none)."""
        t = self.clock()
        nearest: float | None = None
        for guard in self.guards.values():
            if guard.fired:
                continue
            if guard.deadline <= t:
                self._fire(guard)
            else:
                nearest = guard.deadline - t if nearest is None else min(nearest, guard.deadline - t)
        return nearest

    def fire_all(self) -> None:
        for guard in self.guards.values():
            if not guard.fired:
                self._fire(guard)

    def _fire(self, guard: Guard) -> None:
        guard.fired, guard.fired_at = True, self.clock()
        late = guard.fired_at - guard.deadline
        try:
            self.kill(guard.cgroup)
        except Exception as err:  # keep guarding the others
            _log(f"fence: could not kill bot {guard.bot}: {err}")
            return
        _log(f"fence: killed bot {guard.bot} (term {guard.token}): its lease was not renewed "
             f"({late:.3f}s after the deadline)")  # fmt: skip

    def serve(self, path: Path, *, detach: bool = False) -> None:
        """Accept the daemon's connections on ``path`` until idle (see the module's doc);
        ``detach``: once listening, go on in a child and let the starting process exit (so
        the daemon that started it waits for nothing and leaves no zombie)."""
        listener = bind(path)
        if detach and os.fork() > 0:
            os._exit(0)
        sel = selectors.DefaultSelector()  # epoll: no limit on descriptor numbers
        sel.register(listener, selectors.EVENT_READ, None)
        buffers: dict[socket.socket, bytearray] = {}
        last_client = self.clock()

        def on_signal(signum: int, _frame: object) -> None:
            raise _Stop  # out of select() at once (PEP 475 would resume the wait)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            while True:
                nearest = self.expire()
                if buffers:
                    last_client = self.clock()
                elif self.clock() - last_client > IDLE_EXIT and all(g.fired for g in self.guards.values()):
                    break  # nothing left to guard (a fired guard has done its work) and no daemon
                wait = IDLE_EXIT if nearest is None else min(nearest, IDLE_EXIT)
                for key, _ in sel.select(timeout=max(0.0, wait)):
                    if key.fileobj is listener:
                        self._accept(listener, sel, buffers)
                    else:
                        self._read(key.fileobj, sel, buffers)  # type: ignore[arg-type]
        except _Stop:
            self.fire_all()  # fail closed
        finally:
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()
            for conn in list(buffers):
                conn.close()
            listener.close()

    def _accept(
        self, listener: socket.socket, sel: selectors.BaseSelector, buffers: dict[socket.socket, bytearray]
    ) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            conn, _ = listener.accept()
            if len(buffers) >= MAX_CLIENTS:
                conn.close()
                return
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, None)
            buffers[conn] = bytearray()

    def _read(
        self, conn: socket.socket, sel: selectors.BaseSelector, buffers: dict[socket.socket, bytearray]
    ) -> None:
        try:
            data = conn.recv(MAX_LINE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buf = buffers[conn]
        buf += data
        replies = bytearray()
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            try:
                msg = json.loads(line)
                reply = self.handle(msg) if isinstance(msg, dict) else {"ok": False, "error": "not an object"}
            except ValueError:
                reply = {"ok": False, "error": "not JSON"}
            replies += json.dumps(reply).encode() + b"\n"
        if replies:
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.settimeout(2.0)
                conn.sendall(replies)
                conn.setblocking(False)
        if not data or len(buf) > MAX_LINE:
            sel.unregister(conn)
            del buffers[conn]
            conn.close()


def _log(line: str) -> None:
    """One line to the fence's log; a full disk (or a closed log) never stops the guarding."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


class _Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def bind(path: Path) -> socket.socket:
    """The fence's listening socket at ``path`` (0600), replacing a stale one."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(MAX_CLIENTS)
    listener.setblocking(False)
    return listener


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m clawpen.ha.fence SOCKET", file=sys.stderr)
        return 2
    Fence().serve(Path(argv[0]), detach=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
