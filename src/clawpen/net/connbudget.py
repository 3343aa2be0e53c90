"""Budgets of the connection log: denials folded per interval, rows and bytes per bot per day.

* :class:`Aggregator`: denials of one bot instance with the same (kind, name, port, reason) arriving in
  one ``interval`` become one row with a ``count``; past ``names`` distinct keys of a bot in one
  interval, the rest fold into one "(other names)" row, so a flood of random names costs a
  bounded number of rows too.
* :class:`DailyBudget`: at most ``rows`` rows and ``size`` bytes per bot per (UTC) day; past
  either, nothing more of the bot is written that day but one marker row per ``marker_interval``
  saying how many were left out.

Both are used under the :class:`clawpen.net.connlog.ConnLog` lock; they hold no lock of their own.
"""

from __future__ import annotations

from clawpen.net.connrecord import ConnRecord

AGG_INTERVAL = 1.0  # seconds of denials folded into one row
NAMES_PER_INTERVAL = 16  # distinct denied names of a bot per interval; the rest fold into one row
ROWS_PER_DAY = 100_000  # rows per bot per day
BYTES_PER_DAY = 16 << 20  # bytes of rows per bot per day (as counted by row_size)
MARKER_INTERVAL = 60.0  # seconds between "over budget" marker rows of a bot
MAX_DB_BYTES = 256 << 20  # the connection log's database, all bots together
OTHER_NAMES = "(other names)"
OVER_BUDGET = "(log budget)"
_ROW_OVERHEAD = 64  # bytes a row costs beyond its text (numbers, index entries), roughly

_Key = tuple[str, int, str, str, int, str, str, int]


def row_size(rec: ConnRecord) -> int:
    return _ROW_OVERHEAD + len(rec.bot) + len(rec.kind) + len(rec.host) + len(rec.verdict) + len(rec.reason)


class Aggregator:
    """Denials waiting to be written as one row per key and interval."""

    def __init__(self, interval: float = AGG_INTERVAL, names: int = NAMES_PER_INTERVAL) -> None:
        self.interval = interval
        self.names = names
        self._pending: dict[_Key, ConnRecord] = {}
        self._distinct: dict[tuple[str, int, int], int] = {}  # (bot, replica, slot) -> keys
        self._oldest: int | None = None  # the oldest slot pending

    def add(self, rec: ConnRecord, now: float) -> None:
        """Fold ``rec`` into the interval of ``now`` (its arrival: a denial found late, e.g.
        at the end of a slow head, still folds with the others of that moment)."""
        slot = int(now // self.interval)
        if self._oldest is None or slot < self._oldest:
            self._oldest = slot
        key: _Key = (rec.bot, rec.replica, rec.kind, rec.host, rec.port, rec.verdict, rec.reason, slot)
        held = self._pending.get(key)
        if held is not None:
            self._pending[key] = held._replace(times=held.times + rec.times)
            return
        who = (rec.bot, rec.replica, slot)
        if self._distinct.get(who, 0) >= self.names:
            rec = rec._replace(host=OTHER_NAMES, port=0, reason="other denied names, folded")
            key = (rec.bot, rec.replica, rec.kind, rec.host, 0, rec.verdict, rec.reason, slot)
            held = self._pending.get(key)
            if held is not None:
                self._pending[key] = held._replace(times=held.times + rec.times)
                return
        else:
            self._distinct[who] = self._distinct.get(who, 0) + 1
        self._pending[key] = rec

    def due(self, now: float, force: bool = False) -> list[ConnRecord]:
        """The rows of intervals that are over (every row with ``force``), oldest first."""
        current = int(now // self.interval)
        if self._oldest is None or (not force and self._oldest >= current):
            return []
        done = [k for k in self._pending if force or k[-1] < current]
        out = [self._pending.pop(k) for k in done]
        for who in [w for w in self._distinct if force or w[2] < current]:
            del self._distinct[who]
        self._oldest = min((k[-1] for k in self._pending), default=None)
        out.sort(key=lambda r: r.at)
        return out

    def pending(self) -> int:
        return len(self._pending)


class DailyBudget:
    """Rows and bytes per bot per day; what is over the budget becomes marker rows."""

    def __init__(
        self, rows: int = ROWS_PER_DAY, size: int = BYTES_PER_DAY, marker_interval: float = MARKER_INTERVAL
    ) -> None:
        self.rows = rows
        self.size = size
        self.marker_interval = marker_interval
        self._used: dict[str, tuple[int, int, int]] = {}  # bot -> (day, rows, bytes)
        self._over: dict[str, ConnRecord] = {}  # bot -> the marker being counted up
        self._opened: dict[str, float] = {}  # bot -> when its marker started counting

    def admit(self, rec: ConnRecord, now: float) -> bool:
        """True (and counted) if ``rec`` fits the bot's budget of its day; else it is folded
        into the bot's marker row, written ``marker_interval`` after the marker was started."""
        day = int(rec.at // 86400)
        used_day, rows, size = self._used.get(rec.bot, (day, 0, 0))
        if used_day != day:
            rows = size = 0
        need = row_size(rec)
        if rows + 1 <= self.rows and size + need <= self.size:
            self._used[rec.bot] = (day, rows + 1, size + need)
            return True
        self._used[rec.bot] = (day, rows, size)
        held = self._over.get(rec.bot)
        if held is None:
            reason = f"the bot's log budget of the day is used up ({self.rows} rows, {self.size} bytes)"
            self._over[rec.bot] = rec._replace(
                kind="log",
                host=OVER_BUDGET,
                port=0,
                verdict="budget",
                reason=reason,
                up=0,
                down=0,
                duration=0.0,
            )
            self._opened[rec.bot] = now
        else:
            self._over[rec.bot] = held._replace(times=held.times + rec.times)
        return False

    def markers(self, now: float, force: bool = False) -> list[ConnRecord]:
        """The marker rows started ``marker_interval`` ago or earlier (every one with ``force``)."""
        if not self._over:
            return []
        due = [bot for bot in self._over if force or now - self._opened[bot] >= self.marker_interval]
        for bot in due:
            del self._opened[bot]
        return [self._over.pop(bot) for bot in due]

    def used(self, bot: str) -> tuple[int, int]:
        """(rows, bytes) the bot has used of its current day."""
        _, rows, size = self._used.get(bot, (0, 0, 0))
        return rows, size
