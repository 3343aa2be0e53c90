"""Logins in real time: :class:`LoginFollower` follows auth.log (inotify on its folder; rotation
by rename + new file and truncation handled) or ``journalctl -f`` and hands every new
:class:`~clawpen.assess.loginsrc.LoginEvent`, and every finding the login rules raise (a burst
of failures, a root login, a login from a new address, a password login), to a callback.

Two ways to run it: from a thread, ``while not stopping: follower.poll(1.0)``; or in an asyncio
loop, ``loop.add_reader(follower.fileno(), follower.read_ready)`` when ``fileno()`` is not None,
plus ``read_ready()`` every :data:`TICK` seconds (a lost inotify event, an ended journalctl,
an auth.log that appears later). ``close()`` ends it. Nothing here writes to the followed system.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from inotify_simple import INotify, flags

from clawpen.assess.logins import LEARN_SPAN, Detector, KnownAddresses, collect
from clawpen.assess.loginsrc import (
    AUTH_LOG,
    LoginEvent,
    is_host,
    journal_command,
    journal_dir,
    journal_entry,
    journal_events,
    parse_lines,
    system_zone,
)
from clawpen.assess.model import AuditFinding

_log = logging.getLogger(__name__)

TICK = 5.0  # seconds between the timed read_ready() calls an asyncio user makes
RESTART_DELAY = 5.0  # at most one journalctl start per this many seconds
MAX_READ = 4 << 20  # bytes read per pass; more waits for the next pass
_MASK = flags.MODIFY | flags.CREATE | flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE | flags.CLOSE_WRITE

Item = LoginEvent | AuditFinding
Callback = Callable[[Item], None]


class _FileTail:
    """New complete lines of one file, across rotation (rename + a new file) and truncation."""

    def __init__(self, path: Path, *, from_end: bool) -> None:
        self.path = path
        self.fd: int | None = None
        self.inode = 0
        self.offset = 0
        self.line = 1  # the number of the next line
        self.partial = b""
        if from_end:
            self._open(at_end=True)

    def _open(self, *, at_end: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        st = os.fstat(fd)
        self.fd, self.inode, self.offset, self.line, self.partial = fd, st.st_ino, 0, 1, b""
        if at_end:  # history is not followed: count its lines for the line numbers
            while self.offset < st.st_size:
                chunk = os.pread(fd, min(1 << 20, st.st_size - self.offset), self.offset)
                if not chunk:
                    break
                self.offset += len(chunk)
                self.line += chunk.count(b"\n")
            # a line being written now is followed: its start is kept until it is complete
            tail = os.pread(fd, min(65536, self.offset), self.offset - min(65536, self.offset))
            self.partial = tail[tail.rfind(b"\n") + 1 :]
        return True

    def _drain(self) -> tuple[list[tuple[int, str]], bool]:
        """The complete lines appended, and whether the end of the file was reached."""
        assert self.fd is not None
        if os.fstat(self.fd).st_size < self.offset:  # truncated (copytruncate): from its start
            self.offset, self.line, self.partial = 0, 1, b""
        data = b""
        end = False
        while len(data) < MAX_READ:
            chunk = os.pread(self.fd, min(1 << 20, MAX_READ - len(data)), self.offset)
            if not chunk:
                end = True
                break
            data += chunk
            self.offset += len(chunk)
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:][-65536:]
        out = []
        for raw in data[:cut].splitlines():
            out.append((self.line, raw.decode("utf-8", "replace")))
            self.line += 1
        return out, end

    def read(self) -> list[tuple[int, str]]:
        """``(line number, text)`` of the lines appended since the last read."""
        if self.fd is None and not self._open(at_end=False):
            return []
        out, end = self._drain()  # the rest of the current file, rotated away or not
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            return out  # renamed away, no new file yet
        if end and inode != self.inode:  # (more of the old file first: the next read)
            self.close()
            if self._open(at_end=False):
                out += self._drain()[0]
        return out

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class LoginFollower:
    """Follows the logins of the system at ``root`` from now on.

    ``source``: ``auth.log``, ``journal``, or ``auto`` (auth.log when it exists, else the
    journal when the system has one and journalctl is installed, else auth.log once it appears).
    ``state_dir``: where the known login addresses are kept (the audit's file); without it there
    is no new-address rule. When the file does not exist yet, the addresses of the last
    :data:`~clawpen.assess.logins.LEARN_SPAN` of records are learned first (no findings)."""

    def __init__(
        self,
        root: Path,
        callback: Callback,
        *,
        state_dir: Path | None = None,
        source: Literal["auto", "auth.log", "journal"] = "auto",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.callback = callback
        self.clock = clock
        self.zone = system_zone(root)
        self._since = clock()
        known = None
        if state_dir is not None:
            known = KnownAddresses.load(state_dir)
            if not known.existed:
                now = clock()
                for event in collect(root, now=now, since=now - LEARN_SPAN, all_from=now)[0]:
                    if event.ok and event.address:
                        known.add(event)
                known.save()
        self.detector = Detector(known)
        auth = root / AUTH_LOG.lstrip("/")
        if source == "auto":
            usable = journal_dir(root) is not None and shutil.which("journalctl") is not None
            source = "journal" if usable and not auth.exists() else "auth.log"
        self.source: Literal["auth.log", "journal"] = source
        self._ino: INotify | None = None
        self._tail: _FileTail | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe: tuple[int, int] | None = None
        self._buffer = b""
        self._cursor: str | None = None
        self._started = 0.0
        if source == "auth.log":
            self._ino = _watch(auth.parent)
            self._tail = _FileTail(auth, from_end=True)
        else:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            fcntl.fcntl(read_end, fcntl.F_SETFL, os.O_NONBLOCK)
            self._pipe = (read_end, write_end)  # ours: one fd across journalctl restarts
            self._start_journal()

    def fileno(self) -> int | None:
        """The fd that becomes readable on news (None: only the timed calls find them)."""
        if self._pipe is not None:
            return self._pipe[0]
        return self._ino.fileno() if self._ino is not None else None

    def child_pid(self) -> int | None:
        """The running ``journalctl -f``'s pid (None: following auth.log, or none runs): an
        asyncio user watches its exit (a pidfd) instead of calling :meth:`read_ready` on a timer."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def read_ready(self) -> int:
        """Read what is new and hand it to the callback; the number of login events."""
        if self._tail is not None:
            if self._ino is not None:
                with contextlib.suppress(OSError):
                    self._ino.read(timeout=0)  # the events only woke us: the file says what is new
            now = self.clock()
            events: list[LoginEvent] = []
            for number, text in self._tail.read():
                events += parse_lines([text], now=now, zone=self.zone, where=AUTH_LOG, first_line=number)
            return self._deliver(events)
        return self._deliver(self._read_journal())

    def poll(self, timeout: float) -> int:
        """Wait at most ``timeout`` seconds for news, then :meth:`read_ready` (for a thread)."""
        fd = self.fileno()
        if fd is None:
            time.sleep(timeout)
        else:
            waiter = select.poll()  # not select(): it fails on descriptors numbered 1,024 or more
            waiter.register(fd, select.POLLIN)
            with contextlib.suppress(InterruptedError):
                waiter.poll(timeout * 1000)
        return self.read_ready()

    def close(self) -> None:
        self._stop_journal()
        if self._pipe is not None:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None
        if self._ino is not None:
            with contextlib.suppress(OSError):
                self._ino.close()
            self._ino = None
        if self._tail is not None:
            self._tail.close()

    def __enter__(self) -> LoginFollower:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the journal --------------------------------------------------------------------

    def _start_journal(self) -> None:
        directory = journal_dir(self.root)
        if directory is None or self._pipe is None or shutil.which("journalctl") is None:
            return
        self._started = time.monotonic()
        # since the follower's start: what is logged while journalctl opens the journal counts
        argv = journal_command(
            None if is_host(self.root) else directory, follow=True, since=self._since, after=self._cursor
        )
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._pipe[1], stderr=subprocess.DEVNULL
            )
        except OSError as err:
            _log.warning("login follower: cannot start journalctl: %s", err)

    def _stop_journal(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _read_journal(self) -> list[LoginEvent]:
        if self._pipe is None:
            return []
        data = b""
        with contextlib.suppress(BlockingIOError):
            while len(data) < MAX_READ:
                chunk = os.read(self._pipe[0], 1 << 16)
                if not chunk:
                    break
                data += chunk
        data = self._buffer + data
        cut = data.rfind(b"\n") + 1
        self._buffer = data[cut:]
        events: list[LoginEvent] = []
        for line in data[:cut].splitlines():
            entry = journal_entry(line)
            if entry is None:
                continue
            self._cursor = str(entry.get("__CURSOR") or self._cursor or "") or None
            events += journal_events(entry)
        ended = self._proc is None or self._proc.poll() is not None
        if ended and time.monotonic() - self._started >= RESTART_DELAY:
            self._stop_journal()
            self._start_journal()  # after the last entry seen: nothing twice, nothing lost
        return events

    # --- the rules ----------------------------------------------------------------------

    def _deliver(self, events: list[LoginEvent]) -> int:
        for event in events:
            items: list[Item] = [event]
            try:
                items += self.detector.feed(event)
            except OSError as err:  # the known addresses could not be saved
                _log.warning("login follower: %s", err)
            for item in items:
                try:
                    self.callback(item)
                except Exception:  # one failing consumer must not end the follow
                    _log.exception("login follower: the callback failed on %r", item)
        return len(events)


def _watch(folder: Path) -> INotify | None:
    try:
        ino = INotify()
    except OSError:
        return None
    try:
        ino.add_watch(str(folder), _MASK)
    except OSError:
        ino.close()
        return None
    return ino
