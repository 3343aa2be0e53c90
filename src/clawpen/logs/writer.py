"""Turning a bot's stdout/stderr bytes into timestamped records in ``<dir>/<bot>.log``.

A record is one line::

    2026-11-24T10:00:00.123456Z out the bot's line, bytes as they came
    2026-11-24T10:00:00.123456Z err another line

**Timestamps are per chunk.** The daemon reads a chunk from a bot's pipe and hands it to
:meth:`LogWriter.write`; every line completed by that chunk gets the time the chunk was received
(one clock call per chunk, so a line costs nothing extra). Lines that arrive together share a
timestamp; a line cut across two reads gets the time of the read that completed it.

**Fast path.** Framing and prefixing are bytes operations done in C over the whole chunk: find
the last newline, ``replace(b"\\n", b"\\n" + prefix)`` over the complete lines, one ``writev`` of
(prefix, lines) per chunk. There is no Python code per line. Checking for over-long lines costs
one ``rfind`` per ``max_line`` bytes; only a chunk that has one takes the per-line slow path.

**Bounded memory.** Nothing is queued: the daemon reads a bounded chunk (64 KiB suits a pipe),
writes it and reads again, so a flooding bot fills its pipe and blocks in ``write(2)`` (the
pipe is the backpressure). The writer keeps at most ``max_line`` bytes of unfinished line per
stream: a longer line is cut into pieces of at most ``max_line`` bytes, each but the last ending
with :data:`MARKER`, at a UTF-8 character boundary when there is one nearby.

**Order.** Both streams of a bot go to one file through one descriptor, in the order the chunks
were written; a line is placed when its newline arrives. The file is opened with ``O_APPEND`` and
each chunk is one system call, so a concurrent reader sees whole chunks appear, never a rewrite.

Rotation by size and by UTC day is done here, on the write that would cross the limit (see
:mod:`clawpen.logs.store`), and so are the caps (:mod:`clawpen.logs.budget`): before a write
that would take the bot, or every bot together, past its cap, the oldest rotated files are
deleted. The writer is not thread-safe: one thread (the daemon's loop, or a reader thread per
bot) calls it.

**Dropping, visibly** (:func:`daemon_writer`, the daemon's settings). A bot that writes faster
than its rate (a token bucket, 1 MiB/s with 16 MiB bursts) has whole lines dropped, and so has
every bot while the state dir's filesystem is below its watermark or a write failed
(:mod:`clawpen.logs.space`). The pipe is drained all the same, so no bot blocks on it. When
writing is possible again, the next record is ``[clawpen: N lines dropped: rate limit]`` (or
``disk full``) on the ``err`` stream, and the daemon is told through ``notify`` (at most once
a minute per kind: ``log-dropped``, ``log-error``). Such a writer never raises for a failed
open, write or rotation; it pauses and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from clawpen.errors import HostError, UsageError
from clawpen.fsutil import write_all
from clawpen.logs import store
from clawpen.logs.budget import (
    DEFAULT_BURST,
    DEFAULT_MAX_WAITING,
    DEFAULT_RATE,
    LogBudget,
    TokenBucket,
)
from clawpen.logs.framer import DEFAULT_MAX_LINE, MARKER, LineFramer
from clawpen.logs.space import RETRY_AFTER_ERROR

if TYPE_CHECKING:
    from clawpen.logs.upkeep import Compressor

__all__ = ["DEFAULT_MAX_LINE", "MARKER", "STREAMS", "LineFramer", "LogWriter", "Stream", "daemon_writer"]

Stream = Literal["out", "err"]
STREAMS: tuple[Stream, ...] = ("out", "err")
DEFAULT_MAX_BYTES = 50 << 20
READ_SIZE = 64 << 10  # what the daemon should read from a pipe at a time
REPORT_EVERY = 60.0  # at most one event of a kind per writer and minute
DISK_FULL = "disk full"
RATE_LIMIT = "rate limit"
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_MIN_ROTATE = 64 << 10  # the least size a cap makes the writer rotate at
_TAGS: dict[str, bytes] = {"out": b"Z out ", "err": b"Z err "}


class LogWriter:
    """Appends one bot's stdout and stderr records to ``<directory>/<bot>.log`` and rotates it.

    ``bot`` names the log: the bot's name, or ``name-r2`` for a replica (lowercase letters,
    digits and ``-``, up to 64 characters, no dot, so file names parse unambiguously).

    ``clock`` returns epoch seconds (``time.time`` in the daemon). The file rotates before a
    write that would take it past ``max_bytes`` (a single chunk larger than that still goes in
    whole; a small ``max_total`` lowers it to a quarter of the cap) and on the first write of a
    new UTC day (``daily``). A rotated file is compressed by ``compressor`` in its thread, or
    right away in the caller's when there is none (0.5 s for 50 MiB at the default level 1
    here, blocking the caller: see docs/benchmarks.md). An existing current file is appended
    to; its day is the day of its first record.

    Caps, held on every write: the bot's files together stay within ``max_total``, every bot's
    within the budget's ``max_all`` (the compressor's budget, shared by the daemon's writers),
    and at most ``max_waiting`` rotated files wait for compression (None: no bound).
    ``rate``/``burst`` (bytes/s, bytes) limit the bot's write rate (None: no limit).

    Without ``notify``, an ``OSError`` while writing (disk full, for one) raises
    :class:`~clawpen.errors.HostError`; the chunk may be partly written, and the next write
    starts on a new line. A failed rotation or compression raises it too, after the chunk was
    written to the current file. With ``notify(kind, text)``, nothing raises: the writer pauses
    and drops lines, counted in ``dropped`` and shown by a marker record afterwards.
    """

    def __init__(
        self,
        directory: Path,
        bot: str,
        clock: Callable[[], float],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_line: int = DEFAULT_MAX_LINE,
        daily: bool = True,
        compressor: Compressor | None = None,
        compress_level: int = store.DEFAULT_LEVEL,
        file_mode: int = 0o640,
        redact: Callable[[bytes], bytes] | None = None,
        max_total: int = store.DEFAULT_MAX_TOTAL,
        max_waiting: int | None = None,
        rate: float | None = None,
        burst: float | None = None,
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        if not store.LOG_NAME.match(bot):
            raise UsageError(
                f"log name {bot!r} is not allowed", hint="use the bot's name, or 'name-r2' for a replica"
            )
        if max_bytes <= 0 or max_total <= 0:
            raise UsageError(f"max_bytes {max_bytes} and max_total {max_total} must be above zero")
        if (rate is not None and rate <= 0) or (burst is not None and burst <= 0):
            raise UsageError(f"rate {rate} and burst {burst} must be above zero (or None: no limit)")
        self.directory = directory
        self.bot = bot
        self.path = store.current_path(directory, bot)
        self._clock = clock
        self._daily = daily
        self._compressor = compressor
        self._level = compress_level
        self._mode = file_mode
        self._redact = redact  # applied to complete lines, so a secret is never split
        self._framers = {"out": LineFramer(max_line), "err": LineFramer(max_line)}
        self._budget = compressor.budget if compressor is not None else LogBudget(max_all=None)
        limit = min(max_bytes, max(max_total // 4, _MIN_ROTATE))
        if self._budget.max_all is not None:
            limit = min(limit, max(self._budget.max_all // 8, _MIN_ROTATE))
        self._rotate_at = limit
        self._bucket = None if rate is None else TokenBucket(rate, burst or 4 * rate, clock())
        self._notify = notify
        self._reported: dict[str, float] = {}
        self._pending: dict[str, int] = {}  # lines dropped since the last marker, by reason
        self.dropped: dict[str, int] = {}  # lines dropped in all, by reason
        self._pause_until = float("-inf")
        self._pause_reason = DISK_FULL
        self._closed = False
        self._sec = -1
        self._head = b""
        self._torn = False
        self._fd = -1
        self._size = 0
        self._day: int | None = None
        self.rotations = 0
        self.last_rotated: Path | None = None
        self._ledger = self._budget.ledger(directory, bot, cap=max_total, writer=self)
        self._ledger.max_waiting = max_waiting
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._open()
        except OSError as err:
            if notify is None:
                raise self._error("open", err) from err
            self._failed("open", err, 0)  # a full disk at start: try again on a later write

    def write(self, stream: Stream, chunk: bytes) -> None:
        """Frame ``chunk`` read from ``stream`` and append the lines it completes, stamped now."""
        try:
            framer = self._framers[stream]
        except KeyError:
            raise UsageError(f"unknown stream {stream!r}", hint="use 'out' or 'err'") from None
        block = framer.feed_block(chunk)
        if block:
            self._emit(block, _TAGS[stream])

    def finish(self, stream: Stream) -> None:
        """End of ``stream`` (EOF on its pipe): write its unfinished last line, if any."""
        block = self._framers[stream].flush_block()
        if block:
            self._emit(block, _TAGS[stream])

    def rotate(self) -> Path | None:
        """Rotate now (if the current file holds anything); returns the rotated file's name."""
        if self._closed:
            raise UsageError(f"the log writer of {self.bot} is closed")
        if self._size == 0 or self._fd < 0:
            return None
        return self._rotate(self._clock())

    def tick(self) -> bool:
        """Write the dropped-lines marker if lines were dropped and writing is possible again
        (the daemon calls this every second while one is pending, so a bot that fell silent gets
        its marker too); whether one is still pending."""
        if self._closed or not self._pending:
            return False
        now = self._clock()
        if self._bucket is not None and not self._bucket.ready(now):
            return True
        if not self._blocked(0, now):
            self._write_markers(now)
        return bool(self._pending)

    def report(self, kind: str, text: str) -> None:
        """Tell the daemon (``notify``), at most once a minute per ``kind``."""
        if self._notify is None:
            return
        now = self._clock()
        last = self._reported.get(kind)
        if last is not None and 0 <= now - last < REPORT_EVERY:
            return
        self._reported[kind] = now
        with contextlib.suppress(Exception):  # a full event store must not stop the logging
            self._notify(kind, text)

    def close(self) -> None:
        """Write both streams' unfinished lines (and a pending marker) and close the file.
        Safe to call twice."""
        if self._closed:
            return
        try:
            for stream in STREAMS:
                self.finish(stream)
            if self._pending and not self._blocked(0, self._clock()):
                self._write_markers(self._clock())
        finally:
            self._closed = True
            self._budget.forget_writer(self)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- writing
    def _emit(self, block: bytes, tag: bytes) -> None:
        if self._closed:
            raise UsageError(f"the log writer of {self.bot} is closed")
        now = self._clock()
        if self._notify is not None and self._blocked(len(block), now):
            self._drop(self._pause_reason, block)
            return
        if self._bucket is not None and not self._bucket.take(len(block), now):
            self._drop(RATE_LIMIT, block)
            return
        if self._fd < 0:  # a rotation could not open the new file: try again now
            try:
                self._open()
            except OSError as err:
                raise self._error("open", err) from err
        if self._redact is not None:
            block = self._redact(block)
        if self._pending:
            self._write_markers(now)
        self._append(block, tag, now)

    def _blocked(self, size: int, now: float) -> bool:
        """Whether writing must pause (low space, a recent failure); reopens a file that could
        not be opened once it may write again."""
        space = self._budget.space
        if space is not None:
            if not space.allow(size):
                if space.space is not None and space.space.low:
                    self._pause_reason = DISK_FULL
                return True
        elif now < self._pause_until:
            return True
        if self._fd < 0 and not self._closed:
            try:
                self._open()
            except OSError as err:
                self._failed("open", err, 0)
                return True
        return False

    def _drop(self, reason: str, block: bytes) -> None:
        lines = block.count(b"\n")
        self._pending[reason] = self._pending.get(reason, 0) + lines
        self._budget.poke()
        self.dropped[reason] = total = self.dropped.get(reason, 0) + lines
        self.report("log-dropped", f"dropping log lines of {self.bot}: {reason} ({total} so far)")

    def _write_markers(self, now: float) -> None:
        pending, self._pending = self._pending, {}
        text = b"".join(b"[clawpen: %d lines dropped: %b]\n" % (n, r.encode()) for r, n in pending.items())
        if not self._append(text, _TAGS["err"], now):
            for reason, n in pending.items():  # not written: say it next time
                self._pending[reason] = self._pending.get(reason, 0) + n

    def _append(self, block: bytes, tag: bytes, now: float) -> bool:
        """Write ``block`` (complete lines) as records stamped ``now``; False when it was not
        written (only with ``notify``: otherwise the error is raised)."""
        sec, micros = divmod(round(now * 1_000_000), 1_000_000)
        if sec != self._sec:
            self._sec = sec
            self._head = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)).encode()
        prefix = b"%b%06d%b" % (self._head, micros, tag)
        # Every "\n" gets the next record's prefix after it; the last one's is cut off the view.
        body = block.replace(b"\n", b"\n" + prefix)
        view = memoryview(body)[: len(body) - len(prefix)]
        size = len(prefix) + len(view)
        day = sec // 86400
        failed: HostError | None = None
        if self._size == 0:
            self._day = day
        elif (self._daily and day != self._day) or self._size + size > self._rotate_at:
            try:
                self._rotate(now)
            except HostError as err:  # write the chunk anyway, then report
                failed = err
            self._day = day
        if self._fd < 0:  # the rotation could not open the new file
            if failed is not None and self._notify is None:
                raise failed
            self._drop(self._pause_reason, block)
            return False
        if self._torn:  # an earlier write failed half-way: start on a new line
            prefix = b"\n" + prefix
            size += 1
        self._budget.reserve(self._ledger, size)
        try:
            written = os.writev(self._fd, (prefix, view))
            if written < size:
                self._write_all((prefix + bytes(view))[written:])
        except OSError as err:
            self._torn = True
            self._resync()
            if self._notify is None:
                raise self._error("write", err) from err
            self._failed("write", err, block.count(b"\n"))
            return False
        self._torn = False
        self._size += size
        self._budget.grow(self._ledger, size)
        if failed is not None:
            if self._notify is None:
                raise failed
            self.report("log-error", failed.what)
        return True

    def _write_all(self, data: bytes) -> None:
        write_all(self._fd, data)

    def _failed(self, step: str, err: OSError, lines: int) -> None:
        """A write, open or rotation failed (with ``notify``): pause, count, tell."""
        self._pause_reason = DISK_FULL if err.errno in _FULL_ERRNOS else "write error"
        if lines:
            self._pending[self._pause_reason] = self._pending.get(self._pause_reason, 0) + lines
            self._budget.poke()
            self.dropped[self._pause_reason] = self.dropped.get(self._pause_reason, 0) + lines
        self._pause_until = self._clock() + RETRY_AFTER_ERROR
        if self._budget.space is not None:
            self._budget.space.failed(err)
        self.report(
            "log-error",
            f"cannot {step} the log of {self.bot}: {err.strerror or err}; "
            "its lines are dropped (and counted) until it can again",
        )

    def _resync(self) -> None:
        """After a failed write: the file's real size (for the rotation and the caps) and
        whether it ends mid-record."""
        with contextlib.suppress(OSError):
            self._size = os.fstat(self._fd).st_size
            self._budget.set_current(self._ledger, self._size)
            with open(self.path, "rb") as current:
                current.seek(max(0, self._size - 1))
                self._torn = self._size > 0 and current.read(1) != b"\n"

    # ---------------------------------------------------------------- files
    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, self._mode)
        try:
            size = os.fstat(fd).st_size
            day: int | None = None
            torn = False
            if size:  # a file left by an earlier run: its day, and whether it ends mid-line
                with open(self.path, "rb") as existing:
                    first = store.parse_record_ts(existing.read(store.TS_LEN))
                    existing.seek(size - 1)
                    torn = existing.read(1) != b"\n"
                day = None if first is None else int(first) // 86400
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size, self._day, self._torn = fd, size, day, torn
        self._budget.set_current(self._ledger, size)

    def _rotate(self, now: float) -> Path:
        size = self._size
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            target = store.rotate(self.directory, self.bot, now, after=self.last_rotated)
        except OSError as err:
            if self._fd < 0:
                with contextlib.suppress(OSError):
                    self._open()
            raise self._error("rotate", err) from err
        self._budget.rotated(self._ledger, target, size)
        self._size = 0
        self.rotations += 1
        self.last_rotated = target
        try:
            self._open()
        except OSError as err:
            raise self._error("open", err) from err
        finally:
            self._compress(target)
        return target

    def _compress(self, target: Path) -> None:
        if self._compressor is not None:
            self._compressor.submit(target)  # queue full: the sweep, or the waiting bound, sees to it
            return
        self._budget.compressing(target)
        done: Path | None = None
        try:
            done = store.compress_file(target, level=self._level)
        except OSError as err:  # the .log stays; retention_sweep tries again
            if self._notify is None:
                raise self._error("compress", err) from err
            self.report("log-error", f"cannot compress {target.name}: {err.strerror or err}")
        finally:
            if done is not None:
                self._budget.compressed(target, done)
            else:
                self._budget.not_compressed(target)

    def _error(self, step: str, err: OSError) -> HostError:
        return HostError(
            f"cannot {step} the log of bot {self.bot}: {err.strerror or err}",
            where=str(self.path),
            hint="check free space and permissions of the log directory",
        )


def daemon_writer(
    directory: Path,
    bot: str,
    clock: Callable[[], float],
    compressor: Compressor,
    *,
    redact: Callable[[bytes], bytes] | None,
    notify: Callable[[str, str], None],
) -> LogWriter:
    """A writer with the daemon's settings: the caps, at most 2 rotated files waiting for the
    compressor, 1 MiB/s with 16 MiB bursts, and pausing (never raising) on a full disk."""
    return LogWriter(
        directory,
        bot,
        clock,
        compressor=compressor,
        redact=redact,
        notify=notify,
        max_waiting=DEFAULT_MAX_WAITING,
        rate=DEFAULT_RATE,
        burst=DEFAULT_BURST,
    )
