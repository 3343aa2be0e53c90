"""An append-only, hash-chained audit log: ``<state>/audit.log``, one JSON object a line.

Each record holds ``seq`` (1, 2, ...), ``ts`` (UTC, ISO 8601), ``who``, ``action``, ``detail`` (a
dict: names and counts, never a secret value), ``prev`` (hex SHA-256 of the previous line's bytes,
64 zeros for the first) and ``hash`` (hex SHA-256 of the record's canonical JSON without
``hash``). :func:`verify` recomputes both, so a changed, deleted, inserted or reordered row is
reported. The chain alone cannot show that rows were cut off the *end*: the daemon keeps the
head (the last record's ``seq`` and line hash) outside the log, in its state database with the
newest release (``audit_heads``), and :func:`check_anchors` finds a log that no longer holds a
head recorded there (cut off, or rewritten from scratch with a new chain).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.log"
GENESIS = "0" * 64
_FIELDS = {"seq", "ts", "who", "action", "detail", "prev", "hash"}


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """The hex SHA-256 of ``record`` without its ``hash`` field (``prev`` included)."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def line_hash(line: bytes) -> str:
    """The hex SHA-256 of one log line, without its newline: the next record's ``prev``."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _utc_now(clock: Callable[[], float]) -> str:
    now = clock()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _last_line(fd: int) -> bytes:
    """The file's last line (without newline), read backwards from the end; b"" when empty."""
    end = os.lseek(fd, 0, os.SEEK_END)
    data = b""
    pos = end
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
        body = data[:-1] if data.endswith(b"\n") else data
        if b"\n" in body:
            return body.rsplit(b"\n", 1)[1]
    return data.rstrip(b"\n")


def append(
    state_dir: Path,
    who: str,
    action: str,
    detail: Mapping[str, Any],
    *,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Append one record (under an exclusive flock, O_APPEND, fsync) and return it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / AUDIT_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = _last_line(fd)
        seq = 1
        if last:
            try:
                seq = int(json.loads(last)["seq"]) + 1
            except (ValueError, KeyError, TypeError):
                size = os.fstat(fd).st_size
                seq = os.pread(fd, size, 0).rstrip(b"\n").count(b"\n") + 2
        record: dict[str, Any] = {
            "seq": seq,
            "ts": _utc_now(clock),
            "who": who,
            "action": action,
            "detail": dict(detail),
            "prev": line_hash(last) if last else GENESIS,
        }
        record["hash"] = record_hash(record)
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (b"\n" if torn else b"") + _canonical(record) + b"\n")
        os.fsync(fd)
        return record
    finally:
        os.close(fd)


def read(state_dir: Path) -> list[dict[str, Any]]:
    """Every record that parses, in file order (for display; :func:`verify` checks them)."""
    out = []
    for line in _lines(state_dir):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _lines(state_dir: Path) -> list[bytes]:
    try:
        data = (state_dir / AUDIT_FILE).read_bytes()
    except FileNotFoundError:
        return []
    return data.splitlines()


def verify(state_dir: Path) -> list[str]:
    """Check the chain; return one message per problem, each naming its line and seq. An empty
    list means the log is intact (or absent)."""
    problems: list[str] = []
    prev_line: bytes | None = None
    prev_seq = 0
    for number, line in enumerate(_lines(state_dir), start=1):
        where = f"line {number}"
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or set(rec) != _FIELDS:
            problems.append(f"{where}: not a valid audit record")
            prev_line, prev_seq = line, prev_seq + 1
            continue
        seq = rec["seq"]
        where += f" (seq {seq})"
        if rec["hash"] != record_hash(rec):
            problems.append(f"{where}: row changed (its hash does not match its content)")
        expected_prev = GENESIS if prev_line is None else line_hash(prev_line)
        if not isinstance(seq, int):
            problems.append(f"{where}: seq is not a number")
        elif seq <= prev_seq:
            problems.append(f"{where}: row out of order (seq {seq} after seq {prev_seq})")
        elif seq > prev_seq + 1:
            gap = f"seq {prev_seq + 1}" + (f"-{seq - 1}" if seq - 1 > prev_seq + 1 else "")
            problems.append(f"{where}: row{'s' if seq - 1 > prev_seq + 1 else ''} {gap} deleted before it")
        elif rec["prev"] != expected_prev:
            what = "the first row" if prev_line is None else f"line {number - 1}"
            problems.append(f"{where}: chain broken ({what} was changed, deleted or inserted)")
        prev_line = line
        prev_seq = seq if isinstance(seq, int) else prev_seq + 1
    return problems


def head_of(record: Mapping[str, Any]) -> tuple[int, str]:
    """``(seq, line hash)`` of a record :func:`append` returned: what anchors the log's head."""
    return int(record["seq"]), hashlib.sha256(_canonical(record)).hexdigest()


def check_anchors(state_dir: Path, anchors: Iterable[tuple[int, str]]) -> list[str]:
    """One message per anchor ``(seq, line hash)`` the log does not hold as written: a log cut
    after it ("truncated") or a record there that changed ("rewritten")."""
    hashes: dict[int, str] = {}
    last = 0
    for line in _lines(state_dir):
        try:
            seq = json.loads(line)["seq"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(seq, int):
            hashes[seq] = line_hash(line)
            last = max(last, seq)
    problems = []
    for seq, digest in sorted(set(anchors), reverse=True):
        if seq not in hashes:
            problems.append(
                f"seq {seq} was recorded as written but the log ends at seq {last}: "
                f"{seq - last} record{'s' if seq - last != 1 else ''} cut off its end"
                if seq > last
                else f"seq {seq} was recorded as written but is missing from the log"
            )
        elif hashes[seq] != digest:
            problems.append(f"seq {seq} differs from the record written then: the log was rewritten")
    return problems


def caller() -> str:
    """Who is acting, for the audit log: the sudo user, else the login user, else the uid."""
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or f"uid {os.getuid()}"
