"""The published-port relay process: ``python -I -m clawpen.net.portrelay ...``.

One relay process per published bot instance, started by the daemon
(:mod:`clawpen.net.relayctl`) in a session of its own, so the path from a published host port
to the bot never runs through the daemon: a daemon crash, SIGKILL or upgrade leaves it serving,
and the next daemon adopts it.

* The **listening sockets** are bound by the daemon and inherited (``--listen FD:BOT_PORT``): a
  port that is taken fails in the daemon, with an event, and the relay needs no right to bind.
* For each accepted connection a worker thread reads the **target file** (``--target``, JSON
  written atomically by the daemon whenever the bot's namespace changes: ``{"netns": PATH,
  "pid": PID, "start": TICKS}``), opens that namespace, checks it (the process, when named,
  is still the one that started at ``start``; the namespace is never the relay's own, so a dead
  bot's reused pid can never lead into the host's loopback), joins it just long enough to
  create its socket (a socket keeps the namespace it was made in), connects to
  ``127.0.0.1:BOT_PORT`` there and relays with :func:`clawpen.net.relay.relay` (splice, poll).
* **Bounds**: at most ``--max-conns`` connections (more are reset), each torn down after
  ``--idle`` seconds without a byte either way; connecting into the bot times out after 5 s.
* **Privilege**: after start the process keeps only ``CAP_SYS_ADMIN`` (``setns``) and
  ``CAP_SYS_PTRACE`` (opening ``/proc/PID/ns/net`` of a bot that runs as another uid), clears
  its bounding set and sets ``no_new_privs``. It never execs.
* **Events** (refused sources, the connection cap) go to ``--events`` as JSON lines (the same
  sentence once per 10 s, ten lines a second at most; repeats are counted and written as one
  line), the file capped at 64 KiB; the daemon takes them and turns them into ``publish`` events.
* **Ends** on SIGTERM/SIGINT (listeners closed, connections shut), or by itself when its
  target file is gone (its state was removed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from clawpen import netns
from clawpen.net.relay import Workers, close_quietly, relay, reset, tune
from clawpen.procfs import stat_fields
from clawpen.spec.publish import source_allowed

CONNECT_TIMEOUT = 5.0
MAX_CONNS = 512
IDLE = 3600.0
CHECK_EVERY = 2.0  # seconds between checks that the target file still exists
EVENT_GAP = 10.0  # seconds: the same sentence once in this time, the repeats counted
EVENT_BURST = 10  # lines a second at most
EVENT_KINDS = 64  # distinct sentences remembered / counted at once
EVENTS_CAP = 64 << 10
KEEP_CAPS = (19, 21)  # CAP_SYS_PTRACE, CAP_SYS_ADMIN
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_CAP_V3 = 0x20080522


def drop_privileges() -> bool:
    """Keep only :data:`KEEP_CAPS` (effective and permitted), empty the bounding set, set
    ``no_new_privs``. True when it worked (False: not root, or the calls are refused)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        if cap not in KEEP_CAPS:
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    mask = sum(1 << c for c in KEEP_CAPS)
    header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
    data = (ctypes.c_uint32 * 6)(mask, mask, 0, 0, 0, 0)  # effective, permitted, inheritable (x2)
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        return False
    return bool(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)


@dataclass
class Target:
    """Where connections go: the bot's namespace (from the target file)."""

    path: str
    own: tuple[int, int] = field(default=(0, 0))  # (st_dev, st_ino) of the relay's own namespace

    def open(self) -> int | None:
        """An fd of the bot's network namespace right now, or None (not running, or suspect)."""
        try:
            with open(self.path, "rb") as f:
                raw = json.loads(f.read(4096))
        except (OSError, ValueError):
            return None
        path, pid, start = raw.get("netns"), raw.get("pid"), raw.get("start")
        if not isinstance(path, str):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        ok = (st.st_dev, st.st_ino) != self.own
        if ok and pid is not None:
            # checked after the open: if the pid is still that process, the fd is its namespace
            ok = isinstance(pid, int) and isinstance(start, int) and _start_time(pid) == start
        if not ok:
            os.close(fd)
            return None
        return fd


def _start_time(pid: int) -> int | None:
    fields = stat_fields(pid)
    return None if fields is None or fields[0] in (b"Z", b"X") else int(fields[19])


class Events:
    """JSON lines for the daemon, bounded: the same sentence at most once per :data:`EVENT_GAP`
    seconds and at most :data:`EVENT_BURST` lines per second; what is held back is counted and
    written by :meth:`flush` as one line per sentence ("... (N more like it)")."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._window = 0.0
        self._in_window = 0
        self._seen: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def emit(self, why: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._window >= 1.0:
                self._window, self._in_window = now, 0
            recent = now - self._seen.get(why, -EVENT_GAP) < EVENT_GAP
            if recent or self._in_window >= EVENT_BURST:
                if why in self._folded or len(self._folded) < EVENT_KINDS:
                    self._folded[why] = self._folded.get(why, 0) + 1
                return
            self._in_window += 1
            if len(self._seen) >= EVENT_KINDS:
                self._seen = {k: t for k, t in self._seen.items() if now - t < EVENT_GAP}
            self._seen[why] = now
        self._write(why)

    def flush(self) -> None:
        """Write the held-back counts (called from the accept loop now and then)."""
        with self._lock:
            folded, self._folded = self._folded, {}
        for why, n in folded.items():
            self._write(f"{why} ({n} more like it)")

    def _write(self, why: str) -> None:
        line = json.dumps({"t": time.time(), "why": why}).encode() + b"\n"
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < EVENTS_CAP:
                    os.write(fd, line)
            finally:
                os.close(fd)


class Relay:
    """The accept loop (poll on the listeners and a signal pipe) and the connection workers."""

    def __init__(
        self,
        listeners: Sequence[tuple[socket.socket, int]],
        target: Target,
        events: Events,
        *,
        allowed_from: tuple[str, ...] = (),
        max_conns: int = MAX_CONNS,
        idle: float = IDLE,
    ) -> None:
        self.listeners = {s.fileno(): (s, port) for s, port in listeners}
        self.target = target
        self.events = events
        self.allowed_from = allowed_from
        self.max_conns = max_conns
        self.idle = idle
        self.workers = Workers(idle_exit=10.0, name="clawpen-portrelay")
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # every socket of every relayed connection
        self._active = 0  # connections (each: a client socket, then its upstream too)
        self._stopping = False

    def serve(self, wake_fd: int) -> None:
        """Accept until ``wake_fd`` (the signal pipe) is readable or the target file is gone."""
        poller = select.poll()
        for fd, (sock, _port) in self.listeners.items():
            sock.setblocking(False)
            poller.register(fd, select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        next_check = time.monotonic() + CHECK_EVERY
        while True:
            ready = poller.poll(int(CHECK_EVERY * 1000))
            if any(fd == wake_fd for fd, _ in ready):
                return
            for fd, _ev in ready:
                self._accept(fd)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + CHECK_EVERY
                self.events.flush()
                if not os.path.exists(self.target.path):
                    return

    def _accept(self, fd: int) -> None:
        sock, port = self.listeners[fd]
        host_port = sock.getsockname()[1]
        for _ in range(64):  # drain the backlog, bounded
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and friends: leave it in the backlog for the next round
                time.sleep(0.05)
                return
            source = str(peer[0])
            if not source_allowed(source, self.allowed_from):
                conn.close()
                self.events.emit(
                    f"published port {host_port}: refused a connection from {source} (not in from)"
                )
                continue
            with self._lock:
                full = self._active >= self.max_conns
                if not full:
                    self._active += 1
                    self._open.add(conn)
            if full:
                reset(conn)
                self.events.emit(f"published port {host_port}: {self.max_conns} connections open, reset one")
                continue
            try:
                self.workers.submit(functools.partial(self._serve, conn, port))
            except RuntimeError:  # no thread to be had: this connection only
                with self._lock:
                    self._active -= 1
                    self._open.discard(conn)
                reset(conn)

    def _serve(self, conn: socket.socket, bot_port: int) -> None:
        upstream: socket.socket | None = None
        try:
            conn.setblocking(True)
            fd = self.target.open()
            if fd is None:
                reset(conn)
                return
            try:
                with netns.entered(fd):
                    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                os.close(fd)
            upstream.settimeout(CONNECT_TIMEOUT)
            upstream.connect(("127.0.0.1", bot_port))
            for s in (conn, upstream):
                tune(s)
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            with self._lock:
                if self._stopping:
                    return
                self._open.add(upstream)
            relay(conn, upstream, idle=self.idle)
        except Exception:  # one connection's failure ends that connection only
            reset(conn)
        finally:
            with self._lock:
                self._active -= 1
                self._open.discard(conn)
                if upstream is not None:
                    self._open.discard(upstream)
            close_quietly(conn, upstream)

    def stop(self) -> None:
        """Close the listeners and shut every open connection (their workers then end)."""
        for sock, _port in self.listeners.values():
            close_quietly(sock)
        with self._lock:
            self._stopping = True
            socks = list(self._open)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _listener(spec: str) -> tuple[socket.socket, int]:
    fd_text, _, port_text = spec.partition(":")
    sock = socket.socket(fileno=int(fd_text))
    return sock, int(port_text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clawpen.net.portrelay", description="published-port relay")
    parser.add_argument("--name", required=True, help="bot.replica (shown in ps)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--listen", action="append", required=True, metavar="FD:BOT_PORT")
    parser.add_argument("--from", dest="from_", action="append", default=[], metavar="CIDR")
    parser.add_argument("--max-conns", type=int, default=MAX_CONNS)
    parser.add_argument("--idle", type=float, default=IDLE)
    args = parser.parse_args(argv)
    threading.stack_size(512 << 10)
    listeners = [_listener(s) for s in args.listen]
    own = os.stat("/proc/self/ns/net")
    if os.geteuid() == 0 and not drop_privileges():
        print("clawpen portrelay: could not drop capabilities; going on", file=sys.stderr)
    rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wr)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server = Relay(
        listeners,
        Target(args.target, (own.st_dev, own.st_ino)),
        Events(args.events),
        allowed_from=tuple(args.from_),
        max_conns=args.max_conns,
        idle=args.idle,
    )
    try:
        server.serve(rd)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
