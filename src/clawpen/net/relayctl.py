"""The daemon's side of a published-port relay process (:mod:`clawpen.net.portrelay`).

Per published instance, under ``<state>/run/publish/`` (0700, root):

* ``<bot>.<replica>.json``: the record (relay pid and start time, the ``publish`` entries and
  ``from`` list it serves), written atomically after the spawn. A new daemon reads it to adopt
  a relay that still runs (:meth:`RelayControl.adopt`) instead of starting a second one.
* ``<bot>.<replica>.target``: where connections go right now (the bot's namespace), rewritten
  atomically by the daemon when the bot (re)starts; the relay reads it per connection.
* ``<bot>.<replica>.events``: JSON lines from the relay (refused sources), taken by the daemon.
* ``<bot>.<replica>.log``: the relay's stderr (only unexpected errors; cut at spawn past 1 MiB).

A relay is signalled through a pidfd opened *and then* checked against the recorded start
time, so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from clawpen.fsutil import write_atomic
from clawpen.procfs import pid_start_time, same_process
from clawpen.spec.publish import parse_publish

MODULE = "clawpen.net.portrelay"
STOP_GRACE = 3.0
LOG_CAP = 1 << 20
SUFFIXES = (".json", ".target", ".events", ".log")


class RelayControl:
    """Spawn, adopt, feed and stop the relay process of one published instance."""

    def __init__(self, folder: Path, key: str, entries: list[str], allowed_from: tuple[str, ...]) -> None:
        self.folder = folder
        self.key = key
        self.entries = list(entries)
        self.allowed_from = list(allowed_from)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start: int | None = None

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.key}{suffix}"

    def _record(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path(".json").read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    # ------------------------------------------------------------ adopt / spawn
    def adopt(self) -> bool:
        """Take over the relay an earlier daemon started, if it still runs and serves the same
        entries. One that runs with other entries is stopped (the caller then spawns anew)."""
        rec = self._record()
        pid, start = rec.get("pid"), rec.get("start")
        if not isinstance(pid, int) or not isinstance(start, int) or not is_relay(pid, start):
            return False
        if rec.get("entries") == self.entries and rec.get("from") == self.allowed_from:
            self.pid, self.start = pid, start
            return True
        terminate(pid, start)
        return False

    def bind(self) -> tuple[list[tuple[socket.socket, int]], list[str]]:
        """Listening sockets for every entry, and a sentence for each one that could not bind."""
        done: list[tuple[socket.socket, int]] = []
        problems: list[str] = []
        for raw in self.entries:
            entry = parse_publish(raw)
            family = socket.AF_INET6 if ":" in entry.host_ip else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((entry.host_ip, entry.host_port))
                sock.listen(128)
            except OSError as err:
                sock.close()
                problems.append(f"cannot listen for {raw!r}: {err.strerror}")
                continue
            done.append((sock, entry.bot_port))
        return done, problems

    def spawn(
        self,
        listeners: list[tuple[socket.socket, int]],
        *,
        max_conns: int | None = None,
        idle: float | None = None,
    ) -> int:
        """Start the relay with these listeners (closed here afterwards) and write the record.
        ``max_conns`` and ``idle`` override the relay's bounds (tests)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = [sys.executable, "-I", "-m", MODULE, "--name", self.key]
        argv += ["--target", str(self.path(".target")), "--events", str(self.path(".events"))]
        for sock, bot_port in listeners:
            argv += ["--listen", f"{sock.fileno()}:{bot_port}"]
        for cidr in self.allowed_from:
            argv += ["--from", cidr]
        if max_conns is not None:
            argv += ["--max-conns", str(max_conns)]
        if idle is not None:
            argv += ["--idle", str(idle)]
        log = self.path(".log")
        with contextlib.suppress(OSError):
            if log.stat().st_size > LOG_CAP:
                log.unlink()
        err = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=[s.fileno() for s, _ in listeners],
                start_new_session=True,  # setsid: no signal for the daemon's group reaches it
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )
        finally:
            os.close(err)
            for sock, _ in listeners:
                sock.close()
        self.pid = self.proc.pid
        self.start = pid_start_time(self.pid)
        record = {"pid": self.pid, "start": self.start, "entries": self.entries, "from": self.allowed_from}
        write_atomic(self.path(".json"), json.dumps(record).encode(), 0o600)
        return self.pid

    # ------------------------------------------------------------ while it runs
    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and self.start is not None and is_relay(self.pid, self.start)

    def write_target(self, target: dict[str, Any]) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path(".target"), json.dumps(target).encode(), 0o600)

    def take_events(self) -> list[str]:
        """What the relay reported since the last call (the file is renamed away, then read)."""
        src = self.path(".events")
        taken = src.with_name(f".{src.name}.{os.getpid()}.taken")
        try:
            os.rename(src, taken)
        except FileNotFoundError:
            return []
        try:
            text = taken.read_text(errors="replace")
        finally:
            taken.unlink()
        found = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                found.append(str(json.loads(line)["why"]))
        return found

    # ------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop the relay (SIGTERM, grace, SIGKILL), reap it, and remove its files."""
        if self.pid is not None and self.start is not None:
            terminate(self.pid, self.start)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_GRACE)
        self.proc = self.pid = self.start = None
        remove_files(self.folder, self.key)


def is_relay(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the relay process that started at ``start``."""
    if not same_process(pid, start):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in argv


def terminate(pid: int, start: int, grace: float = STOP_GRACE) -> None:
    """SIGTERM the relay ``pid`` (if it is still the one that started at ``start``), wait up to
    ``grace`` seconds for it to end, then SIGKILL. Race-free through a pidfd."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if not is_relay(pid, start):  # checked after the open: the pidfd is that very process
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if poller.poll(int(wait * 1000)):
                return
    finally:
        os.close(pidfd)


def remove_files(folder: Path, key: str) -> None:
    for suffix in SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            (folder / f"{key}{suffix}").unlink()


def sweep(folder: Path, keep: set[str]) -> list[str]:
    """Stop relays (and remove the files) of instances not in ``keep`` (``bot.replica``): left by
    a daemon that was killed while it stopped them. Returns the keys it stopped."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    keys = {name[: -len(sfx)] for name in names for sfx in SUFFIXES if name.endswith(sfx)}
    stopped = []
    for key in sorted(keys - keep):
        if key.startswith("."):
            continue
        rec = RelayControl(folder, key, [], ())._record()
        pid, start = rec.get("pid"), rec.get("start")
        if isinstance(pid, int) and isinstance(start, int) and is_relay(pid, start):
            terminate(pid, start)
            stopped.append(key)
        remove_files(folder, key)
    return stopped
