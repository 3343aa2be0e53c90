"""Freeze a bot when restic starts reading its workspace, not when restic starts.

restic spends a fixed time before it reads a single file (key derivation, the repository's
lock and index: about 0.4 s here). Freezing the bot for that time too would make every
snapshot's pause at least that long. Instead, a fanotify permission mark on the workspace folder
itself (``FAN_OPEN_PERM | FAN_ONDIR``) holds restic's first ``open(".")`` in the kernel until the
bot's cgroups are frozen; only then is the open allowed. restic cannot list the folder, so cannot
read any file in it, before the freeze: the snapshot is as consistent as one with the bot frozen
from the start, and the pause is restic's reading and finishing time only.

Other processes that open the folder meanwhile (the bot itself) are allowed at once, also while
the freeze is under way (a bot held in the kernel could not freeze). The mark belongs to the
fanotify descriptor: closing it (also by the daemon's death) lets every held open through.
Without fanotify (not root, a kernel without permission events) :func:`available` is False and
the caller freezes before starting restic, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

FAN_CLASS_CONTENT = 0x04
FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_MARK_ADD = 0x01
FAN_OPEN_PERM = 0x00010000
FAN_ONDIR = 0x40000000
FAN_ALLOW = 0x01
AT_FDCWD = -100
_META = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("=iI")  # fd, response

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fanotify_init.argtypes = (ctypes.c_uint, ctypes.c_uint)
_libc.fanotify_mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p)


def _is_reader(pid: int, parent: int, comm: str) -> bool:
    """``pid`` is the process we wait for: a child of ``parent`` named ``comm``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    name = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
    fields = stat[stat.rindex(b")") + 2 :].split()
    return name == comm and int(fields[1]) == parent


class FreezeOnRead:
    """A context manager: while inside, the first ``open`` of ``folder`` by a child of this
    process named ``comm`` runs ``freeze`` first (in a thread of its own, so the held open and
    other openers are not in its way). ``frozen_at``: when ``freeze`` returned (monotonic), or
    None if it never ran; ``error``: what ``freeze`` raised, if it did (the open is allowed)."""

    def __init__(self, folder: Path, freeze: Callable[[], None], comm: str = "restic") -> None:
        self.folder = folder
        self._freeze = freeze
        self._comm = comm
        self._parent = os.getpid()
        self.freeze_started: float | None = None
        self.frozen_at: float | None = None
        self.error: BaseException | None = None
        self._fd = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FreezeOnRead:
        fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        mask = FAN_OPEN_PERM | FAN_ONDIR
        if _libc.fanotify_mark(fd, FAN_MARK_ADD, mask, AT_FDCWD, os.fsencode(self.folder)) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"fanotify_mark {self.folder}: {os.strerror(err)}")
        self._fd = fd
        self._thread = threading.Thread(target=self._serve, name="snapshot-freeze", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)  # any open still held is allowed by the kernel
            self._fd = -1

    # -- the thread ---------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._loop()
        except OSError:  # the descriptor is gone: the kernel allows whatever it held
            return

    def _loop(self) -> None:
        held: list[int] = []  # the reader's opens, answered once the bot is frozen
        freezing: threading.Thread | None = None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while True:
            if freezing is not None and not freezing.is_alive():
                for efd in held:
                    self._answer(efd)
                held.clear()
            if self._stop.is_set():
                if freezing is not None:
                    freezing.join()
                for efd in held:
                    self._answer(efd)
                return
            if not poller.poll(1 if held else 5):
                continue
            for efd, pid in self._events():
                waiting = freezing is None or freezing.is_alive()
                if not waiting or not _is_reader(pid, self._parent, self._comm):
                    self._answer(efd)
                    continue
                if freezing is None:
                    freezing = threading.Thread(target=self._run_freeze, name="snapshot-freezer", daemon=True)
                    freezing.start()
                held.append(efd)

    def _run_freeze(self) -> None:
        self.freeze_started = time.monotonic()
        try:
            self._freeze()
        except BaseException as err:  # reported by the caller; the open is allowed regardless
            self.error = err
        finally:
            self.frozen_at = time.monotonic()

    def _events(self) -> list[tuple[int, int]]:
        try:
            data = os.read(self._fd, 4096)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EINTR):
                return []
            raise
        found, at = [], 0
        while at + _META.size <= len(data):
            length, _vers, _res, _mlen, _mask, efd, pid = _META.unpack_from(data, at)
            if efd >= 0:
                found.append((efd, pid))
            at += max(length, _META.size)
        return found

    def _answer(self, efd: int) -> None:
        try:
            os.write(self._fd, _RESPONSE.pack(efd, FAN_ALLOW))
        except OSError:
            pass  # the descriptor is closed: the kernel has allowed it
        finally:
            os.close(efd)


def available() -> bool:
    """fanotify permission events can be used here (root, a kernel built with them)."""
    fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY)
    if fd < 0:
        return False
    os.close(fd)
    return True
