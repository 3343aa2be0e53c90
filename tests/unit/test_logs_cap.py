"""Log caps held on write, compression lag bounded, rate limit and disk-full pause, with markers."""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
from pathlib import Path

import pytest

from clawpen.alerts.rules import rules_from
from clawpen.logs import writer as writer_mod
from clawpen.logs.budget import LogBudget, TokenBucket
from clawpen.logs.space import SpaceGuard, state_disk_values, watermark
from clawpen.logs.store import list_rotated
from clawpen.logs.upkeep import Compressor, retention_sweep
from clawpen.logs.writer import LogWriter, daemon_writer
from clawpen.spec.alerts import MonitoringConfig

MIDNIGHT = 1795564800.0  # 2026-11-25T00:00:00Z
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LINE = b"x" * 999 + b"\n"


class Clock:
    def __init__(self, t: float = MIDNIGHT + 60) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def on_disk(directory: Path, bot: str | None = None) -> int:
    """Bytes of log files in ``directory`` (of one bot, or of all), as `du` would add them up."""
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if bot is None or entry.name.startswith(f"{bot}."):
                with contextlib.suppress(FileNotFoundError):  # the compressor replaced it meanwhile
                    total += entry.stat().st_size
    return total


def texts(directory: Path, bot: str) -> list[bytes]:
    """Every record's text, rotated files (gz or not) in order, then the current file."""
    out: list[bytes] = []
    for entry in list_rotated(directory, bot):
        opener = gzip.open if entry.compressed else open
        with opener(entry.path, "rb") as handle:
            out += [line[32:] for line in handle.read().split(b"\n")[:-1]]
    current = directory / f"{bot}.log"
    if current.exists():
        out += [line[32:] for line in current.read_bytes().split(b"\n")[:-1]]
    return out


# --- caps on write ----------------------------------------------------------------------------


def test_per_bot_cap_holds_after_every_write_and_the_newest_lines_stay(tmp_path: Path) -> None:
    clock = Clock()
    cap = 1 * MiB
    with LogWriter(tmp_path, "flood", clock, max_total=cap) as writer:
        for i in range(10_000):  # 10 MB through a 1 MiB cap
            clock.t += 0.001
            writer.write("out", b"%06d " % i + LINE[7:])
            if i % 50 == 0:
                assert on_disk(tmp_path) <= cap, f"over the cap after line {i}"
        assert on_disk(tmp_path) <= cap
    lines = texts(tmp_path, "flood")
    numbers = [int(line.split(b" ", 1)[0]) for line in lines]
    assert numbers == list(range(numbers[0], 10_000))  # oldest dropped whole files, none in between
    assert len(lines) * 1032 > cap * 0.6  # and the cap is used, not emptied
    assert len(list_rotated(tmp_path, "flood")) >= 2


def test_daemon_wide_cap_takes_from_the_biggest_bot_and_spares_a_quiet_one(tmp_path: Path) -> None:
    clock = Clock()
    with Compressor(budget=LogBudget(max_all=2 * MiB)) as comp:
        budget = comp.budget
        quiet = LogWriter(tmp_path, "quiet", clock, compressor=comp, max_bytes=64 * KiB)
        flood = LogWriter(tmp_path, "flood", clock, compressor=comp)
        for i in range(300):  # the quiet bot: ~20 KiB, some of it rotated daily
            quiet.write("out", b"quiet %d\n" % i)
            if i % 100 == 99:
                clock.t += 86400
        noise = os.urandom(1 << 20).hex().encode()  # hex compresses to about half, not to nothing
        for i in range(20_000):  # 20 MB
            at = i * 1000 % (len(noise) - 1000)
            flood.write("out", b"%d %b\n" % (i, noise[at : at + 1000]))
            if i % 200 == 0:
                assert on_disk(tmp_path) <= 2 * MiB
                assert budget.total >= on_disk(tmp_path) * 0.5  # the count follows the disk
        quiet.close()
        flood.close()
        assert comp.wait_idle(10)
    assert on_disk(tmp_path) <= 2 * MiB
    assert texts(tmp_path, "quiet") == [b"quiet %d" % i for i in range(300)]
    assert budget.deleted > 0


def test_compression_lag_is_bounded_oldest_waiting_file_dropped(tmp_path: Path) -> None:
    comp = Compressor()
    comp.close()  # refuses every file, as a compressor that cannot keep up
    clock = Clock()
    with LogWriter(tmp_path, "bot", clock, compressor=comp, max_bytes=10 * KiB, max_waiting=2) as writer:
        for i in range(200):  # 200 KB: about 20 rotations
            writer.write("out", b"%04d " % i + LINE[5:])
    rotated = list_rotated(tmp_path, "bot")
    assert len(rotated) == 2 and not any(r.compressed for r in rotated)
    assert comp.budget.dropped_waiting >= 15
    numbers = [int(t.split(b" ")[0]) for t in texts(tmp_path, "bot")]
    assert numbers == list(range(numbers[0], 200))


def test_without_the_bound_the_waiting_files_pile_up(tmp_path: Path) -> None:
    """The control: the same flood with no bound keeps every uncompressed file."""
    comp = Compressor()
    comp.close()
    with LogWriter(tmp_path, "bot", Clock(), compressor=comp, max_bytes=10 * KiB) as writer:
        for _ in range(200):
            writer.write("out", LINE)
    assert len(list_rotated(tmp_path, "bot")) >= 15


def test_budget_follows_compression_and_the_retention_sweep(tmp_path: Path) -> None:
    clock = Clock()
    with Compressor() as comp:
        with LogWriter(tmp_path, "bot", clock, compressor=comp, max_bytes=20 * KiB) as writer:
            for i in range(300):
                writer.write("out", b"%d " % i + LINE[8:])
        assert comp.wait_idle(10)
        assert comp.budget.total == on_disk(tmp_path)
        assert all(r.compressed for r in list_rotated(tmp_path, "bot"))
        retention_sweep(tmp_path, clock.t + 40 * 86400, compressor=comp)  # all rotated files too old
        assert comp.budget.total == on_disk(tmp_path) == (tmp_path / "bot.log").stat().st_size


def test_an_earlier_run_s_files_are_counted(tmp_path: Path) -> None:
    (tmp_path / "old.20261120T000000.log.gz").write_bytes(os.urandom(900 * KiB))
    comp = Compressor(budget=LogBudget(max_all=1 * MiB))
    with comp, LogWriter(tmp_path, "new", Clock(), compressor=comp) as writer:
        for _ in range(300):
            writer.write("out", LINE)
    assert not (tmp_path / "old.20261120T000000.log.gz").exists()  # the only rotated file there was
    assert on_disk(tmp_path) <= 1 * MiB


# --- rate limit -------------------------------------------------------------------------------


def test_rate_limit_drops_lines_then_writes_a_marker_and_one_event_a_minute(tmp_path: Path) -> None:
    clock = Clock()
    events: list[tuple[str, str]] = []
    writer = LogWriter(
        tmp_path, "bot", clock, rate=1000, burst=4000, notify=lambda k, t: events.append((k, t))
    )
    for i in range(100):  # 10 KB at once: 4 KB pass
        writer.write("out", b"%02d " % i + b"y" * 96 + b"\n")
    assert writer.dropped == {"rate limit": 60}
    assert [k for k, _ in events] == ["log-dropped"]
    clock.t += 1.0  # half refilled at 2 s: still closed
    writer.write("out", b"early\n")
    clock.t += 1.5
    writer.write("out", b"after\n")
    lines = texts(tmp_path, "bot")
    assert lines[:40] == [b"%02d " % i + b"y" * 96 for i in range(40)]
    assert lines[40:] == [b"[clawpen: 61 lines dropped: rate limit]", b"after"]
    assert (tmp_path / "bot.log").read_bytes().split(b"\n")[40][28:32] == b"err "
    for _ in range(100):  # a second flood within the minute: counted, no second event
        writer.write("out", b"z" * 200 + b"\n")
    assert len(events) == 1
    clock.t += 61
    writer.write("out", b"z" * 5000 + b"\n")
    for _ in range(100):
        writer.write("out", b"z" * 200 + b"\n")
    assert len(events) == 2 and "rate limit" in events[1][1]
    writer.close()


def test_a_silent_bot_gets_its_marker_from_tick(tmp_path: Path) -> None:
    clock = Clock()
    writer = LogWriter(tmp_path, "bot", clock, rate=100, burst=100, notify=lambda k, t: None)
    writer.write("out", b"a" * 99 + b"\n")
    writer.write("out", b"b\n" * 5)
    writer.tick()  # not refilled yet
    assert texts(tmp_path, "bot") == [b"a" * 99]
    clock.t += 5
    writer.tick()
    assert texts(tmp_path, "bot") == [b"a" * 99, b"[clawpen: 5 lines dropped: rate limit]"]
    writer.close()


def test_token_bucket_refills_at_its_rate_and_survives_a_clock_step_back() -> None:
    bucket = TokenBucket(100, 200, 0.0)
    assert bucket.take(200, 0.0) and not bucket.take(1, 0.0)
    assert not bucket.take(50, 0.5)  # limited until half full (100)
    assert bucket.take(50, 1.0)
    assert not bucket.take(100, -50.0)  # the clock stepped back: no refill, no crash
    assert bucket.take(100, 2.0)


# --- disk full --------------------------------------------------------------------------------


def test_enospc_pauses_counts_and_resumes_with_a_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    events: list[str] = []
    writer = LogWriter(tmp_path, "bot", clock, notify=lambda k, t: events.append(k))
    writer.write("out", b"before\n")
    calls = 0
    real = os.writev

    def full(fd: int, buffers: list[bytes]) -> int:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod.os, "writev", full)
    writer.write("out", b"lost 1\nlost 2\n")  # fails: no exception reaches the caller
    for _ in range(50):
        writer.write("err", b"lost\n")  # paused: not even tried
    assert calls == 1
    assert writer.dropped == {"disk full": 52}
    assert events == ["log-error", "log-dropped"]
    monkeypatch.setattr(writer_mod.os, "writev", real)
    writer.write("out", b"still paused\n")
    clock.t += 1.5  # the retry time has passed
    writer.write("out", b"back\n")
    writer.close()
    assert texts(tmp_path, "bot") == [b"before", b"[clawpen: 53 lines dropped: disk full]", b"back"]


def test_write_error_without_notify_still_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a plain writer reports a full disk as an error (the old contract)."""
    writer = LogWriter(tmp_path, "bot", Clock())

    def full(fd: int, buffers: list[bytes]) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod.os, "writev", full)
    with pytest.raises(Exception, match="cannot write the log"):
        writer.write("out", b"a\n")


class FakeFs:
    """statvfs of a 100 MiB filesystem whose free space the test sets."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, path: Path) -> os.statvfs_result:
        self.calls += 1
        blocks, avail = 100 * 256, self.free // 4096
        return os.statvfs_result((4096, 4096, blocks, avail, avail, 1000, 500, 500, 0, 255))


def test_watermark_is_the_smaller_of_5_percent_and_1_gib() -> None:
    assert watermark(100 * MiB) == 5 * MiB
    assert watermark(1000 * GiB) == 1 * GiB
    assert watermark(20 * GiB) == GiB


def test_low_space_pauses_every_writer_and_resumes_with_a_marker(tmp_path: Path) -> None:
    fs = FakeFs(free=50 * MiB)
    mono = Clock(0.0)
    guard = SpaceGuard(tmp_path, statvfs=fs, clock=mono)
    comp = Compressor()
    comp.budget.space = guard
    clock = Clock()
    writer = daemon_writer(tmp_path, "bot", clock, comp, redact=None, notify=lambda k, t: None)
    other = daemon_writer(tmp_path, "other", clock, comp, redact=None, notify=lambda k, t: None)
    writer.write("out", b"one\n")
    fs.free = 4 * MiB  # below the 5 MiB watermark
    mono.t += 1.1
    for _ in range(1000):
        writer.write("out", b"lost\n")
        other.write("out", b"lost\n")
    assert guard.low and writer.dropped == {"disk full": 1000} and other.dropped == {"disk full": 1000}
    assert fs.calls <= 3  # a look per second, not per write
    fs.free = 60 * MiB
    mono.t += 1.1
    writer.write("out", b"two\n")
    other.tick()  # quiet since: the daemon's tick writes its marker
    writer.close()
    other.close()
    comp.close()
    assert texts(tmp_path, "bot") == [b"one", b"[clawpen: 1000 lines dropped: disk full]", b"two"]
    assert texts(tmp_path, "other") == [b"[clawpen: 1000 lines dropped: disk full]"]


def test_guard_looks_again_before_a_fast_writer_crosses_the_watermark(tmp_path: Path) -> None:
    fs = FakeFs(free=6 * MiB)  # 1 MiB above the watermark
    guard = SpaceGuard(tmp_path, statvfs=fs, clock=Clock(0.0))
    assert guard.allow(512 * KiB)
    fs.free = 4 * MiB  # someone else wrote 2 MiB
    assert guard.allow(256 * KiB)  # within the margin seen: no look
    assert not guard.allow(512 * KiB)  # the margin is used up: looks, and it is low
    assert fs.calls == 2 and guard.low


def test_writer_starts_on_a_full_disk_and_opens_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.open

    def refuse(path: str, *args: int) -> int:
        if str(path).endswith("bot.log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args)

    monkeypatch.setattr(writer_mod.os, "open", refuse)
    clock = Clock()
    writer = LogWriter(tmp_path, "bot", clock, notify=lambda k, t: None)  # no exception
    writer.write("out", b"lost\n")
    monkeypatch.setattr(writer_mod.os, "open", real)
    clock.t += 2
    writer.write("out", b"kept\n")
    writer.close()
    assert texts(tmp_path, "bot") == [b"[clawpen: 1 lines dropped: disk full]", b"kept"]


def test_state_disk_metric_and_its_builtin_alert_rule(tmp_path: Path) -> None:
    values = state_disk_values(tmp_path)
    assert values["state_disk_free_bytes"] > 0
    assert values["state_disk_low"] in (0.0, 1.0)
    rule = {r.name: r for r in rules_from(MonitoringConfig())}["host_state_disk_low"]
    assert rule.scope == "host" and rule.holds(1.0) and not rule.holds(0.0)


def test_space_component_sets_the_guard_and_the_cap_and_tells_low_and_back(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from clawpen.logs.component import LogSpaceComponent

    fs = FakeFs(free=50 * MiB)
    notes: list[tuple[str, str]] = []
    comp = Compressor()
    daemon = SimpleNamespace(
        services=SimpleNamespace(compressor=comp), note=lambda kind, text: notes.append((kind, text))
    )
    part = LogSpaceComponent(tmp_path)
    part.guard = SpaceGuard(tmp_path, statvfs=fs, every=0.0)

    async def scenario() -> None:
        await part.start(daemon)  # type: ignore[arg-type]
        assert comp.budget.space is part.guard
        assert comp.budget.max_all == 25 * MiB  # a quarter of the 100 MiB filesystem
        await asyncio.sleep(1.2)  # idle now: its next look is idle_tick (30 s) away
        fs.free = 1 * MiB
        await asyncio.sleep(1.2)
        assert notes == []  # nobody wrote: not looked at yet
        assert not part.guard.allow(100)  # a writer's look finds it low and wakes the watch at once
        await asyncio.sleep(0.1)
        assert [k for k, _ in notes] == ["disk-low"]
        fs.free = 40 * MiB  # while low it looks every second, writes or not
        await asyncio.sleep(1.2)
        await part.stop()

    asyncio.run(scenario())
    comp.close()
    assert [k for k, _ in notes] == ["disk-low", "disk-ok"]
    assert "1.0 MiB free of 100.0 MiB, watermark 5.0 MiB" in notes[0][1]
