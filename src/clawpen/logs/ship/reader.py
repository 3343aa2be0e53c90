"""Reading one log's records after a cursor, in order, across rotated (``.log``/``.gz``) and
current files, in bounded memory (a block at a time; no file is read whole).

A :class:`LogReader` starts at a :class:`~clawpen.logs.ship.cursor.Position` (None: the oldest
kept record) and hands out records with the position just after each, so the shipper can store
the position of the last acknowledged one. It holds the file it reads open: a rotation renames
that file, which the reader finishes through its descriptor before it moves to the next one.
Only complete lines of the current file count (a line without its newline is a write in
progress); lines that are not records (a damaged file) are passed over.

:class:`DirWatch` wakes the shipper when a log file of the folder changes (inotify, as
:class:`clawpen.logs.watch.FileWatch` but for several names).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from clawpen.logs import store
from clawpen.logs.ship.cursor import CURRENT, Position, key_of, stamp_of_key
from clawpen.logs.watch import FileWatch

BLOCK = 256 << 10
MAX_LINE = 4 << 20  # a "line" longer than this is cut (the writer's lines are far shorter)
Key = tuple[str, int]


class Line(NamedTuple):
    """One record line (no newline) and the position just after it."""

    at: float
    stream: str
    text: bytes
    end: Position


def _rotated(directory: Path, log: str) -> dict[Key, store.RotatedFile]:
    return {(store.stamp_of(r.closed_at), r.seq): r for r in store.list_rotated(directory, log)}


def _isize(path: Path) -> int:
    """The uncompressed size a gzip file's trailer gives (mod 4 GiB), or its size for a ``.log``."""
    try:
        if not path.name.endswith(".gz"):
            return path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int(struct.unpack("<I", fh.read(4))[0])
    except (OSError, struct.error):
        return 0


class LogReader:
    """Records of one log after a position (see the module doc). Not thread-safe."""

    def __init__(self, directory: Path, log: str, start: Position | None) -> None:
        self.directory = directory
        self.log = log
        self.lost = ""  # why records before the start could not all be found (a file deleted)
        self._key: Key | None = None  # the rotated file being read; None: the current file
        self._prev: Key | None = None  # current file: the newest rotated file when it was opened
        self._fd: int | None = None
        self._gz: gzip.GzipFile | None = None
        self._ino = 0
        self._offset = 0
        self._at = 0.0
        self._buf = b""  # gz only: bytes read from _offset on
        self._start(start)

    # ---------------------------------------------------------------- opening
    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._gz is not None:
            self._gz.close()
            self._gz = None
        self._buf = b""

    def close(self) -> None:
        self._close_file()

    def _open_rotated(self, key: Key, offset: int) -> bool:
        entry = _rotated(self.directory, self.log).get(key)
        if entry is None:
            return False
        for path in (entry.path, store.twin(entry.path)):
            try:
                if path.name.endswith(".gz"):
                    gz = gzip.GzipFile(path, "rb")
                    self._close_file()
                    self._gz = gz
                    with contextlib.suppress(EOFError, OSError):
                        gz.seek(offset)
                    self._ino = 0
                else:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    self._close_file()
                    self._fd = fd
                    self._ino = os.fstat(fd).st_ino
            except FileNotFoundError:
                continue
            self._key, self._prev, self._offset = key, None, offset
            return True
        return False

    def _open_current(self, offset: int) -> bool:
        """Open the current file between two listings that agree (no rotation missed)."""
        path = store.current_path(self.directory, self.log)
        for _ in range(5):
            before = max(_rotated(self.directory, self.log), default=None)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            if max(_rotated(self.directory, self.log), default=None) == before:
                self._close_file()
                self._fd, self._key, self._prev = fd, None, before
                self._ino, self._offset = os.fstat(fd).st_ino, offset
                return True
            os.close(fd)
        return False

    def _first_after(self, key: Key | None) -> bool:
        """Open the oldest rotated file after ``key`` (None: the oldest), else the current one."""
        for k in sorted(_rotated(self.directory, self.log)):
            if (key is None or k > key) and self._open_rotated(k, 0):
                return True
        return self._open_current(0)

    def _start(self, pos: Position | None) -> None:
        if pos is None:
            self._first_after(None)
            return
        self._at = pos.at
        if not pos.current:
            key = key_of(pos.file)
            if not self._open_rotated(key, pos.offset):
                self.lost = f"{self.log}: file {pos.file} is gone (retention)"
                self._first_after(key)
            return
        path = store.current_path(self.directory, self.log)
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            same = st.st_ino == pos.ino and st.st_size >= pos.offset
            if same and self._open_current(pos.offset) and self._ino == pos.ino:
                return
        prev = key_of(pos.prev) if pos.prev else None
        later = sorted(k for k in _rotated(self.directory, self.log) if prev is None or k > prev)
        if later and self._open_rotated(later[0], 0):
            if self._gz is not None or self._ino == pos.ino:  # the file we were reading, rotated
                self._close_file()
                self._open_rotated(later[0], pos.offset)
                return
            self.lost = f"{self.log}: the file being shipped is gone (retention)"
            return
        if not later:
            self._open_current(0)  # a new current file (the old one was removed)

    # ---------------------------------------------------------------- reading
    def _position(self, offset: int) -> Position:
        if self._key is None:
            prev = "" if self._prev is None else stamp_of_key(self._prev)
            return Position(CURRENT, offset, self._at, self._ino, prev)
        return Position(stamp_of_key(self._key), offset, self._at)

    def _chunk(self, size: int) -> bytes:
        """Bytes of the open file from the read offset on (at most ``size``; b"" at its end)."""
        if self._fd is not None:
            return os.pread(self._fd, size, self._offset)
        if self._gz is not None:
            while len(self._buf) < size:
                try:
                    more = self._gz.read(BLOCK)
                except (EOFError, OSError, gzip.BadGzipFile):  # a damaged .gz: what could be read
                    more = b""
                if not more:
                    break
                self._buf += more
            return self._buf[:size]
        return b""

    def _consume(self, count: int) -> None:
        self._offset += count
        if self._gz is not None:
            self._buf = self._buf[count:]

    def _rotated_away(self) -> bool:
        """Whether the current file we read was renamed (so it is complete)."""
        try:
            return store.current_path(self.directory, self.log).stat().st_ino != self._ino
        except FileNotFoundError:
            return (
                bool(_rotated(self.directory, self.log))
                and max(_rotated(self.directory, self.log)) != self._prev
            )

    def _advance_file(self) -> bool:
        """At the end of the open file: move to the next one. False when there is none yet."""
        if self._fd is None and self._gz is None:
            if self._key is None:
                return self._open_current(0) or self._first_after(None)
            return self._first_after(self._key)
        if self._key is not None:
            return self._first_after(self._key)
        if not self._rotated_away():
            return False
        if self._chunk(1):  # written just before the rotation
            return True
        later = sorted(k for k in _rotated(self.directory, self.log) if self._prev is None or k > self._prev)
        if not later:
            return self._open_current(0)
        return self._first_after(later[0])  # later[0] is the file we just finished

    def read(self, max_records: int, max_bytes: int = 4 << 20) -> list[Line]:
        """The next records (at most ``max_records``, about ``max_bytes``), in order; [] when there
        is nothing new yet."""
        out: list[Line] = []
        size = 0
        want = BLOCK
        while len(out) < max_records and size < max_bytes:
            data = self._chunk(want)
            if not data:
                if not self._advance_file():
                    break
                want = BLOCK
                continue
            used = data.rfind(b"\n") + 1
            if used == 0:
                if len(data) < want:  # the end of the file
                    if self._key is None and not self._rotated_away():
                        break  # a line being written
                    used = len(data)  # a finished file's last line without newline (a crash)
                elif want < MAX_LINE:
                    want *= 2
                    continue
                else:
                    used = len(data)  # cut
            chunk, pos, base = data[:used], 0, self._offset
            while pos < used and len(out) < max_records and size < max_bytes:
                nl = chunk.find(b"\n", pos)
                raw = chunk[pos : used if nl < 0 else nl]
                pos = used if nl < 0 else nl + 1
                at = store.parse_record_ts(raw)
                if at is None or len(raw) < 32 or raw[27:28] != b" ":
                    continue
                self._at = at
                out.append(
                    Line(at, raw[28:31].decode("ascii", "replace"), raw[32:], self._position(base + pos))
                )
                size += len(raw) + 1
            self._consume(pos)
            want = BLOCK
        return out

    # ---------------------------------------------------------------- backlog
    def unshipped_bytes(self) -> int:
        """Bytes of records after the read position (``.gz``: their uncompressed size)."""
        total = 0
        if self._fd is not None:
            total += max(0, os.fstat(self._fd).st_size - self._offset)
        elif self._gz is not None and self._key is not None:
            entry = _rotated(self.directory, self.log).get(self._key)
            if entry is not None:
                total += max(0, _isize(entry.path) - self._offset)
        rotated = _rotated(self.directory, self.log)
        if self._key is not None:
            later = [k for k in rotated if k > self._key]
        elif self._fd is not None and self._rotated_away():  # ours is the first after _prev
            later = sorted(k for k in rotated if self._prev is None or k > self._prev)[1:]
        else:
            return total
        total += sum(_isize(rotated[k].path) for k in later)
        return total + store.file_size(store.current_path(self.directory, self.log))
        return total

    def next_at(self) -> float | None:
        """The time of the next record, without moving (None when there is none)."""
        if self._fd is not None:
            head = os.pread(self._fd, store.TS_LEN, self._offset)
        else:
            head = self._chunk(store.TS_LEN)
        if len(head) == store.TS_LEN:
            return store.parse_record_ts(head)
        if self._key is not None or self._rotated_away():
            return self._at if self.unshipped_bytes() else None  # in a later file: about now
        return None

    def skip(self, count_bytes: int) -> tuple[int, Position | None]:
        """Pass over records worth at least ``count_bytes`` (the oldest); (lines, position after)."""
        lines = 0
        passed = 0
        last: Position | None = None
        while passed < count_bytes:
            batch = self.read(1000, count_bytes - passed)
            if not batch:
                break
            for line in batch:
                passed += len(line.text) + 33
                lines += 1
                last = line.end
        return lines, last


class DirWatch(FileWatch):
    """Wake on a change to a log file of one folder whose name ``accept`` takes (inotify; a
    plain sleep without it)."""

    def __init__(self, directory: Path, accept: Callable[[str], bool]) -> None:
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory / "*", accept)  # (the folder of "*": the name is not used)
