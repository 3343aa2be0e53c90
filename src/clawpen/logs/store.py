"""A bot's log files on disk: naming, rotation, gzip compression and retention.

Files of bot ``web`` in the log directory::

    web.log                         current file; the writer appends to it (O_APPEND)
    web.20261124T000003.log         rotated, not compressed yet (or left for the sweep)
    web.20261124T000003.log.gz      rotated and compressed
    web.20261124T000003-1.log.gz    a second rotation within the same second

The stamp is the UTC time the file was *closed* (the rotation), so every record in it is at or
before the stamp (with a clock that does not step back) and the file after it starts after it.
Retention and ``read_logs(since=...)`` rely on that: a file whose stamp is older than the limit
holds nothing newer.

Rotation is a rename after an fsync, so a reader holding the current file keeps a complete file
and a reader that lists the folder sees each record in exactly one file. Compression writes a
hidden temporary file, fsyncs it, renames it to ``.log.gz`` and only then removes the ``.log``:
for a moment both exist, and readers take the ``.gz`` (the two hold the same records).

Compression either happens at rotation, in the caller's thread, or in the background thread of
:class:`clawpen.logs.upkeep.Compressor` (one per daemon, shared by every bot's writer): zlib
releases the GIL while it deflates, so the daemon's loop keeps reading pipes while a 50 MiB file
is compressed on the other core. Its queue is bounded; when it is full the rotated file stays
``.log`` and the next :func:`clawpen.logs.upkeep.retention_sweep` hands it over again (unless
the writer deletes it first: a bot may have only a few rotated files waiting for compression,
see :mod:`clawpen.logs.budget`).

The compressor also carries the daemon's :class:`~clawpen.logs.budget.LogBudget` (the byte
counts behind the caps enforced on write), since it is the one log object every writer shares.
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import gzip
import os
import re
import time
from pathlib import Path
from typing import NamedTuple

DEFAULT_MAX_AGE = 30 * 86400.0
DEFAULT_MAX_TOTAL = 1 << 30
DEFAULT_LEVEL = 1  # 50 MiB of varied records: level 1 0.5 s, 32 %; level 6 2.2 s, 26 %
TS_LEN = 27  # len("2026-11-24T10:00:00.123456Z")

_STAMP = "%Y%m%dT%H%M%S"
_NAME = r"[a-z][a-z0-9-]{0,63}"  # a bot name, or "name-r2" for a replica: never a dot
LOG_NAME = re.compile(rf"^{_NAME}$")
_ROTATED = re.compile(rf"^(?P<bot>{_NAME})\.(?P<stamp>\d{{8}}T\d{{6}})(?:-(?P<seq>\d+))?\.log(?P<gz>\.gz)?$")
_CURRENT = re.compile(rf"^(?P<bot>{_NAME})\.log$")
_COPY_BLOCK = 1 << 20


class RotatedFile(NamedTuple):
    """One rotated file of a bot (the ``.gz`` when both forms exist)."""

    path: Path
    closed_at: float  # epoch seconds of the stamp (whole seconds, UTC)
    seq: int
    compressed: bool


def current_path(directory: Path, bot: str) -> Path:
    """The file the writer appends to."""
    return directory / f"{bot}.log"


def stamp_of(now: float) -> str:
    """``20261124T000003`` for an epoch time (UTC, whole seconds)."""
    return time.strftime(_STAMP, time.gmtime(int(now)))


@functools.lru_cache(maxsize=64)
def _second(prefix: bytes) -> int:
    """``2026-11-24T10:00:00`` as epoch seconds (ValueError when it is not one). Records of one
    second share it, so strptime runs about once a second of log, not once a line."""
    return calendar.timegm(time.strptime(prefix.decode("ascii"), "%Y-%m-%dT%H:%M:%S"))


def parse_record_ts(line: bytes) -> float | None:
    """The epoch time at the start of a record line, or None when it does not start with one."""
    if len(line) < TS_LEN or line[19:20] != b"." or line[26:27] != b"Z":
        return None
    try:
        return _second(line[:19]) + int(line[20:26]) / 1_000_000
    except (ValueError, UnicodeDecodeError):
        return None


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_rotated(directory: Path, bot: str) -> list[RotatedFile]:
    """The bot's rotated files, oldest first (by stamp, then sequence number)."""
    found: dict[tuple[str, int], RotatedFile] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        match = _ROTATED.match(name)
        if match is None or match["bot"] != bot:
            continue
        key = (match["stamp"], int(match["seq"] or 0))
        gz = match["gz"] is not None
        if key in found and found[key].compressed:
            continue
        closed = float(calendar.timegm(time.strptime(key[0], _STAMP)))
        found[key] = RotatedFile(directory / name, closed, key[1], gz)
    return [found[key] for key in sorted(found)]


def list_bots(directory: Path) -> list[str]:
    """Every bot with a current or rotated file in ``directory``."""
    bots: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            match = _ROTATED.match(name) or _CURRENT.match(name)
            if match is not None:
                bots.add(match["bot"])
    return sorted(bots)


def twin(path: Path) -> Path:
    """The other form of a rotated file: ``x.log`` <-> ``x.log.gz``."""
    name = path.name
    return path.with_name(name[:-3] if name.endswith(".gz") else name + ".gz")


def rotate(directory: Path, bot: str, now: float, *, after: Path | None = None) -> Path:
    """Rename the bot's current file to a rotated name stamped ``now`` and return that name.

    The caller fsyncs and closes its descriptor first. A name already used in that second (as
    ``.log`` or ``.log.gz``) gets a ``-1``, ``-2``... suffix, so nothing is overwritten; and a
    name after ``after`` (the previous rotation), so that a file deleted meanwhile (a cap) does
    not free an earlier name for a newer file.
    """
    base = f"{bot}.{stamp_of(now)}"
    seq = 0
    previous = None if after is None else _ROTATED.match(after.name)
    if previous is not None and previous["stamp"] == stamp_of(now):
        seq = int(previous["seq"] or 0) + 1
    while True:
        target = directory / (f"{base}.log" if seq == 0 else f"{base}-{seq}.log")
        if not target.exists() and not twin(target).exists():
            break
        seq += 1
    os.rename(current_path(directory, bot), target)
    fsync_dir(directory)
    return target


def compress_file(path: Path, *, level: int = DEFAULT_LEVEL) -> Path | None:
    """Gzip a rotated ``.log`` into ``.log.gz`` (fsynced, renamed in, then the ``.log`` removed).

    Returns the ``.gz`` path, or None when ``path`` is gone (compressed or deleted meanwhile).
    Safe to run twice at once on one file: each run has its own temporary name.
    """
    import shutil  # here: `clawpen logs` reads through this module and never compresses
    import threading

    target = twin(path)
    tmp = path.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        with open(fd, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(
                filename=path.name, mode="wb", fileobj=raw, compresslevel=level, mtime=0
            ) as gz:
                shutil.copyfileobj(src, gz, _COPY_BLOCK)
            raw.flush()
            os.fsync(raw.fileno())
        if not path.exists():  # deleted by retention while we compressed: do not bring it back
            os.unlink(tmp)
            return None
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)
    return target


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def delete_rotated(entry: RotatedFile) -> int:
    freed = 0
    for path in (entry.path, twin(entry.path)):
        size = file_size(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        freed += size
    return freed
