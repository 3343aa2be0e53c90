"""Log caps enforced on write: an in-memory byte count per bot and for the whole daemon.

Each log name (a bot, or ``name-r2``) has a :class:`Ledger`: the size of its current file and
its rotated files, oldest first, with their sizes. A :class:`LogBudget` holds every ledger of a
daemon (one, shared through the :class:`~clawpen.logs.upkeep.Compressor`) and the running total,
so checking the caps costs a comparison per write, never a directory scan:

* **per bot**: before a write that would take the bot past its cap, its oldest rotated files
  are deleted (the writer rotates at a quarter of the cap at most, so this always suffices);
* **in all**: past the daemon-wide cap, the oldest rotated file of the bot holding the most
  rotated bytes goes first (a flooding bot pays for its flood, a quiet bot keeps its history);
* **compression lag**: when a bot has more than ``max_waiting`` rotated files not compressed
  yet (queued, or refused by a full compressor queue), the oldest is deleted instead of left to
  pile up.

The compressor's thread reports each finished file (:meth:`LogBudget.compressed`) and the
retention sweep each deletion (:meth:`LogBudget.forget`), so the counts follow the disk; a lock
guards them. Files are unlinked outside the lock.

:class:`TokenBucket` is the per-writer write-rate limit.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from clawpen.logs import store

if TYPE_CHECKING:
    from clawpen.logs.space import SpaceGuard

DEFAULT_MAX_ALL = 8 << 30  # every bot's logs together (the daemon lowers it to a quarter of the disk)
DEFAULT_RATE = 1 << 20  # bytes/s a bot may log, sustained
DEFAULT_BURST = 16 << 20  # and in a burst (a million short lines at start pass whole)
DEFAULT_MAX_WAITING = 2  # rotated files waiting for compression, per bot


class Ticking(Protocol):
    def tick(self) -> bool: ...  # True: a dropped-lines marker is still pending


class Queued(Protocol):
    """The compressor, as the budget sees it (:class:`clawpen.logs.upkeep.Compressor`)."""

    def busy(self, path: Path) -> bool: ...


class _File:
    __slots__ = ("compressed", "path", "size")

    def __init__(self, path: Path, size: int, compressed: bool) -> None:
        self.path = path
        self.size = size
        self.compressed = compressed


class Ledger:
    """What one log name holds on disk, as far as the budget knows."""

    __slots__ = (
        "bot",
        "cap",
        "current",
        "directory",
        "inflight",
        "max_waiting",
        "rotated",
        "rotated_bytes",
        "waiting",
    )

    def __init__(self, directory: Path, bot: str, cap: int) -> None:
        self.directory = directory
        self.bot = bot
        self.cap = cap
        self.max_waiting: int | None = None
        self.current = 0
        self.rotated: deque[_File] = deque()
        self.rotated_bytes = 0
        self.waiting = 0  # rotated files not compressed yet
        self.inflight = 0  # the .gz being written for one of them takes at most its size

    @property
    def total(self) -> int:
        return self.current + self.rotated_bytes + self.inflight


class LogBudget:
    """Every log byte of one daemon (or of one stand-alone writer), and the caps on them."""

    def __init__(self, *, max_all: int | None = DEFAULT_MAX_ALL) -> None:
        self.max_all = max_all
        self.space: SpaceGuard | None = None  # set by the daemon's log component
        self.compressor: Queued | None = None
        self.total = 0  # every byte counted, the compressor's output in progress included
        self.deleted = 0  # rotated files deleted to hold a cap
        self.dropped_waiting = 0  # of those, files deleted before they were compressed
        self._lock = threading.Lock()
        self._ledgers: dict[tuple[Path, str], Ledger] = {}
        self._files: dict[Path, tuple[Ledger, _File]] = {}
        self._scanned: set[Path] = set()
        self._gone: set[Path] = set()  # deleted while queued for compression
        self._inflight: dict[Path, tuple[Ledger, int]] = {}
        self._writers: weakref.WeakSet[Ticking] = weakref.WeakSet()
        self.wake: Callable[[], None] | None = None  # a writer has a marker pending (the daemon's watch)

    # ---------------------------------------------------------------- bookkeeping
    def ledger(self, directory: Path, bot: str, *, cap: int, writer: Ticking | None = None) -> Ledger:
        """The ledger of ``bot`` in ``directory`` (its rotated files are looked up once)."""
        if writer is not None:
            self._writers.add(writer)
        with self._lock:
            if directory not in self._scanned:
                self._scanned.add(directory)
                self._scan(directory)
            ledger = self._ledger(directory, bot)
            ledger.cap = cap
            return ledger

    def _ledger(self, directory: Path, bot: str) -> Ledger:
        key = (directory, bot)
        ledger = self._ledgers.get(key)
        if ledger is None:
            ledger = self._ledgers[key] = Ledger(directory, bot, store.DEFAULT_MAX_TOTAL)
        return ledger

    def _scan(self, directory: Path) -> None:
        try:
            bots = store.list_bots(directory)
            for bot in bots:
                ledger = self._ledger(directory, bot)
                with contextlib.suppress(OSError):
                    ledger.current = os.stat(store.current_path(directory, bot)).st_size
                    self.total += ledger.current
                for entry in store.list_rotated(directory, bot):
                    with contextlib.suppress(OSError):
                        self._add(ledger, entry.path, os.stat(entry.path).st_size, entry.compressed)
        except OSError:  # an unreadable folder: count what the writers write from now on
            pass

    def _add(self, ledger: Ledger, path: Path, size: int, compressed: bool) -> None:
        item = _File(path, size, compressed)
        ledger.rotated.append(item)
        ledger.rotated_bytes += size
        ledger.waiting += not compressed
        self.total += size
        self._files[path] = (ledger, item)

    def _remove(self, ledger: Ledger, item: _File) -> None:
        if not item.compressed and self.compressor is not None and self.compressor.busy(item.path):
            self._gone.add(item.path)
        ledger.rotated.remove(item)
        ledger.rotated_bytes -= item.size
        ledger.waiting -= not item.compressed
        self.total -= item.size
        self._files.pop(item.path, None)

    def set_current(self, ledger: Ledger, size: int) -> None:
        """The current file of ``ledger`` holds ``size`` bytes (opened, or after a failed write)."""
        with self._lock:
            self.total += size - ledger.current
            ledger.current = size

    def grow(self, ledger: Ledger, size: int) -> None:
        """``size`` bytes were appended to the current file."""
        with self._lock:
            ledger.current += size
            self.total += size

    def rotated(self, ledger: Ledger, path: Path, size: int) -> None:
        """The current file was renamed to ``path``; then hold the compression-lag bound."""
        victims: list[Path] = []
        with self._lock:
            ledger.current = 0
            self.total -= size
            self._add(ledger, path, size, False)
            limit = ledger.max_waiting
            while limit is not None and ledger.waiting > limit:
                item = self._oldest_waiting(ledger)
                self._remove(ledger, item)
                victims.append(item.path)
                self.dropped_waiting += 1
        self._unlink(victims)

    def _oldest_waiting(self, ledger: Ledger) -> _File:
        waiting = [item for item in ledger.rotated if not item.compressed]
        comp = self.compressor
        for item in waiting:  # leave the one being compressed, when there is another
            if comp is None or not comp.busy(item.path):
                return item
        return waiting[0]

    def compressing(self, path: Path) -> None:
        """The compressor starts on ``path``: its output, at most as big, counts from now on
        (called from its thread, which then calls :meth:`compressed` or :meth:`not_compressed`)."""
        with self._lock:
            found = self._files.get(path)
            if found is None:
                return
            ledger, item = found
            self.total += item.size
            ledger.inflight += item.size
            self._inflight[path] = (ledger, item.size)
        self.reserve(ledger, 0)

    def not_compressed(self, path: Path) -> None:
        """Compressing ``path`` failed or found it gone: its temporary output is gone too."""
        with self._lock:
            self._done(path)

    def _done(self, path: Path) -> None:
        ledger, size = self._inflight.pop(path, (None, 0))
        if ledger is not None:
            ledger.inflight -= size
            self.total -= size

    def compressed(self, path: Path, target: Path) -> None:
        """The compressor turned ``path`` into ``target`` (called from its thread)."""
        try:
            size = os.stat(target).st_size
        except OSError:
            size = 0
        with self._lock:
            self._done(path)
            gone = path in self._gone
            self._gone.discard(path)
            found = None if gone else self._files.pop(path, None)
            if found is not None:
                ledger, item = found
                self.total += size - item.size
                ledger.rotated_bytes += size - item.size
                ledger.waiting -= not item.compressed
                item.path, item.size, item.compressed = target, size, True
                self._files[target] = found
        if gone:  # deleted (to hold a cap) while it was being compressed: do not bring it back
            self._unlink([target])

    def forget(self, path: Path) -> None:
        """``path`` was deleted by someone else (the retention sweep)."""
        with self._lock:
            found = self._files.get(path) or self._files.get(store.twin(path))
            if found is not None:
                self._remove(*found)

    # ---------------------------------------------------------------- the caps
    def reserve(self, ledger: Ledger, size: int) -> None:
        """Make room for ``size`` more bytes in ``ledger``'s current file: delete the oldest
        rotated files while the bot's cap or the daemon-wide cap would be exceeded."""
        max_all = self.max_all
        if ledger.total + size <= ledger.cap and (max_all is None or self.total + size <= max_all):
            return  # the common case: two comparisons
        victims: list[Path] = []
        with self._lock:
            while ledger.rotated and ledger.total + size > ledger.cap:
                victims.append(self._drop_oldest(ledger))
            while max_all is not None and self.total + size > max_all:
                biggest = max(self._ledgers.values(), key=lambda item: item.rotated_bytes)
                if not biggest.rotated:
                    break  # only current files left: nothing more to delete
                victims.append(self._drop_oldest(biggest))
        self._unlink(victims)

    def _drop_oldest(self, ledger: Ledger) -> Path:
        item = ledger.rotated[0]
        self._remove(ledger, item)
        self.deleted += 1
        self.dropped_waiting += not item.compressed
        return item.path

    def _unlink(self, paths: list[Path]) -> None:
        for path in paths:
            for each in (path, store.twin(path)):
                with contextlib.suppress(OSError):
                    os.unlink(each)

    def tick(self) -> bool:
        """Let every live writer write its pending dropped-lines markers (the daemon's loop);
        whether one is still pending (then the loop comes back in a second)."""
        pending = False
        for writer in list(self._writers):
            pending = writer.tick() or pending
        return pending

    def poke(self) -> None:
        """A writer dropped lines: its marker is pending (the daemon's watch ticks until it is out)."""
        if self.wake is not None:
            self.wake()

    def forget_writer(self, writer: Ticking) -> None:
        self._writers.discard(writer)


class TokenBucket:
    """A write-rate limit: ``rate`` bytes/s with bursts of ``burst`` bytes.

    Once it runs dry it stays closed until it has refilled to half of ``burst``, so a bot that
    keeps flooding gets a dropped-lines marker every few seconds, not one per chunk.
    """

    __slots__ = ("burst", "limited", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now
        self.limited = False

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        self.stamp = now
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)

    def take(self, size: int, now: float) -> bool:
        """Whether ``size`` bytes may be written now (and take them)."""
        self.refill(now)
        if self.limited:
            if self.tokens < self.burst / 2:
                return False
            self.limited = False
        if self.tokens >= min(size, self.burst):
            self.tokens -= size
            return True
        self.limited = True
        return False

    def ready(self, now: float) -> bool:
        """Whether it has refilled after running dry."""
        self.refill(now)
        return not self.limited or self.tokens >= self.burst / 2
