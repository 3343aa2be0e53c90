"""Waiting for a log file to change: inotify on the logs folder, or a plain sleep without it.

:class:`FileWatch` wakes a follower as soon as the kernel reports a change to one file name in
a folder (appended to, created, renamed away or deleted by a rotation), and otherwise after the
timeout, so the follower can still check whether it should stop. Events for other files of the
folder (other bots' logs) are read and ignored without waking the caller.

When inotify is not available (``fs.inotify.max_user_instances`` or ``max_user_watches`` used
up, a file system without it), :class:`FileWatch` sleeps instead: the caller polls, as before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from inotify_simple import INotify, flags

_MASK = flags.MODIFY | flags.CREATE | flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE | flags.CLOSE_WRITE


class FileWatch:
    """Wait for a change to ``path`` (a file in a folder that exists) for at most a timeout; with
    ``accept``, to any file of ``path``'s folder whose name it takes."""

    def __init__(self, path: Path, accept: Callable[[str], bool] | None = None) -> None:
        self.name = path.name
        self.accept = accept if accept is not None else self.name.__eq__
        self._ino: INotify | None = None
        try:
            ino = INotify()
        except OSError:
            return
        try:
            ino.add_watch(str(path.parent), _MASK)
        except OSError:
            ino.close()
            return
        self._ino = ino

    @property
    def active(self) -> bool:
        """Whether changes wake the waiter (False: it only sleeps)."""
        return self._ino is not None

    def wait(self, timeout: float) -> bool:
        """Return True at a change of the file (or a lost event), False when ``timeout`` passed."""
        if self._ino is None:
            time.sleep(timeout)
            return False
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            events = self._ino.read(timeout=max(1, int(left * 1000)))
            for event in events:
                if event.mask & (flags.Q_OVERFLOW | flags.IGNORED) or self.accept(event.name):
                    return True

    def close(self) -> None:
        if self._ino is not None:
            with contextlib.suppress(OSError):
                self._ino.close()
            self._ino = None

    def __enter__(self) -> FileWatch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
