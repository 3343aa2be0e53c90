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
:mod:`clawpen.logs.store`). The writer is not thread-safe: one thread (the daemon's loop, or a
reader thread per bot) calls it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from clawpen.errors import HostError, UsageError
from clawpen.logs import store

Stream = Literal["out", "err"]
STREAMS: tuple[Stream, ...] = ("out", "err")
MARKER = " …[cont]".encode()
DEFAULT_MAX_LINE = 16 << 10
DEFAULT_MAX_BYTES = 50 << 20
READ_SIZE = 64 << 10  # what the daemon should read from a pipe at a time
_MIN_LINE = 64
_TAGS: dict[str, bytes] = {"out": b"Z out ", "err": b"Z err "}


def _cut(data: bytes, limit: int) -> int:
    """Where to cut ``data`` (longer than ``limit``): at ``limit``, moved back to a UTF-8 boundary."""
    pos = limit
    while pos > limit - 3 and data[pos] & 0xC0 == 0x80:
        pos -= 1
    return limit if data[pos] & 0xC0 == 0x80 else pos


class LineFramer:
    """Splits a byte stream into lines on ``b"\\n"``, keeping an unfinished last line buffered.

    Bytes other than ``\\n`` are untouched (a ``\\r`` of CRLF stays in the line). A line longer
    than ``max_line`` is emitted in pieces, each but the last ending with :data:`MARKER`, so the
    buffer never holds more than ``max_line`` bytes.
    """

    __slots__ = ("_max", "_pending")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < _MIN_LINE:
            raise UsageError(f"max_line {max_line} is too small", hint=f"use {_MIN_LINE} bytes or more")
        self._max = max_line
        self._pending = b""

    @property
    def pending(self) -> int:
        """Bytes of the unfinished line held back."""
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines completed by ``chunk``, without their newline."""
        block = self.feed_block(chunk)
        return block.split(b"\n")[:-1] if block else []

    def flush(self) -> list[bytes]:
        """At end of stream: the unfinished last line, if any."""
        block = self.flush_block()
        return [block[:-1]] if block else []

    def feed_block(self, chunk: bytes) -> bytes:
        """Like :meth:`feed`, as one bytes object: the lines, each ending in ``\\n``, or ``b""``."""
        data = self._pending + chunk if self._pending else chunk
        limit = self._max
        end = data.rfind(b"\n") + 1
        if end == len(data):
            block, rest = data, b""
        else:
            block, rest = data[:end], data[end:]
        if end > limit + 1 and self._has_long(block):
            block = self._split_long(block)
        if len(rest) > limit:
            pieces = []
            while len(rest) > limit:
                pos = _cut(rest, limit)
                pieces.append(rest[:pos] + MARKER + b"\n")
                rest = rest[pos:]
            block += b"".join(pieces)
        self._pending = rest
        return block

    def flush_block(self) -> bytes:
        """Like :meth:`flush`, as one bytes object ending in ``\\n``, or ``b""``."""
        rest, self._pending = self._pending, b""
        return rest + b"\n" if rest else b""

    def _has_long(self, block: bytes) -> bool:
        # One rfind per ``limit`` bytes: the last newline within limit + 1 bytes of a line start
        # ends a line of at most ``limit`` bytes; none there means a longer line.
        limit = self._max
        start, size = 0, len(block)
        while size - start > limit + 1:
            newline = block.rfind(b"\n", start, start + limit + 1)
            if newline < 0:
                return True
            start = newline + 1
        return False

    def _split_long(self, block: bytes) -> bytes:
        limit = self._max
        lines: list[bytes] = []
        for whole in block.split(b"\n")[:-1]:
            rest = whole
            while len(rest) > limit:
                pos = _cut(rest, limit)
                lines.append(rest[:pos] + MARKER)
                rest = rest[pos:]
            lines.append(rest)
        lines.append(b"")
        return b"\n".join(lines)


class LogWriter:
    """Appends one bot's stdout and stderr records to ``<directory>/<bot>.log`` and rotates it.

    ``bot`` names the log: the bot's name, or ``name-r2`` for a replica (lowercase letters,
    digits and ``-``, up to 64 characters, no dot, so file names parse unambiguously).

    ``clock`` returns epoch seconds (``time.time`` in the daemon). The file rotates before a
    write that would take it past ``max_bytes`` (a single chunk larger than that still goes in
    whole) and on the first write of a new UTC day (``daily``). A rotated file is compressed by
    ``compressor`` in its thread, or right away in the caller's when there is none (0.5 s for
    50 MiB at the default level 1 here, blocking the caller: see docs/benchmarks.md). An
    existing current file is appended to; its day is the day of its first record.

    An ``OSError`` while writing (disk full, for one) raises :class:`~clawpen.errors.HostError`;
    the chunk may be partly written, and the next write starts on a new line. A failed rotation
    or compression raises it too, after the chunk was written to the current file. The caller
    should keep draining the pipe either way, or the bot blocks.
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
        compressor: store.Compressor | None = None,
        compress_level: int = store.DEFAULT_LEVEL,
        file_mode: int = 0o640,
        redact: Callable[[bytes], bytes] | None = None,
    ) -> None:
        if not store.LOG_NAME.match(bot):
            raise UsageError(
                f"log name {bot!r} is not allowed", hint="use the bot's name, or 'name-r2' for a replica"
            )
        if max_bytes <= 0:
            raise UsageError(f"max_bytes {max_bytes} must be above zero")
        self.directory = directory
        self.bot = bot
        self.path = store.current_path(directory, bot)
        self._clock = clock
        self._max_bytes = max_bytes
        self._daily = daily
        self._compressor = compressor
        self._level = compress_level
        self._mode = file_mode
        self._redact = redact  # applied to complete lines, so a secret is never split
        self._framers = {"out": LineFramer(max_line), "err": LineFramer(max_line)}
        self._sec = -1
        self._head = b""
        self._torn = False
        self._fd = -1
        self._size = 0
        self._day: int | None = None
        self.rotations = 0
        self.last_rotated: Path | None = None
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._open()
        except OSError as err:
            raise self._error("open", err) from err

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
        if self._fd < 0:
            raise UsageError(f"the log writer of {self.bot} is closed")
        if self._size == 0:
            return None
        return self._rotate(self._clock())

    def close(self) -> None:
        """Write both streams' unfinished lines and close the file. Safe to call twice."""
        if self._fd < 0:
            return
        try:
            for stream in STREAMS:
                self.finish(stream)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(self, block: bytes, tag: bytes) -> None:
        if self._fd < 0:
            raise UsageError(f"the log writer of {self.bot} is closed")
        if self._redact is not None:
            block = self._redact(block)
        now = self._clock()
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
        elif (self._daily and day != self._day) or self._size + size > self._max_bytes:
            try:
                self._rotate(now)
            except HostError as err:  # write the chunk anyway, then report
                failed = err
            self._day = day
        if self._torn:  # an earlier write failed half-way: start on a new line
            prefix = b"\n" + prefix
            size += 1
            self._torn = False
        try:
            written = os.writev(self._fd, (prefix, view))
            if written < size:
                self._write_all((prefix + bytes(view))[written:])
        except OSError as err:
            self._torn = True
            raise self._error("write", err) from err
        finally:
            self._size += size
        if failed is not None:
            raise failed

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, self._mode)
        self._size = os.fstat(self._fd).st_size
        self._day = None
        self._torn = False
        if self._size:  # a file left by an earlier run: its day, and whether it ends mid-line
            with open(self.path, "rb") as existing:
                first = store.parse_record_ts(existing.read(store.TS_LEN))
                existing.seek(self._size - 1)
                self._torn = existing.read(1) != b"\n"
            self._day = None if first is None else int(first) // 86400

    def _rotate(self, now: float) -> Path:
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            target = store.rotate(self.directory, self.bot, now)
            self._open()
        except OSError as err:
            if self._fd < 0:
                with contextlib.suppress(OSError):
                    self._open()
            raise self._error("rotate", err) from err
        self.rotations += 1
        self.last_rotated = target
        if self._compressor is not None:
            self._compressor.submit(target)  # queue full: retention_sweep hands it over later
        else:
            try:
                store.compress_file(target, level=self._level)
            except OSError as err:  # the .log stays; retention_sweep tries again
                raise self._error("compress", err) from err
        return target

    def _error(self, step: str, err: OSError) -> HostError:
        return HostError(
            f"cannot {step} the log of bot {self.bot}: {err.strerror or err}",
            where=str(self.path),
            hint="check free space and permissions of the log directory",
        )
