"""Cost-control schedules: when a bot may run (:class:`ActiveWindow`) and when to restart it (cron).

Active windows are written in the schedule's wall-clock time::

    always
    Mon-Fri 08:00-20:00
    Sat,Sun 10:00-14:00; Mon-Fri 18:00-22:00     several windows, joined
    Mon-Sun 22:00-06:00                          crosses midnight: Mon 22:00 until Tue 06:00
    08:00-20:00                                  no days: every day

Days are names (``Mon`` or ``Monday``, any case), lists and ranges (``Fri-Mon`` wraps around the
week); a window that crosses midnight belongs to the day it starts on; ``24:00`` ends a day.

Each window occurrence is one span of real time, ``[start, end)``, so ``is_active`` and
``next_change`` always agree and nothing flaps. Daylight-saving changes are handled by where a
wall-clock time falls: a time that does not exist (the hour skipped in spring) means the moment
the clocks jump, i.e. the first instant at which the clock shows a later time; a time that
happens twice (the hour repeated in autumn) means its first occurrence. So in Europe/Berlin on
the spring day ``01:00-04:00`` lasts two hours and ``02:00-02:30`` does not happen, and on the
autumn day ``01:00-04:00`` lasts four hours.

Cron specs are the standard five fields ``minute hour day-of-month month day-of-week`` with ``*``,
``a-b``, lists, steps ``*/n``, ``a-b/n`` and ``a/n`` (from a to the maximum), names ``jan..dec`` and
``sun..sat`` (0 and 7 are Sunday), and ``@hourly``, ``@daily``/``@midnight``, ``@weekly``,
``@monthly``, ``@yearly``/``@annually``. As in Vixie cron, when both day fields are restricted
(neither starts with ``*``), a day matching either one matches. DST: a time in the skipped hour
fires at the jump; in the repeated hour a job fires once, at the first occurrence, unless its
hour field starts with ``*`` (hourly and more frequent jobs keep their rhythm through both).

The only I/O is :func:`local_zone`, used when no zone is given: ``TZ``, then ``/etc/localtime``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clawpen.errors import ConfigError

DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
CRON_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
WINDOW_HINT = (
    'write e.g. active = "Mon-Fri 08:00-20:00", "Sat,Sun 10:00-14:00; Mon-Fri 18:00-22:00", '
    '"Mon-Sun 22:00-06:00" (crosses midnight) or "always"'
)
CRON_HINT = (
    "five fields: minute hour day-of-month month day-of-week, e.g. '0 4 * * *' (04:00 daily), "
    "'*/15 * * * *', '30 3 * * mon-fri', '0 0 1 jan,jul *'; or @hourly, @daily, @weekly, @monthly"
)
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...] | None, int], ...] = (
    ("minute", 0, 59, None, 0),
    ("hour", 0, 23, None, 0),
    ("day-of-month", 1, 31, None, 1),
    ("month", 1, 12, MONTH_NAMES, 1),
    ("day-of-week", 0, 7, CRON_DAY_NAMES, 0),
)
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_WINDOW_RE = re.compile(
    r"(?:(?P<days>[a-z][a-z ,\-]*?)\s+)?(?P<start>\d{1,2}:\d\d)\s*-\s*(?P<end>\d{1,2}:\d\d)", re.ASCII
)
_FOLD_MARGIN = timedelta(hours=3)
_SEARCH_DAYS = 9 * 366


def local_zone() -> tzinfo:
    """The host's time zone: ``$TZ`` if it names a zone, else ``/etc/localtime``, else UTC."""
    key = os.environ.get("TZ", "").lstrip(":")
    if key:
        try:
            return ZoneInfo(key)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    target = os.path.realpath("/etc/localtime")
    if "/zoneinfo/" in target:
        try:
            return ZoneInfo(target.split("/zoneinfo/", 1)[1])
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return UTC


def zone(tz: str | tzinfo | None, *, where: str | None = None) -> tzinfo:
    """A time zone from an IANA name, a tzinfo, or None (the host's zone)."""
    if tz is None:
        return local_zone()
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {tz!r}", where=where, hint="use an IANA name such as Europe/Berlin or UTC"
        ) from None


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now.astimezone(UTC)


def _offset(epoch: int, tz: tzinfo) -> timedelta | None:
    return datetime.fromtimestamp(epoch, tz).utcoffset()


def to_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant of a naive wall-clock time in ``tz``: the first occurrence of a repeated
    time, or the moment of the jump for a time skipped by a DST change."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    other = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = math.floor(min(first, other).timestamp()), math.ceil(max(first, other).timestamp())
    before = _offset(lo, tz)
    if before == _offset(hi, tz):
        return first
    while hi - lo > 1:  # bisect to the second at which the offset changes
        mid = (lo + hi) // 2
        if _offset(mid, tz) == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


class Window(NamedTuple):
    """One window: on ``days`` (0 = Monday), from ``start`` to ``end`` minutes after midnight."""

    days: frozenset[int]
    start: int
    end: int
    """1..1440; at or before ``start`` means the window ends the next day."""

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start


def _day(token: str, text: str, where: str | None) -> int:
    if len(token) >= 3:
        for i, name in enumerate(DAY_NAMES):
            if name.startswith(token):
                return i
    raise ConfigError(f"unknown day {token!r} in schedule {text!r}", where=where, hint=WINDOW_HINT)


def _days(spec: str, text: str, where: str | None) -> frozenset[int]:
    days: set[int] = set()
    for part in spec.split(","):
        first, _, last = (p.strip() for p in part.partition("-"))
        a = _day(first, text, where)
        b = _day(last, text, where) if last else a
        days.update(d % 7 for d in range(a, b + 1 if b >= a else b + 8))
    return frozenset(days)


def _minutes(hhmm: str, text: str, where: str | None, *, end: bool) -> int:
    h, m = (int(x) for x in hhmm.split(":"))
    if m < 60 and (h < 24 or (end and h == 24 and m == 0)):
        return h * 60 + m
    raise ConfigError(f"bad time {hhmm!r} in schedule {text!r}", where=where, hint=WINDOW_HINT)


@dataclass(frozen=True, slots=True)
class ActiveWindow:
    """When a bot may run; ``windows`` is empty for ``always``."""

    windows: tuple[Window, ...]
    tz: tzinfo
    text: str

    @classmethod
    def parse(cls, text: str, tz: str | tzinfo | None = None, *, where: str | None = None) -> ActiveWindow:
        """Parse an ``active`` value; raises :class:`ConfigError` with the syntax as hint."""
        zone_ = zone(tz, where=where)
        clean = " ".join(text.lower().split())
        if clean == "always":
            return cls((), zone_, text)
        windows = []
        for part in clean.split(";"):
            match = _WINDOW_RE.fullmatch(part.strip())
            if not match:
                what = "empty schedule" if not clean else f"cannot read {part.strip()!r} in schedule {text!r}"
                raise ConfigError(what, where=where, hint=WINDOW_HINT)
            days = _days(match["days"], text, where) if match["days"] else frozenset(range(7))
            start = _minutes(match["start"], text, where, end=False)
            end = _minutes(match["end"], text, where, end=True)
            if start == end:
                raise ConfigError(
                    f"window {part.strip()!r} starts when it ends", where=where, hint=WINDOW_HINT
                )
            windows.append(Window(days, start, end))
        return cls(tuple(windows), zone_, text)

    @property
    def always(self) -> bool:
        return not self.windows

    def _spans(self, first: date, days: int) -> list[tuple[datetime, datetime]]:
        spans = []
        for i in range(days):
            day = first + timedelta(days=i)
            midnight = datetime.combine(day, time())
            for w in self.windows:
                if day.weekday() in w.days:
                    start = to_instant(midnight + timedelta(minutes=w.start), self.tz)
                    end_day = midnight + timedelta(days=1 if w.crosses_midnight else 0)
                    end = to_instant(end_day + timedelta(minutes=w.end), self.tz)
                    if start < end:
                        spans.append((start, end))
        merged: list[tuple[datetime, datetime]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def is_active(self, now: datetime) -> bool:
        """Whether the bot may run at ``now`` (an aware datetime)."""
        if self.always:
            return True
        u = _utc(now)
        today = u.astimezone(self.tz).date()
        return any(s <= u < e for s, e in self._spans(today - timedelta(days=2), 3))

    def next_change(self, now: datetime) -> datetime | None:
        """The next instant after ``now`` at which :meth:`is_active` flips (in the schedule's zone),
        or None if it never does (``always``, or windows that cover the whole week)."""
        if self.always:
            return None
        u = _utc(now)
        today = u.astimezone(self.tz).date()
        # a span still going after 8 days goes on for ever; a weekly window that a DST change
        # empties comes back two weeks later at the latest
        horizon = to_instant(datetime.combine(today + timedelta(days=9), time()), self.tz)
        for start, end in self._spans(today - timedelta(days=2), 18):
            if start <= u < end:
                return None if end >= horizon else end.astimezone(self.tz)
            if start > u:
                return start.astimezone(self.tz)
        return None

    def __str__(self) -> str:
        return self.text


def _cron_value(token: str, names: tuple[str, ...] | None, base: int) -> int:
    if token.isdigit():
        return int(token)
    if names and token.lower() in names:
        return names.index(token.lower()) + base
    raise ValueError(f"{token!r} is not a number" + (" or a name" if names else ""))


def _cron_field(text: str, lo: int, hi: int, names: tuple[str, ...] | None, base: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() else 0
        if slash and step < 1:
            raise ValueError(f"bad step in {item!r}")
        if span == "*":
            a, b = lo, hi
        elif "-" in span:
            first, _, last = span.partition("-")
            a, b = _cron_value(first, names, base), _cron_value(last, names, base)
            if names is CRON_DAY_NAMES and b == 0:
                b = 7  # "mon-sun"
        else:
            a = _cron_value(span, names, base)
            b = hi if slash else a
        if not lo <= a <= b <= hi:
            raise ValueError(f"{item!r} is outside {lo}-{hi} or a backwards range")
        values.update(range(a, b + 1, step or 1))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronSpec:
    """A five-field cron schedule in a time zone; ``weekdays`` uses cron's 0 = Sunday."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_and: bool
    """True when a day field starts with ``*``: a day must match both; else either will do."""
    hourly: bool
    """Whether the hour field starts with ``*`` (fires in both passes of a repeated hour)."""
    tz: tzinfo
    text: str

    @classmethod
    def parse(cls, text: str, tz: str | tzinfo | None = None, *, where: str | None = None) -> CronSpec:
        """Parse a cron expression; raises :class:`ConfigError` with the syntax as hint."""
        zone_ = zone(tz, where=where)
        expanded = _MACROS.get(text.strip().lower(), text)
        fields = expanded.split()
        if len(fields) != 5:
            raise ConfigError(
                f"cron spec {text!r} has {len(fields)} fields, not 5", where=where, hint=CRON_HINT
            )
        parsed = []
        for field, (label, lo, hi, names, base) in zip(fields, _CRON_FIELDS, strict=True):
            try:
                parsed.append(_cron_field(field, lo, hi, names, base))
            except ValueError as e:
                raise ConfigError(f"bad cron {label} {field!r}: {e}", where=where, hint=CRON_HINT) from None
        minutes, hours, days, months, weekdays = parsed
        weekdays = frozenset(d % 7 for d in weekdays)
        day_and = fields[2].startswith("*") or fields[4].startswith("*")
        if day_and and not any(d <= _MONTH_DAYS[m - 1] for m in months for d in days):
            raise ConfigError(f"cron spec {text!r} names a day no month has", where=where, hint=CRON_HINT)
        return cls(minutes, hours, days, months, weekdays, day_and, fields[1].startswith("*"), zone_, text)

    def _day_matches(self, day: date) -> bool:
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        return (in_month and in_week) if self.day_and else (in_month or in_week)

    def _walls(self, start: datetime) -> Iterator[datetime]:
        """Matching wall-clock times at or after ``start``, in order."""
        day = start.date()
        times = sorted(time(h, m) for h in self.hours for m in self.minutes)
        for _ in range(_SEARCH_DAYS):
            if day.month not in self.months:
                day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
                continue
            if self._day_matches(day):
                for t in times:
                    wall = datetime.combine(day, t)
                    if wall >= start:
                        yield wall
            day += timedelta(days=1)

    def _instants(self, wall: datetime) -> Iterator[datetime]:
        yield to_instant(wall, self.tz)
        if self.hourly:
            second = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
            if second.astimezone(self.tz).replace(tzinfo=None) == wall:
                yield second

    def next_after(self, now: datetime) -> datetime:
        """The first firing strictly after ``now`` (an aware datetime), in the spec's zone."""
        u = _utc(now)
        start = u.astimezone(self.tz).replace(tzinfo=None, second=0, microsecond=0) - _FOLD_MARGIN
        best: datetime | None = None
        limit: datetime | None = None
        for wall in self._walls(start):
            if limit is not None and wall > limit:
                break
            for instant in self._instants(wall):
                if instant > u and (best is None or instant < best):
                    best = instant
                    limit = wall + _FOLD_MARGIN
        if best is None:
            raise ConfigError(f"cron spec {self.text!r} never fires", hint=CRON_HINT)
        return best.astimezone(self.tz)

    def __str__(self) -> str:
        return self.text
