"""Where a target's shipping stands: one position per log, in ``<state>/ship/<target>.json``.

A :class:`Position` names the end of the last record the receiver acknowledged, precisely enough
to find it again after a daemon restart or a long outage, across rotations and gzip:

* ``file`` is the rotated file's stamp (``20261124T000003`` or ``20261124T000003-1``), which
  stays the same when the file is compressed (``.log`` -> ``.log.gz``); or ``"current"``;
* for ``"current"``, ``ino`` is the file's inode and ``prev`` the stamp of the newest rotated
  file when it was opened (``""``: none). When the current file has been rotated meanwhile, it
  is the first rotated file after ``prev`` (rotated names only grow, :func:`store.rotate`);
* ``offset`` counts bytes of the uncompressed content (so it holds in the ``.gz`` too);
* ``at`` is the record's own time (for lag, and a check when nothing else is left).

The file is written atomically with fsync (:func:`clawpen.fsutil.write_atomic`) after every
acknowledged batch. A file that cannot be read is a :class:`CursorProblem` (the shipper notes an
event and resumes from the oldest kept record; the duplicates it sends are counted).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.fsutil import write_atomic

CURRENT = "current"
VERSION = 1
_STAMP = re.compile(r"^\d{8}T\d{6}(?:-\d+)?$")


@dataclass(frozen=True)
class Position:
    """The end of the last acknowledged record of one log (see the module doc)."""

    file: str
    offset: int
    at: float
    ino: int = 0
    prev: str = ""

    @property
    def current(self) -> bool:
        return self.file == CURRENT


class CursorProblem(Exception):
    """The cursor file exists but cannot be used (its text says why)."""


def key_of(stamp: str) -> tuple[str, int]:
    """``20261124T000003-1`` -> ``("20261124T000003", 1)`` (the order of rotated files)."""
    base, _, seq = stamp.partition("-")
    return base, int(seq or 0)


def not_after(pos: Position, end: Position) -> bool:
    """Whether the record ending at ``pos`` is at or before the one ending at ``end``."""
    if pos.file == end.file and (not pos.current or pos.ino == end.ino):
        return pos.offset <= end.offset
    return pos.at < end.at


def stamp_of_key(key: tuple[str, int]) -> str:
    return key[0] if key[1] == 0 else f"{key[0]}-{key[1]}"


def cursor_path(state: Path, target: str) -> Path:
    return state / "ship" / f"{target}.json"


def _position(raw: Any) -> Position:
    if not isinstance(raw, dict):
        raise ValueError("a position is not an object")
    file, offset, at = raw.get("file"), raw.get("offset"), raw.get("at")
    ino, prev = raw.get("ino", 0), raw.get("prev", "")
    if not isinstance(file, str) or not (file == CURRENT or _STAMP.match(file)):
        raise ValueError(f"file {file!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset {offset!r}")
    if not isinstance(at, int | float) or isinstance(at, bool):
        raise ValueError(f"at {at!r}")
    if not isinstance(ino, int) or ino < 0 or not isinstance(prev, str) or (prev and not _STAMP.match(prev)):
        raise ValueError("ino or prev")
    return Position(file, offset, float(at), ino, prev)


class Saved(NamedTuple):
    """A cursor file: the acknowledged positions; the end of the batch being sent when it was
    written (what a killed daemon sent without an acknowledgement); lines passed over for the
    backlog cap whose marker is not acknowledged yet."""

    positions: dict[str, Position]
    sending: dict[str, Position]
    dropped: dict[str, int]


def load(path: Path) -> dict[str, Position]:
    """The positions per log (empty when the file does not exist); CursorProblem when it is damaged."""
    return load_all(path).positions


def load_all(path: Path) -> Saved:
    """Everything of a cursor file (see :class:`Saved`); CursorProblem when it is damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Saved({}, {}, {})
    except OSError as err:
        raise CursorProblem(f"cannot read {path}: {err.strerror}") from None
    try:
        doc = json.loads(data)
        if (
            not isinstance(doc, dict)
            or doc.get("version") != VERSION
            or not isinstance(doc.get("logs"), dict)
        ):
            raise ValueError("not a cursor file of this version")
        sending, dropped = doc.get("sending", {}), doc.get("dropped", {})
        if not isinstance(sending, dict) or not isinstance(dropped, dict):
            raise ValueError("sending or dropped is not an object")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in dropped.values()):
            raise ValueError("dropped counts")
        return Saved(
            {str(log): _position(raw) for log, raw in doc["logs"].items()},
            {str(log): _position(raw) for log, raw in sending.items()},
            {str(log): int(n) for log, n in dropped.items()},
        )
    except (ValueError, UnicodeDecodeError) as err:
        raise CursorProblem(f"{path} is damaged ({err})") from None


def save(
    path: Path,
    target: str,
    positions: dict[str, Position],
    sending: dict[str, Position] | None = None,
    dropped: dict[str, int] | None = None,
) -> None:
    """Write a cursor file at once (atomically, fsynced); see :class:`Saved`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc: dict[str, object] = {
        "version": VERSION, "target": target, "logs": {log: asdict(p) for log, p in sorted(positions.items())}
    }  # fmt: skip
    if sending:
        doc["sending"] = {log: asdict(p) for log, p in sorted(sending.items())}
    if dropped:
        doc["dropped"] = dict(sorted(dropped.items()))
    write_atomic(path, json.dumps(doc, indent=1).encode() + b"\n", 0o600)
