"""The CLI's side of the daemon: connect (starting the daemon when it is not running), call.

Every exchange has a time limit, so a daemon that is stopped (SIGSTOP), stuck or dead never
hangs the CLI: connecting, sending and each wait for the daemon's next message give up after
``CLAWPEN_TIMEOUT`` seconds (default 30; ``0`` waits for ever) with "the daemon does not answer
(pid N, state T)". The limit is between two messages, not on the whole operation: the client
asks the daemon for a heartbeat line every few seconds (see :mod:`clawpen.daemon.rpc`), so a
long ``up`` (builds, waiting for bots) or a quiet ``events -f`` goes on as long as the daemon
lives. While it waits, the client looks at the daemon's state in ``/proc`` every second: a
daemon that is stopped (``T``) or a zombie (``Z``) cannot answer, which is said at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from clawpen.daemon import rpc
from clawpen.errors import HostError, UsageError
from clawpen.procfs import stat_fields

START_TIMEOUT = 15.0
DEFAULT_TIMEOUT = 30.0  # seconds to connect, and between two messages of the daemon
STALL_CHECK = 1.0  # how often a silent wait looks at the daemon's state
MAX_HEARTBEAT = 5.0
_RETRY = 0.05
# Operations that change nothing: asked again once when the daemon drops the connection.
READ_ONLY_OPS = frozenset(
    {"ping", "ps", "status", "events", "releases", "release_show", "release_diff", "snapshot_ls"}
    | {"secrets_ls", "token_ls", "cluster_status", "logs_ship_status"}
)
# States in /proc/PID/stat of a process that cannot answer until someone acts.
_DEAD_STATES = {"T": "stopped", "t": "stopped by a debugger", "Z": "zombie", "X": "dead"}
_STATE_NAMES = {
    **_DEAD_STATES,
    "R": "running",
    "S": "sleeping",
    "D": "waiting on a disk or a hung mount",
    "I": "idle",
}


def timeout_from_env(environ: Mapping[str, str] = os.environ) -> float | None:
    """The CLI's time limit from ``CLAWPEN_TIMEOUT`` (seconds, or "30s", "2m"); None for ``0``."""
    value = environ.get("CLAWPEN_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    from clawpen.spec.units import UnitError, parse_duration

    try:
        seconds = parse_duration(value)
    except UnitError as err:
        raise UsageError(
            f"CLAWPEN_TIMEOUT={value[:40]!r}: {err}",
            where="environment variable CLAWPEN_TIMEOUT",
            hint='seconds to wait for the daemon, e.g. "30" or "2m"; "0" waits for ever',
        ) from None
    return seconds or None


def proc_state(pid: int) -> str | None:
    """The one-letter state of process ``pid`` (``/proc/PID/stat``), None if it is gone."""
    fields = stat_fields(pid)
    return fields[0].decode("ascii", "replace") if fields else None


class DaemonNotAnswering(HostError):
    """The daemon's socket is there but nothing answers in time (exit code 1)."""


class Client:
    def __init__(self, state: Path, *, timeout: float | None = None) -> None:
        """``timeout``: seconds to connect and between two messages; None takes CLAWPEN_TIMEOUT,
        0 waits for ever."""
        self.state = state
        self.path = state / "clawpen.sock"
        chosen = timeout_from_env() if timeout is None else timeout
        self.timeout: float | None = chosen or None

    # ---------------------------------------------------------------- who is not answering
    def _daemon_pid(self, sock: socket.socket | None = None) -> int | None:
        """The daemon's pid: the peer of ``sock`` (SO_PEERCRED: whoever listens on the socket),
        else ``daemon.pid`` (the file by which the daemon refuses to start twice)."""
        if sock is not None:
            with contextlib.suppress(OSError):
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid = int(struct.unpack("3i", creds)[0])
                if pid > 0:
                    return pid
        try:
            return int((self.state / "daemon.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _not_answering(self, pid: int | None, waited: float) -> DaemonNotAnswering:
        state = proc_state(pid) if pid else None
        if pid is None:
            who = "pid unknown"
        elif state is None:
            who = f"pid {pid}, gone"
        else:
            who = f"pid {pid}, state {state}: {_STATE_NAMES.get(state, 'unknown')}"
        return DaemonNotAnswering(
            f"the daemon does not answer ({who}) after {waited:.1f} s",
            where=str(self.path),
            hint=self._hint(pid, state),
        )

    def _hint(self, pid: int | None, state: str | None) -> str:
        under_systemd = False
        if pid:
            with contextlib.suppress(OSError):
                under_systemd = "clawpen.service" in Path(f"/proc/{pid}/cgroup").read_text()
        restart = (
            "`systemctl restart clawpen`"
            if under_systemd
            else (f"`kill -TERM {pid}`" if pid else "stop it") + ", then `clawpen daemon` or any command"
        )
        if state in ("T", "t"):
            return f"it is stopped: resume it with `kill -CONT {pid}`, or restart it: {restart}"
        if state in ("Z", "X", None) and pid:
            return f"it has died: restart it: {restart}"
        if state == "D":
            return f"it waits on the disk or a hung mount (see `dmesg`); restart it: {restart}"
        return (
            "it is busy or stuck: wait longer with CLAWPEN_TIMEOUT=120 (seconds; 0 waits for ever), "
            f"or restart it: {restart}"
        )

    # ---------------------------------------------------------------- connecting
    def _connect(self) -> socket.socket:
        """A connected socket; OSError when no daemon listens (no socket, refused),
        DaemonNotAnswering when one listens but does not accept within the time limit."""
        start = time.monotonic()
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                return sock
            except (BlockingIOError, TimeoutError):  # EAGAIN: its backlog is full, nobody accepts
                sock.close()
            except OSError:
                sock.close()
                raise
            pid = self._daemon_pid()
            waited = time.monotonic() - start
            limit = self.timeout or 0.0  # (a blocking connect does not raise EAGAIN)
            if waited >= limit or (waited >= STALL_CHECK and pid and proc_state(pid) in _DEAD_STATES):
                raise self._not_answering(pid, waited)
            time.sleep(_RETRY)

    def ensure_daemon(self, *, quiet: bool = False) -> None:
        """Start the daemon in the background if nothing answers on the socket."""
        if os.geteuid() != 0:
            raise HostError(
                "the daemon's commands need root: its socket is root's alone",
                where=str(self.path),
                hint="run clawpen as root (sudo clawpen ...)",
            )
        try:
            self._call("ping", {}, autostart=False)
            return
        except rpc.RemoteError:
            return  # it answered (perhaps refusing our token): it runs
        except OSError:
            pass
        import subprocess  # here: only a start of the daemon needs it, never `clawpen ps`

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
                self._call("ping", {}, autostart=False)
                if not quiet:
                    print(f"clawpen: started the daemon (log: {log})", file=sys.stderr)
                return
            except OSError:
                time.sleep(_RETRY)
        raise HostError(
            f"the daemon did not start within {START_TIMEOUT:g} s",
            where=str(log),
            hint=f"read {log}, or run `clawpen daemon` in the foreground to see why",
        )

    def _request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {"op": op, "args": args}
        token = os.environ.get("CLAWPEN_TOKEN")
        if token:
            request["token"] = token
        if self.timeout is not None:  # a sign of life at least this often, while the op runs
            request[rpc.HEARTBEAT_KEY] = round(min(MAX_HEARTBEAT, self.timeout / 3), 3)
        return request

    def _open(self, autostart: bool) -> socket.socket:
        """A connection to the daemon; when none answers and ``autostart``, start it first."""
        try:
            return self._connect()
        except OSError:  # (DaemonNotAnswering is no OSError: it is raised as it is)
            if not autostart:
                raise
        self.ensure_daemon()
        return self._connect()

    # ---------------------------------------------------------------- exchanging
    def _messages(self, sock: socket.socket, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Send ``request``, then yield each message of the daemon but heartbeats, until it hangs
        up. Gives up (DaemonNotAnswering) when nothing at all comes for ``timeout`` seconds, or
        after STALL_CHECK when the daemon is stopped or dead."""
        pid = self._daemon_pid(sock)
        start = last = time.monotonic()
        try:
            sock.sendall(rpc.encode(request))
        except TimeoutError:
            raise self._not_answering(pid, time.monotonic() - start) from None
        if self.timeout is not None:
            sock.settimeout(min(STALL_CHECK, self.timeout))
        buffer = b""
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line, buffer = buffer[:end], buffer[end + 1 :]
                message = self._decode(line)
                if not rpc.is_heartbeat(message):
                    yield message
                continue
            if len(buffer) > rpc.MAX_LINE:
                raise HostError("the daemon sent a line longer than 16 MiB", where=str(self.path))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                waited = time.monotonic() - last
                if waited >= (self.timeout or 0.0) or (pid and proc_state(pid) in _DEAD_STATES):
                    raise self._not_answering(pid, waited) from None
                continue
            if not chunk:
                if buffer.strip():
                    yield self._decode(buffer)
                return
            last = time.monotonic()
            buffer += chunk

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise HostError(
                "the daemon sent a reply that is not a JSON object",
                where=str(self.path),
                hint="are the CLI and the daemon the same clawpen version? restart the daemon",
            )
        return message

    def _exchange(self, op: str, args: dict[str, Any], autostart: bool = True) -> Iterator[tuple[bool, Any]]:
        """Send one request; yield ``(True, item)`` for each item the daemon streams, then
        ``(False, result)`` for its final reply (raising a RemoteError it carries)."""
        with self._open(autostart) as sock:
            for reply in self._messages(sock, self._request(op, args)):
                if "item" in reply:
                    yield True, reply["item"]
                else:
                    yield False, rpc.raise_for(reply)
                    return

    def _call(self, op: str, args: dict[str, Any], autostart: bool) -> Any:
        for is_item, value in self._exchange(op, args, autostart):
            if not is_item:
                return value
        raise HostError("the daemon closed the connection without a reply", where=f"daemon op {op}")

    def call(self, op: str, autostart: bool = True, **args: Any) -> Any:
        """The daemon's reply to ``op`` (items it streams first are dropped). A connection the
        daemon drops (a reset: it died or restarts) is asked again once for an operation that
        changes nothing, and is otherwise a clear error, never a traceback."""
        try:
            return self._call(op, args, autostart)
        except (ConnectionResetError, BrokenPipeError) as err:
            if op not in READ_ONLY_OPS:
                raise self._dropped(op, err) from None
        time.sleep(_RETRY)
        try:
            return self._call(op, args, autostart)
        except (ConnectionResetError, BrokenPipeError) as err:
            raise self._dropped(op, err) from None

    def _dropped(self, op: str, err: OSError) -> HostError:
        log = self.state / "daemon.log"
        return HostError(
            f"the daemon dropped the connection during `{op}` ({err.strerror or err})",
            where=str(self.path),
            hint=f"it may have stopped or restarted: run the command again, and read {log} if it goes on",
        )

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
