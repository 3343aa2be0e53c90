"""Log rules: count the lines of a bot's output that match a regular expression, per window.

Every pass reads what was appended to ``<logs>/<bot>.log`` since the last pass (one ``stat`` and
at most one ``read`` per bot); a new file (rotation: another inode, or a shorter file) is read
from its start, a file seen for the first time from its end (old lines are not counted).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from clawpen.alerts.rules import Rule, log_metric

MAX_READ = 4 << 20  # per bot and pass; a bot writing faster has the excess skipped
BACKFILL = 1 << 20  # read back this much of a log seen for the first time


def log_name(target: str) -> str:
    """``bot`` -> ``bot``, ``bot[2]`` -> ``bot-r2`` (the log file of that replica)."""
    if "[" in target:
        bot, replica = target[:-1].split("[", 1)
        return f"{bot}-r{replica}"
    return target


def _stamp(line: bytes) -> float | None:
    """The time of a log record (``2026-11-24T10:00:00.123456Z out ...``), or None."""
    try:
        head = line[: line.index(b"Z ")].decode()
        return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _text(line: bytes) -> str:
    """The bot's text of a log record (after ``<time> <stream> ``)."""
    parts = line.split(b" ", 2)
    return (parts[2] if len(parts) == 3 else line).decode("utf-8", "replace")


class LogWatch:
    def __init__(self, logs_dir: Path, rules: list[Rule]) -> None:
        self.logs_dir = logs_dir
        self.rules = [(r, re.compile(r.pattern)) for r in rules if r.kind == "log"]
        self._pos: dict[str, tuple[int, int]] = {}  # target -> (inode, offset)
        self._partial: dict[str, bytes] = {}
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self.totals: dict[tuple[str, str], int] = {}  # (rule, target) -> matches since start

    def _new_bytes(self, target: str, now: float) -> bytes:
        path = self.logs_dir / f"{log_name(target)}.log"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b""
        try:
            st = os.fstat(fd)
            known = self._pos.get(target)
            if known is None:  # first sight: only lines within the windows (by their own time)
                self._pos[target] = (st.st_ino, st.st_size)
                self._backfill(
                    target, now, os.pread(fd, min(st.st_size, BACKFILL), max(0, st.st_size - BACKFILL))
                )
                return b""
            inode, offset = known
            if inode != st.st_ino or st.st_size < offset:
                offset = 0
                self._partial.pop(target, None)
            if st.st_size - offset > MAX_READ:
                offset = st.st_size - MAX_READ
            data = os.pread(fd, st.st_size - offset, offset) if st.st_size > offset else b""
            self._pos[target] = (st.st_ino, offset + len(data))
            return data
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _backfill(self, target: str, now: float, data: bytes) -> None:
        """Count the matches already in the log that are recent enough for each rule's window,
        so a restarted daemon does not see a firing log rule drop to zero."""
        widest = max((r.window for r, _ in self.rules), default=0.0)
        for line in data.split(b"\n")[1:]:  # the first piece may be a partial line
            at = _stamp(line)
            if at is None or at < now - widest:
                continue
            text = _text(line)
            for rule, rx in self.rules:
                if rule.matches_target(target) and at >= now - rule.window and rx.search(text):
                    self._hits.setdefault((rule.name, target), deque()).append(at)

    def scan(self, targets: list[str], now: float) -> dict[str, dict[str, float]]:
        """Read new output of ``targets``; per target the match count of each rule in its window."""
        out: dict[str, dict[str, float]] = {}
        if not self.rules:
            return out
        for target in targets:
            wanted = [(r, rx) for r, rx in self.rules if r.matches_target(target)]
            if not wanted:
                continue
            data = self._partial.pop(target, b"") + self._new_bytes(target, now)
            cut = data.rfind(b"\n") + 1
            if cut < len(data):
                self._partial[target] = data[cut:][-65536:]
            lines = [_text(line) for line in data[:cut].splitlines()] if cut else []
            values = out.setdefault(target, {})
            for rule, rx in wanted:
                hits = self._hits.setdefault((rule.name, target), deque())
                found = sum(1 for line in lines if rx.search(line))
                if found:
                    hits.extend([now] * min(found, 100_000))
                    key = (rule.name, target)
                    self.totals[key] = self.totals.get(key, 0) + found
                while hits and hits[0] <= now - rule.window:
                    hits.popleft()
                values[log_metric(rule.name)] = float(len(hits))
        return out
