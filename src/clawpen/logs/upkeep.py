"""The daemon's background work on log files: the shared :class:`Compressor` (gzip in one
thread, with the daemon's :class:`~clawpen.logs.budget.LogBudget`) and :func:`retention_sweep`
(age and total size per bot). The files themselves are :mod:`clawpen.logs.store`'s.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from clawpen.logs.budget import LogBudget
from clawpen.logs.store import (
    DEFAULT_LEVEL,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_TOTAL,
    RotatedFile,
    compress_file,
    current_path,
    delete_rotated,
    file_size,
    list_bots,
    list_rotated,
)


class SweepReport(NamedTuple):
    """What :func:`retention_sweep` did."""

    deleted: tuple[Path, ...]
    compressed: tuple[Path, ...]  # compressed now, or handed to the compressor
    freed: int  # bytes


class Compressor:
    """Gzips rotated files in one background thread, fed through a bounded queue.

    One per daemon, shared by every :class:`~clawpen.logs.writer.LogWriter`. ``submit`` never
    blocks: when the queue is full it returns False and the file stays ``.log`` until the next
    :func:`retention_sweep` submits it again. Failures are kept in ``errors`` (the last 32) and
    passed to ``on_error``; the thread never dies of one.
    """

    def __init__(
        self,
        *,
        level: int = DEFAULT_LEVEL,
        max_queued: int = 16,
        on_error: Callable[[Path, OSError], None] | None = None,
        budget: LogBudget | None = None,
    ) -> None:
        from clawpen.logs.budget import LogBudget  # it imports this module

        self.budget = LogBudget() if budget is None else budget
        self.budget.compressor = self
        self._level = level
        self._on_error = on_error
        self._queue: queue.Queue[Path | None] = queue.Queue(max_queued)
        self._lock = threading.Condition()
        self._busy: set[Path] = set()
        self._closed = False
        self.errors: collections.deque[tuple[Path, OSError]] = collections.deque(maxlen=32)
        self.done = 0
        self._thread = threading.Thread(target=self._run, name="clawpen-log-gzip", daemon=True)
        self._thread.start()

    def submit(self, path: Path) -> bool:
        """Queue ``path`` for compression; False when closed, already queued, or the queue is full."""
        with self._lock:
            if self._closed or path in self._busy:
                return False
            try:
                self._queue.put_nowait(path)
            except queue.Full:
                return False
            self._busy.add(path)
            return True

    def busy(self, path: Path) -> bool:
        """Whether ``path`` is queued or being compressed."""
        with self._lock:
            return path in self._busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being compressed; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def __enter__(self) -> Compressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            path = self._queue.get()
            if path is None:
                return
            self.budget.compressing(path)
            target: Path | None = None
            try:
                target = compress_file(path, level=self._level)
            except OSError as err:
                self.errors.append((path, err))
                if self._on_error is not None:
                    self._on_error(path, err)
            finally:
                if target is not None:
                    self.budget.compressed(path, target)
                else:
                    self.budget.not_compressed(path)
                with self._lock:
                    self._busy.discard(path)
                    self.done += 1
                    self._lock.notify_all()


def retention_sweep(
    directory: Path,
    now: float,
    *,
    bots: Iterable[str] | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    max_total: int = DEFAULT_MAX_TOTAL,
    compressor: Compressor | None = None,
    level: int = DEFAULT_LEVEL,
) -> SweepReport:
    """Apply retention to every bot in ``directory`` (or to ``bots``); the daemon calls it periodically.

    Per bot: rotated files closed more than ``max_age`` seconds before ``now`` are deleted; then,
    while the bot's files (current included) add up to more than ``max_total`` bytes, the oldest
    rotated file is deleted. The current file is never deleted. Rotated files left uncompressed
    (a full compressor queue, a crash) are compressed: handed to ``compressor``, or here and now
    when there is none. Files the compressor is working on are left alone.

    A file that cannot be deleted or compressed (a full disk, an I/O error) is skipped: the
    sweep never raises for one file. Deletions are reported to the compressor's budget.
    """
    deleted: list[Path] = []
    compressed: list[Path] = []
    freed = 0
    for bot in list_bots(directory) if bots is None else bots:
        rotated = list_rotated(directory, bot)
        total = file_size(current_path(directory, bot)) + sum(file_size(r.path) for r in rotated)
        keep: list[RotatedFile] = []
        for entry in rotated:
            busy = compressor is not None and compressor.busy(entry.path)
            if not busy and (entry.closed_at < now - max_age or total > max_total):
                try:
                    gone = delete_rotated(entry)
                except OSError:
                    keep.append(entry)
                    continue
                if compressor is not None:
                    compressor.budget.forget(entry.path)
                total -= gone
                freed += gone
                deleted.append(entry.path)
            else:
                keep.append(entry)
        for entry in keep:
            if entry.compressed or (compressor is not None and compressor.busy(entry.path)):
                continue
            if compressor is not None:
                if compressor.submit(entry.path):
                    compressed.append(entry.path)
                continue
            with contextlib.suppress(OSError):  # no room for the .gz now: the next sweep tries again
                if compress_file(entry.path, level=level) is not None:
                    compressed.append(entry.path)
    return SweepReport(tuple(deleted), tuple(compressed), freed)
