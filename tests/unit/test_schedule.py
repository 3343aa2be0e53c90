"""Active windows and cron specs, including daylight-saving changes in Europe/Berlin.

Berlin 2026: clocks jump 02:00 CET -> 03:00 CEST on Sunday 29 March (01:00 UTC) and fall back
03:00 CEST -> 02:00 CET on Sunday 25 October (01:00 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from clawpen.errors import ConfigError
from clawpen.spec.schedule import (
    CRON_HINT,
    WINDOW_HINT,
    ActiveWindow,
    CronSpec,
    local_zone,
    to_instant,
    zone,
)

B = ZoneInfo("Europe/Berlin")
MICRO = timedelta(microseconds=1)


def at(y, mo, d, h=0, mi=0, s=0, fold=0):
    return datetime(y, mo, d, h, mi, s, tzinfo=B, fold=fold)


def utc(y, mo, d, h=0, mi=0):
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def in_utc(dt):
    assert dt is not None
    return dt.astimezone(UTC)


def window(text):
    return ActiveWindow.parse(text, "Europe/Berlin")


# --- active windows --------------------------------------------------------------------------


def test_weekday_window():
    w = window("Mon-Fri 08:00-20:00")
    # 2026-01-12 is a Monday
    assert not w.is_active(at(2026, 1, 12, 7, 59, 59))
    assert w.is_active(at(2026, 1, 12, 8))
    assert w.is_active(at(2026, 1, 16, 19, 59, 59))
    assert not w.is_active(at(2026, 1, 16, 20))
    assert not w.is_active(at(2026, 1, 17, 12))  # Saturday


def test_next_change_exactly_at_the_boundaries():
    w = window("Mon-Fri 08:00-20:00")
    assert w.next_change(at(2026, 1, 12, 8) - MICRO) == at(2026, 1, 12, 8)
    assert w.next_change(at(2026, 1, 12, 8)) == at(2026, 1, 12, 20)
    assert w.next_change(at(2026, 1, 12, 20)) == at(2026, 1, 13, 8)
    assert w.next_change(at(2026, 1, 16, 20)) == at(2026, 1, 19, 8)  # Friday evening -> Monday
    assert w.next_change(at(2026, 1, 18, 23, 59)) == at(2026, 1, 19, 8)


def test_next_change_is_in_the_schedule_zone_whatever_the_input_zone():
    w = window("Mon-Fri 08:00-20:00")
    change = w.next_change(utc(2026, 1, 12, 6))  # 07:00 in Berlin
    assert change is not None
    assert change.tzinfo is B
    assert in_utc(change) == utc(2026, 1, 12, 7)
    assert w.is_active(utc(2026, 1, 12, 7)) and not w.is_active(utc(2026, 1, 12, 6, 59))


def test_weekend_list():
    w = window("Sat,Sun 10:00-14:00")
    assert w.is_active(at(2026, 1, 17, 10))
    assert w.is_active(at(2026, 1, 18, 13, 59))
    assert not w.is_active(at(2026, 1, 19, 12))
    assert w.next_change(at(2026, 1, 18, 14)) == at(2026, 1, 24, 10)


def test_crossing_midnight_belongs_to_the_start_day():
    w = window("Fri 22:00-06:00")
    assert not w.is_active(at(2026, 1, 16, 21, 59))
    assert w.is_active(at(2026, 1, 16, 22))
    assert w.is_active(at(2026, 1, 17, 5, 59))  # Saturday morning: Friday's window
    assert not w.is_active(at(2026, 1, 17, 6))
    assert not w.is_active(at(2026, 1, 17, 23))  # Saturday night is not listed
    assert not w.is_active(at(2026, 1, 16, 3))  # nor is Thursday night
    assert w.next_change(at(2026, 1, 16, 23)) == at(2026, 1, 17, 6)
    assert w.next_change(at(2026, 1, 17, 6)) == at(2026, 1, 23, 22)


def test_every_night():
    w = window("Mon-Sun 22:00-06:00")
    assert w.is_active(at(2026, 1, 13, 3))
    assert w.next_change(at(2026, 1, 13, 3)) == at(2026, 1, 13, 6)
    assert w.next_change(at(2026, 1, 13, 6)) == at(2026, 1, 13, 22)
    assert w.is_active(at(2026, 1, 12, 0))  # Sunday's window runs into Monday


def test_several_windows():
    w = window("Mon-Fri 08:00-12:00; Mon-Fri 13:00-17:00;Sat 09:00-10:00")
    assert len(w.windows) == 3
    assert w.is_active(at(2026, 1, 12, 11))
    assert not w.is_active(at(2026, 1, 12, 12, 30))
    assert w.next_change(at(2026, 1, 12, 12)) == at(2026, 1, 12, 13)
    assert w.next_change(at(2026, 1, 16, 17)) == at(2026, 1, 17, 9)


def test_adjacent_and_overlapping_windows_merge():
    w = window("Mon 08:00-12:00; Mon 12:00-14:00; Mon 13:00-15:00")
    assert w.next_change(at(2026, 1, 12, 9)) == at(2026, 1, 12, 15)
    w = window("Mon-Fri 20:00-24:00; Tue-Sat 00:00-02:00")
    assert w.next_change(at(2026, 1, 12, 21)) == at(2026, 1, 13, 2)


@pytest.mark.parametrize(
    "text",
    [
        "always",
        "  Always ",
        "Mon-Sun 00:00-24:00",
        "00:00-24:00",
        "Sun-Sat 00:00-24:00",
        "Mon-Sun 20:00-08:00; Mon-Sun 08:00-20:00",
        "Mon-Sun 00:00-00:30; Mon-Sun 00:30-24:00",
    ],
)
def test_always_never_changes(text):
    w = window(text)
    for now in (at(2026, 1, 12, 3), at(2026, 3, 29, 2, 30), at(2026, 10, 25, 2, 30, fold=1)):
        assert w.is_active(now)
        assert w.next_change(now) is None


def test_always_is_empty_windows():
    w = window("always")
    assert w.always and w.windows == () and str(w) == "always"


def test_spelling():
    a = window("monday-FRIDAY 08:00-20:00")
    b = window("Mon - Fri 8:00 - 20:00")
    c = window("Tues,Thurs,Wed,Mon,Fri 08:00-20:00")
    assert a.windows == b.windows == c.windows
    assert a.windows[0].days == frozenset(range(5))


def test_week_wrapping_range_and_no_days():
    assert window("Fri-Mon 10:00-11:00").windows[0].days == {4, 5, 6, 0}
    assert window("Sun-Sun 10:00-11:00").windows[0].days == {6}
    assert window("10:00-11:00").windows[0].days == frozenset(range(7))


def test_until_midnight():
    for text in ("Mon 22:00-24:00", "Mon 22:00-00:00"):
        w = window(text)
        assert w.is_active(at(2026, 1, 12, 23, 59))
        assert not w.is_active(at(2026, 1, 13, 0))
        assert w.next_change(at(2026, 1, 12, 23)) == at(2026, 1, 13, 0)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "sometimes",
        "Mon-Fri",
        "Mon-Fri 8-20",
        "Funday 08:00-10:00",
        "Mo 08:00-10:00",
        "Mon,,Tue 08:00-10:00",
        "Mon-Fri 25:00-26:00",
        "Mon 08:60-09:00",
        "Mon 24:00-10:00",
        "Mon 08:00-24:30",
        "Mon 08:00-08:00",
        "Mon 00:00-00:00",
        "Mon-Fri 08:00-20:00;",
        "Mon-Fri 08:00-20:00 extra",
    ],
)
def test_bad_windows(bad):
    with pytest.raises(ConfigError) as err:
        ActiveWindow.parse(bad, "UTC", where="bots.web.schedule.active")
    assert err.value.hint == WINDOW_HINT
    assert "Mon-Fri 08:00-20:00" in err.value.hint
    assert err.value.where == "bots.web.schedule.active"


def test_time_zones():
    assert window("always").tz is B
    assert ActiveWindow.parse("always", B).tz is B
    with pytest.raises(ConfigError, match="unknown time zone") as err:
        ActiveWindow.parse("always", "Mars/Olympus_Mons")
    assert "Europe/Berlin" in (err.value.hint or "")
    with pytest.raises(ConfigError):
        CronSpec.parse("@daily", "../../etc/passwd")


def test_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert str(local_zone()) == "Asia/Tokyo"
    assert str(ActiveWindow.parse("always").tz) == "Asia/Tokyo"
    monkeypatch.setenv("TZ", ":America/New_York")
    assert str(zone(None)) == "America/New_York"
    monkeypatch.setenv("TZ", "not a zone")
    assert local_zone().utcoffset(datetime(2026, 1, 1)) is not None


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        window("Mon 08:00-09:00").is_active(datetime(2026, 1, 12, 8))
    with pytest.raises(ValueError, match="timezone-aware"):
        CronSpec.parse("@daily", B).next_after(datetime(2026, 1, 12, 8))


# --- daylight saving -------------------------------------------------------------------------


def test_to_instant():
    assert to_instant(datetime(2026, 3, 29, 1, 59), B) == utc(2026, 3, 29, 0, 59)
    # skipped: the moment of the jump
    assert to_instant(datetime(2026, 3, 29, 2, 0), B) == utc(2026, 3, 29, 1)
    assert to_instant(datetime(2026, 3, 29, 2, 30), B) == utc(2026, 3, 29, 1)
    assert to_instant(datetime(2026, 3, 29, 3, 0), B) == utc(2026, 3, 29, 1)
    # repeated: the first time
    assert to_instant(datetime(2026, 10, 25, 2, 30), B) == utc(2026, 10, 25, 0, 30)
    assert to_instant(datetime(2026, 10, 25, 3, 0), B) == utc(2026, 10, 25, 2)


def test_spring_forward_window_is_shorter():
    w = window("Sun 01:00-04:00")
    start = w.next_change(at(2026, 3, 28, 12))
    end = w.next_change(at(2026, 3, 29, 1))
    assert in_utc(start) == utc(2026, 3, 29, 0)
    assert in_utc(end) == utc(2026, 3, 29, 2)  # 04:00 CEST: two hours of running
    assert w.is_active(at(2026, 3, 29, 3, 30))


def test_window_starting_in_the_skipped_hour_starts_at_the_jump():
    w = window("Mon-Sun 02:30-05:00")
    change = w.next_change(at(2026, 3, 29, 1, 59))
    assert in_utc(change) == utc(2026, 3, 29, 1)
    assert change.hour == 3 and change.utcoffset() == timedelta(hours=2)
    assert not w.is_active(utc(2026, 3, 29, 1) - MICRO)
    assert w.is_active(utc(2026, 3, 29, 1))


def test_window_inside_the_skipped_hour_does_not_happen():
    w = window("Sun 02:00-02:30")
    assert in_utc(w.next_change(at(2026, 3, 28, 12))) == utc(2026, 4, 5, 0)  # next Sunday, CEST
    # 22 March's window closes; 29 March's is empty, so the next opening is on 5 April
    assert in_utc(w.next_change(at(2026, 3, 22, 2, 10))) == utc(2026, 3, 22, 1, 30)
    assert in_utc(w.next_change(at(2026, 3, 22, 3))) == utc(2026, 4, 5, 0)
    assert not w.is_active(at(2026, 3, 29, 3, 0))


def test_daily_window_across_spring_forward():
    w = window("Mon-Sun 08:00-20:00")
    assert in_utc(w.next_change(at(2026, 3, 28, 20))) == utc(2026, 3, 29, 6)  # 08:00 CEST
    night = window("Mon-Sun 22:00-06:00")
    assert in_utc(night.next_change(at(2026, 3, 28, 23))) == utc(2026, 3, 29, 4)  # 06:00 CEST


def test_fall_back_window_is_longer_and_does_not_flap():
    w = window("Sun 01:00-04:00")
    assert in_utc(w.next_change(at(2026, 10, 25, 1, 30))) == utc(2026, 10, 25, 3)  # 04:00 CET
    assert w.is_active(at(2026, 10, 25, 2, 30, fold=0))
    assert w.is_active(at(2026, 10, 25, 2, 30, fold=1))
    early = window("Sun 00:00-02:30")  # ends at the first 02:30 and stays off
    assert in_utc(early.next_change(at(2026, 10, 25, 1))) == utc(2026, 10, 25, 0, 30)
    assert not early.is_active(at(2026, 10, 25, 2, 15, fold=1))
    assert in_utc(early.next_change(at(2026, 10, 25, 2, 15, fold=1))) == utc(2026, 11, 1, 0) - timedelta(
        hours=1
    )


def test_window_starting_in_the_repeated_hour_starts_the_first_time():
    w = window("Sun 02:30-05:00")
    assert in_utc(w.next_change(at(2026, 10, 25, 1))) == utc(2026, 10, 25, 0, 30)
    assert w.is_active(at(2026, 10, 25, 2, 0, fold=1))  # second 02:00, after the first 02:30


@pytest.mark.parametrize(
    "text",
    [
        "Mon-Fri 08:00-20:00",
        "Sun 01:00-04:00",
        "Sun 02:00-02:30",
        "Mon-Sun 02:30-05:00",
        "Mon-Sun 22:00-06:00",
        "Sat,Sun 00:00-02:30; Sun 02:15-03:00",
    ],
)
@pytest.mark.parametrize("week_start", [at(2026, 3, 25), at(2026, 10, 21)])
def test_is_active_flips_exactly_at_next_change(text, week_start):
    # arithmetic in UTC: Python adds to an aware datetime on its wall clock
    w = window(text)
    now = in_utc(week_start)
    while now < in_utc(week_start) + timedelta(days=7):
        change = in_utc(w.next_change(now))
        assert change > now
        assert w.is_active(change - MICRO) == w.is_active(now)
        assert w.is_active(change) != w.is_active(now)
        now += timedelta(minutes=13)


# --- cron ------------------------------------------------------------------------------------


def cron(text):
    return CronSpec.parse(text, "Europe/Berlin")


def test_daily_at_four():
    c = cron("0 4 * * *")
    assert (c.minutes, c.hours) == ({0}, {4})
    assert c.next_after(at(2026, 1, 15, 3, 59)) == at(2026, 1, 15, 4)
    assert c.next_after(at(2026, 1, 15, 4)) == at(2026, 1, 16, 4)  # strictly after
    assert c.next_after(at(2026, 1, 15, 4, 0, 30)) == at(2026, 1, 16, 4)
    assert c.next_after(utc(2026, 1, 15, 2, 59)).tzinfo is B
    assert in_utc(c.next_after(utc(2026, 1, 15, 2, 59))) == utc(2026, 1, 15, 3)


def test_steps_lists_ranges():
    assert cron("*/15 * * * *").minutes == {0, 15, 30, 45}
    assert cron("0 8-18/2 * * *").hours == {8, 10, 12, 14, 16, 18}
    assert cron("5/20 * * * *").minutes == {5, 25, 45}
    assert cron("0,30 1,2 * * *").minutes == {0, 30}
    assert cron("0 0 1-5,20 * *").days == {1, 2, 3, 4, 5, 20}
    c = cron("*/15 * * * *")
    assert c.next_after(at(2026, 1, 15, 10, 7)) == at(2026, 1, 15, 10, 15)
    assert c.next_after(at(2026, 1, 15, 10, 14, 59) + timedelta(microseconds=999_999)) == at(
        2026, 1, 15, 10, 15
    )
    assert c.next_after(at(2026, 1, 15, 23, 45)) == at(2026, 1, 16, 0, 0)


def test_names():
    assert cron("0 0 1 jan,JUL *").months == {1, 7}
    assert cron("0 0 * * mon-fri").weekdays == {1, 2, 3, 4, 5}
    assert cron("0 0 * * mon-sun").weekdays == set(range(7))
    assert cron("0 0 * * 7").weekdays == cron("0 0 * * sun").weekdays == {0}
    assert cron("0 0 * * 1-7").weekdays == set(range(7))
    # Saturday 17 January 2026 -> Monday 19th
    assert cron("30 3 * * mon-fri").next_after(at(2026, 1, 17, 12)) == at(2026, 1, 19, 3, 30)


def test_month_and_year_ends():
    assert cron("0 0 1 * *").next_after(at(2026, 1, 31, 12)) == at(2026, 2, 1)
    assert cron("0 0 1 1 *").next_after(at(2026, 12, 31, 23, 59)) == at(2027, 1, 1)
    assert cron("59 23 31 12 *").next_after(at(2026, 12, 31, 23, 59)) == at(2027, 12, 31, 23, 59)
    assert cron("0 0 31 * *").next_after(at(2026, 4, 1)) == at(2026, 5, 31)
    assert cron("0 12 29 2 *").next_after(at(2026, 3, 1)) == at(2028, 2, 29, 12)
    assert cron("0 0 * 2 *").next_after(at(2026, 2, 28, 0)) == at(2027, 2, 1)


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", at(2026, 1, 15, 11)),
        ("@daily", at(2026, 1, 16)),
        ("@midnight", at(2026, 1, 16)),
        ("@weekly", at(2026, 1, 18)),  # Sunday
        ("@monthly", at(2026, 2, 1)),
        ("@yearly", at(2027, 1, 1)),
        ("@annually", at(2027, 1, 1)),
        ("@Daily", at(2026, 1, 16)),
    ],
)
def test_macros(macro, expected):
    c = cron(macro)
    assert c.next_after(at(2026, 1, 15, 10, 30)) == expected
    assert str(c) == macro


def test_day_of_month_or_day_of_week():
    c = cron("0 0 13 * fri")  # both restricted: either matches
    assert c.next_after(at(2026, 1, 12)) == at(2026, 1, 13)  # Tuesday the 13th
    assert c.next_after(at(2026, 1, 13)) == at(2026, 1, 16)  # Friday
    c = cron("0 0 */2 * mon")  # a field starting with * : both must match
    assert c.next_after(at(2026, 1, 12)) == at(2026, 1, 19)  # odd-day Monday after the 12th


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0 4 * *",
        "0 4 * * * *",
        "@reboot",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * 0 *",
        "* * * * 8",
        "*/0 * * * *",
        "*/x * * * *",
        "5-1 * * * *",
        "a * * * *",
        "1,,2 * * * *",
        "-5 * * * *",
        "* * * foo *",
        "* * * * funday",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
    ],
)
def test_bad_cron(bad):
    with pytest.raises(ConfigError) as err:
        CronSpec.parse(bad, "UTC", where="bots.web.schedule.restart")
    assert err.value.hint == CRON_HINT
    assert "minute hour day-of-month month day-of-week" in err.value.hint
    assert err.value.where == "bots.web.schedule.restart"


def test_feb_30_is_fine_when_a_weekday_can_match():
    c = cron("0 0 30 2 mon")
    assert c.next_after(at(2026, 2, 1)) == at(2026, 2, 2)


def test_cron_across_spring_forward():
    c = cron("30 2 * * *")  # 02:30 does not exist on 29 March: runs at the jump
    first = c.next_after(at(2026, 3, 29, 0))
    assert in_utc(first) == utc(2026, 3, 29, 1)
    assert in_utc(c.next_after(first)) == utc(2026, 3, 30, 0, 30)
    c = cron("0 * * * *")
    assert in_utc(c.next_after(at(2026, 3, 29, 1, 30))) == utc(2026, 3, 29, 1)  # 03:00 CEST
    assert in_utc(c.next_after(utc(2026, 3, 29, 1))) == utc(2026, 3, 29, 2)
    c = cron("*/15 2 * * *")  # the whole hour is skipped: fires once at the jump
    first = c.next_after(at(2026, 3, 29, 1))
    assert in_utc(first) == utc(2026, 3, 29, 1)
    assert in_utc(c.next_after(first)) == utc(2026, 3, 30, 0)
    assert in_utc(cron("0 4 * * *").next_after(at(2026, 3, 29))) == utc(2026, 3, 29, 2)


def test_cron_across_fall_back():
    c = cron("30 2 * * *")  # 02:30 happens twice on 25 October: runs the first time only
    first = c.next_after(at(2026, 10, 25, 0))
    assert in_utc(first) == utc(2026, 10, 25, 0, 30)
    assert in_utc(c.next_after(first)) == utc(2026, 10, 26, 1, 30)
    assert in_utc(c.next_after(at(2026, 10, 25, 2, 10, fold=1))) == utc(2026, 10, 26, 1, 30)


def test_frequent_cron_keeps_its_rhythm_through_the_repeated_hour():
    c = cron("*/30 * * * *")
    now = at(2026, 10, 25, 1, 50)
    fired = []
    for _ in range(6):
        now = c.next_after(now)
        fired.append(in_utc(now))
    assert fired == [
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 1, 0),  # 02:00 CET
        utc(2026, 10, 25, 1, 30),  # 02:30 CET
        utc(2026, 10, 25, 2, 0),  # 03:00 CET
        utc(2026, 10, 25, 2, 30),
    ]


def test_cron_in_utc_ignores_dst():
    c = CronSpec.parse("30 2 * * *", "UTC")
    assert c.next_after(at(2026, 3, 29, 0)) == utc(2026, 3, 29, 2, 30)
