"""Small process and descriptor helpers of the namespace tier (no ``select()``: ``poll``)."""

from __future__ import annotations

import contextlib
import os
import select


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def become_subreaper() -> None:
    """Make orphaned sandbox processes our children, so we reap them (bubblewrap leaves the
    sandbox's pid 1 unreaped when it exits) instead of piling up zombies under an init that
    may never reap."""
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` seconds. ``poll``, never ``select``:
    the daemon holds more than 1,024 descriptors with many bots, and select() cannot see those."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def reap(pid: int, pidfd: int, timeout: float = 2.0) -> None:
    """Reap ``pid`` once it has exited (bounded); a pid that is not our child is left alone."""
    readable(pidfd, timeout)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
