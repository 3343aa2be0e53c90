"""Reading a bot's records back: ``read_logs`` over rotated and current files, ``follow``.

Files are read in time order: rotated files by their stamp (the time each was closed), then the
current file. Records within a file are in the order they were written; ``since`` and ``until``
skip whole rotated files by their stamps, assuming the daemon's clock did not step back.

In the current file only lines ending in ``\\n`` count: a line without one is a write in
progress. Lines that are not records (a damaged file) are skipped.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import datetime
import gzip
import io
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from clawpen.errors import UsageError
from clawpen.logs import store
from clawpen.spec.units import UnitError, parse_duration

# The writer's streams (clawpen.logs.writer.STREAMS, a test checks they agree): reading logs
# must not import the writer, its budget and its threads.
STREAMS = ("out", "err")

BLOCK = 64 << 10
_MAX_CARRY = 1 << 20  # a "line" longer than this while reading backwards is not a record
_FOLLOW_READ = 1 << 20


class LogRecord(NamedTuple):
    """One record: when the daemon received it, from which stream, and the line."""

    ts: float
    stream: str
    text: str


class _Source(NamedTuple):
    path: Path
    lower: float  # no record in it is older (the previous file's stamp), -inf for the first
    upper: float  # no record in it is newer (its own stamp + 1 s), +inf for the current file
    current: bool


class _Filter:
    """Parses record lines and applies the filters, with the epoch of the last second cached."""

    def __init__(
        self, streams: Iterable[str], grep: str | None, since: float | None = None, until: float | None = None
    ) -> None:
        unknown = set(streams) - set(STREAMS)
        if unknown:
            raise UsageError(f"unknown stream {sorted(unknown)[0]!r}", hint="use 'out' and/or 'err'")
        try:
            self._grep = re.compile(grep) if grep is not None else None
        except re.error as err:
            raise UsageError(f"--grep {grep!r} is not a regular expression: {err}", where="--grep") from None
        self._streams = {s.encode() for s in streams}
        self.since = since
        self._lo = float("-inf") if since is None else since
        self._hi = float("inf") if until is None else until
        self._key = b""
        self._base = 0

    def parse(self, line: bytes) -> LogRecord | None:
        """The record on ``line`` (no newline), or None when it is not one."""
        if len(line) < 32 or line[19:20] != b"." or line[26:28] != b"Z " or line[31:32] != b" ":
            return None
        key = line[:19]
        if key != self._key:
            try:
                fields = (key[0:4], key[5:7], key[8:10], key[11:13], key[14:16], key[17:19])
                self._base = calendar.timegm(tuple(map(int, fields)))
            except ValueError:
                return None
            self._key = key
        try:
            ts = self._base + int(line[20:26]) / 1_000_000
        except ValueError:
            return None
        return LogRecord(ts, line[28:31].decode("ascii", "replace"), line[32:].decode("utf-8", "replace"))

    def keep(self, line: bytes) -> LogRecord | None:
        """The record on ``line`` if it passes the filters."""
        if line[28:31] not in self._streams:
            return None
        record = self.parse(line)
        if record is None or not self._lo <= record.ts <= self._hi:
            return None
        if self._grep is not None and self._grep.search(record.text) is None:
            return None
        return record

    def older(self, line: bytes) -> bool:
        """Whether ``line`` is a record from before ``since`` (reading backwards can stop)."""
        if self.since is None:
            return False
        record = self.parse(line)
        return record is not None and record.ts < self.since


def parse_since(value: str | float, now: float, *, flag: str = "--since") -> float:
    """Epoch seconds from ``"1h"``/``"30m"``/``"1h30m"`` (before ``now``), an RFC 3339 time
    (``"2026-11-24T10:00:00Z"``; without a zone, UTC) or a plain epoch number."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    with contextlib.suppress(ValueError):
        return float(text)
    if text and text[0].isdigit() and "-" in text[:5]:
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(
                f"{flag} {value!r} is not a time", where=flag, hint='write "2026-11-24T10:00:00Z"'
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()
    try:
        return now - parse_duration(text)
    except UnitError as err:
        raise UsageError(
            f"{flag} {value!r} is not a duration or a time",
            where=flag,
            hint='write "1h", "30m", "2026-11-24T10:00:00Z" or epoch seconds',
        ) from err


def _snapshot(directory: Path, bot: str) -> tuple[list[_Source], int | None]:
    """The rotated files and an open descriptor of the current file (None when there is none).

    The current file is opened between two listings that must agree, so a rotation in between
    cannot make a file be missed or read twice.
    """
    path = store.current_path(directory, bot)
    fd: int | None = None
    for _ in range(5):
        before = store.list_rotated(directory, bot)
        if fd is not None:
            os.close(fd)
        fd = _open_fd(path)
        after = store.list_rotated(directory, bot)
        if [(r.closed_at, r.seq) for r in before] == [(r.closed_at, r.seq) for r in after]:
            break
    sources: list[_Source] = []
    lower = float("-inf")
    for entry in after:
        sources.append(_Source(entry.path, lower, entry.closed_at + 1, False))
        lower = entry.closed_at
    sources.append(_Source(path, lower, float("inf"), True))
    return sources, fd


def _open(source: _Source, current_fd: int | None) -> io.BufferedIOBase | None:
    """Open a source; a rotated ``.log`` compressed meanwhile is read as its ``.gz``."""
    if source.current:
        return None if current_fd is None else os.fdopen(os.dup(current_fd), "rb")
    for path in (source.path, store.twin(source.path)):
        try:
            return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
        except FileNotFoundError:
            continue
    return None


def _forward(handle: io.BufferedIOBase, current: bool) -> Iterator[bytes]:
    for line in handle:
        if line.endswith(b"\n"):
            yield line[:-1]
        elif not current:  # a rotated file's last line without newline (a crash) still counts
            yield line


def _backward(handle: io.BufferedIOBase, end: int | None, current: bool) -> Iterator[bytes]:
    """Lines before ``end`` (default: the end), newest first, reading ``BLOCK`` bytes at a time."""
    pos = handle.seek(0, os.SEEK_END) if end is None else end
    carry = b""
    first = True
    while pos > 0:
        step = min(BLOCK, pos)
        pos -= step
        handle.seek(pos)
        parts = (handle.read(step) + carry).split(b"\n")
        if first:
            first = False
            last = parts.pop()  # after the last newline: b"" or a line being written
            if last and not current:
                parts.append(last)
        carry = parts.pop(0) if pos > 0 else b""
        if len(carry) > _MAX_CARRY:
            carry = b""
        yield from reversed(parts)


def _select(sources: list[_Source], since: float | None, until: float | None) -> list[_Source]:
    lo = float("-inf") if since is None else since
    hi = float("inf") if until is None else until
    return [s for s in sources if s.upper > lo and s.lower <= hi]


def _tail(
    sources: list[_Source], need: int, filt: _Filter, current_fd: int | None, end: int | None = None
) -> list[LogRecord]:
    """The last ``need`` records passing ``filt``: newest file first, plain files read backwards.

    ``current_fd`` is an open descriptor of the current file, read up to ``end`` (default: its end).
    """
    chunks: list[list[LogRecord]] = []
    for source in reversed(sources):
        if need <= 0:
            break
        handle = _open(source, current_fd)
        if handle is None:
            continue
        got: list[LogRecord] = []
        older = False
        with handle:
            if isinstance(handle, gzip.GzipFile):  # no cheap way backwards: keep a window
                window: collections.deque[LogRecord] = collections.deque(maxlen=need)
                window.extend(r for r in map(filt.keep, _forward(handle, source.current)) if r is not None)
                got = list(window)
            else:
                for line in _backward(handle, end if source.current else None, source.current):
                    record = filt.keep(line)
                    if record is not None:
                        got.append(record)
                        if len(got) == need:
                            break
                    elif filt.older(line):
                        older = True
                        break
                got.reverse()
        chunks.append(got)
        need -= len(got)
        if older:
            break
    return [record for chunk in reversed(chunks) for record in chunk]


def read_logs(
    directory: Path,
    bot: str,
    *,
    since: float | None = None,
    until: float | None = None,
    grep: str | None = None,
    tail: int | None = None,
    streams: Iterable[str] = STREAMS,
) -> Iterator[LogRecord]:
    """The bot's records in time order, filtered; with ``tail``, only the last ``tail`` of them.

    ``since``/``until`` are epoch seconds (inclusive; see :func:`parse_since`), ``grep`` a
    regular expression searched in the text, ``streams`` which of out/err. ``tail`` reads plain
    files backwards from their end in 64 KiB blocks and opens older files only while it still
    needs records (a ``.gz`` cannot be read backwards: it is read through, keeping the last
    ``tail`` in a window).
    """
    filt = _Filter(streams, grep, since, until)
    sources, fd = _snapshot(directory, bot)
    try:
        sources = _select(sources, since, until)
        if tail is not None:
            yield from _tail(sources, tail, filt, fd)
            return
        for source in sources:
            handle = _open(source, fd)
            if handle is None:
                continue
            with handle:
                for line in _forward(handle, source.current):
                    record = filt.keep(line)
                    if record is not None:
                        yield record
    finally:
        if fd is not None:
            os.close(fd)


def follow(
    directory: Path,
    bot: str,
    *,
    grep: str | None = None,
    streams: Iterable[str] = STREAMS,
    tail: int = 0,
    poll_interval: float = 0.5,
    sleep: Callable[[float], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[LogRecord]:
    """The last ``tail`` records, then each new record as it is appended, until ``stop()`` is
    true (checked when there is nothing new) or the caller stops iterating.

    When there is nothing new it waits for the kernel to report a change to the bot's file
    (inotify, :class:`clawpen.logs.watch.FileWatch`), at most ``poll_interval`` (then it looks
    anyway and checks ``stop``); without inotify it sleeps ``poll_interval``. ``sleep`` replaces
    the wait (tests drive it). When the current file is renamed by a rotation, it reads the old
    file to its end (the writer closes it before the rename), then the new one from its start.
    """
    from clawpen.logs.watch import FileWatch  # here: inotify (ctypes) only for `logs -f`

    filt = _Filter(streams, grep)
    path = store.current_path(directory, bot)
    watch = FileWatch(path) if sleep is None else None  # before the snapshot: no change is missed
    wait = sleep if sleep is not None else watch.wait if watch is not None else time.sleep
    sources, fd = _snapshot(directory, bot)
    pos = 0 if fd is None else _last_line_end(fd)
    try:
        if tail > 0:
            yield from _tail(sources, tail, filt, fd, pos)
        buffer = b""
        while True:
            if fd is None:
                fd, pos = _open_fd(path), 0
            if fd is not None:
                data = os.pread(fd, _FOLLOW_READ, pos)
                if data:
                    pos += len(data)
                    buffer += data
                    end = buffer.rfind(b"\n") + 1
                    lines, buffer = buffer[:end], buffer[end:]
                    if len(buffer) > _FOLLOW_READ:  # not a record file: do not grow
                        buffer = b""
                    yield from _records(filt, lines)
                    continue
                if _replaced(path, fd, pos):
                    yield from _records(filt, buffer + _read_rest(fd, pos))
                    os.close(fd)
                    fd, buffer = None, b""
                    continue
            if stop is not None and stop():
                return
            wait(poll_interval)
    finally:
        if fd is not None:
            os.close(fd)
        if watch is not None:
            watch.close()


def _records(filt: _Filter, lines: bytes) -> Iterator[LogRecord]:
    for line in lines.split(b"\n"):
        record = filt.keep(line)
        if record is not None:
            yield record


def _open_fd(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _last_line_end(fd: int) -> int:
    """The offset just after the file's last newline (where following starts)."""
    pos = os.fstat(fd).st_size
    while pos > 0:
        step = min(BLOCK, pos)
        found = os.pread(fd, step, pos - step).rfind(b"\n")
        if found >= 0:
            return pos - step + found + 1
        pos -= step
    return 0


def _replaced(path: Path, fd: int, pos: int) -> bool:
    """Whether ``path`` no longer names the file open on ``fd`` (rotated), or it was truncated."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    own = os.fstat(fd)
    return (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev) or own.st_size < pos


def _read_rest(fd: int, pos: int) -> bytes:
    parts = []
    while data := os.pread(fd, _FOLLOW_READ, pos):
        parts.append(data)
        pos += len(data)
    return b"".join(parts)
