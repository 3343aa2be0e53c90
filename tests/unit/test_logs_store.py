"""Rotation by size and by UTC day, gzip (inline and in the background), retention by age and size."""

from __future__ import annotations

import gzip
import os

import pytest

from clawpen.errors import HostError
from clawpen.logs import store, upkeep
from clawpen.logs import writer as writer_mod
from clawpen.logs.store import compress_file, list_bots, list_rotated
from clawpen.logs.upkeep import Compressor, retention_sweep
from clawpen.logs.writer import LogWriter

DAY = 86400.0
MIDNIGHT = 1795564800.0  # 2026-11-25T00:00:00Z


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def texts(data: bytes) -> list[bytes]:
    return [line[32:] for line in data.split(b"\n")[:-1]]


def all_texts(directory, bot="bot"):
    """Every record's text: rotated files (gz or not) in order, then the current file."""
    out: list[bytes] = []
    for entry in list_rotated(directory, bot):
        opener = gzip.open if entry.compressed else open
        with opener(entry.path, "rb") as handle:
            out += texts(handle.read())
    current = directory / f"{bot}.log"
    if current.exists():
        out += texts(current.read_bytes())
    return out


def make_rotated(directory, bot, closed_at, size, *, gz=True, seq=0):
    name = f"{bot}.{store.stamp_of(closed_at)}{'' if seq == 0 else f'-{seq}'}.log"
    path = directory / (name + ".gz" if gz else name)
    path.write_bytes(os.urandom(size))
    return path


# --- rotation ---------------------------------------------------------------------------------


def test_rotation_by_size_keeps_every_record_in_order(tmp_path):
    clock = Clock(MIDNIGHT + 3600)
    with LogWriter(tmp_path, "bot", clock, max_bytes=4096) as writer:
        for i in range(500):
            clock.t += 0.5
            writer.write("out", b"line %05d\n" % i)
    rotated = list_rotated(tmp_path, "bot")
    assert len(rotated) == 5  # 500 records of 43 bytes, 4096 bytes a file
    assert all(r.compressed for r in rotated)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".log") and p.name != "bot.log"]
    for entry in rotated:
        with gzip.open(entry.path, "rb") as handle:
            assert len(handle.read()) <= 4096
    assert all_texts(tmp_path) == [b"line %05d" % i for i in range(500)]


def test_rotated_name_is_the_closing_time_and_names_do_not_collide(tmp_path):
    clock = Clock(MIDNIGHT + 10.5)
    with LogWriter(tmp_path, "bot", clock, max_bytes=100) as writer:
        for i in range(4):  # all in the same second: -1, -2 suffixes
            writer.write("out", b"%070d\n" % i)
        assert writer.rotations == 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "bot.20261125T000010-1.log.gz",
        "bot.20261125T000010-2.log.gz",
        "bot.20261125T000010.log.gz",
        "bot.log",
    ]
    assert [r.seq for r in list_rotated(tmp_path, "bot")] == [0, 1, 2]
    assert all_texts(tmp_path) == [b"%070d" % i for i in range(4)]


def test_a_chunk_larger_than_max_bytes_goes_in_whole(tmp_path):
    with LogWriter(tmp_path, "bot", Clock(MIDNIGHT), max_bytes=100) as writer:
        writer.write("out", b"x" * 50 + b"\n" + b"y" * 50 + b"\n")
        assert writer.rotations == 0
        writer.write("out", b"z\n")
        assert writer.rotations == 1
    assert all_texts(tmp_path) == [b"x" * 50, b"y" * 50, b"z"]


def test_rotation_at_utc_day_change(tmp_path):
    clock = Clock(MIDNIGHT - 2.5)
    with LogWriter(tmp_path, "bot", clock) as writer:
        writer.write("out", b"late\n")
        clock.t = MIDNIGHT - 0.000001
        writer.write("err", b"last\n")
        clock.t = MIDNIGHT + 0.25
        writer.write("out", b"early\n")
        clock.t = MIDNIGHT + 7200
        writer.write("out", b"later\n")
    rotated = list_rotated(tmp_path, "bot")
    assert [r.path.name for r in rotated] == ["bot.20261125T000000.log.gz"]
    with gzip.open(rotated[0].path, "rb") as handle:
        old = handle.read()
    assert old.split(b"\n")[1].startswith(b"2026-11-24T23:59:59.999999Z err last")
    assert texts(old) == [b"late", b"last"]
    assert texts((tmp_path / "bot.log").read_bytes()) == [b"early", b"later"]


def test_no_daily_rotation_when_disabled(tmp_path):
    clock = Clock(MIDNIGHT - 1)
    with LogWriter(tmp_path, "bot", clock, daily=False) as writer:
        writer.write("out", b"a\n")
        clock.t = MIDNIGHT + 1
        writer.write("out", b"b\n")
    assert list_rotated(tmp_path, "bot") == []


def test_existing_file_from_an_earlier_day_rotates_on_first_write(tmp_path):
    (tmp_path / "bot.log").write_bytes(b"2026-11-23T12:00:00.000000Z out from a previous run\n")
    with LogWriter(tmp_path, "bot", Clock(MIDNIGHT + 60)) as writer:
        writer.write("out", b"today\n")
    assert [r.path.name for r in list_rotated(tmp_path, "bot")] == ["bot.20261125T000100.log.gz"]
    assert all_texts(tmp_path) == [b"from a previous run", b"today"]


def test_explicit_rotate_and_empty_file(tmp_path):
    with LogWriter(tmp_path, "bot", Clock(MIDNIGHT)) as writer:
        assert writer.rotate() is None
        writer.write("out", b"a\n")
        target = writer.rotate()
        assert target == tmp_path / "bot.20261125T000000.log"
        assert writer.last_rotated == target
    assert all_texts(tmp_path) == [b"a"]


def test_rotation_fsyncs_the_file_and_the_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with LogWriter(tmp_path, "bot", Clock(MIDNIGHT)) as writer:
        writer.write("out", b"a\n")
        writer.rotate()
    assert synced[0] == str(tmp_path / "bot.log")  # before the rename
    assert str(tmp_path) in synced


def test_failed_rotation_on_write_keeps_the_chunk_and_reports(tmp_path, monkeypatch):
    writer = LogWriter(tmp_path, "bot", Clock(MIDNIGHT), max_bytes=60)
    writer.write("out", b"first\n")

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "rename", refuse)
    with pytest.raises(HostError) as err:
        writer.write("out", b"second\n")
    assert "rotate" in err.value.what
    monkeypatch.undo()
    writer.write("out", b"third\n")  # rotates now
    writer.close()
    assert len(list_rotated(tmp_path, "bot")) == 1
    assert all_texts(tmp_path) == [b"first", b"second", b"third"]


def test_torn_end_does_not_leave_an_empty_line_after_rotation(tmp_path):
    (tmp_path / "bot.log").write_bytes(b"2026-11-24T23:00:00.000000Z out cut sho")
    with LogWriter(tmp_path, "bot", Clock(MIDNIGHT + 5)) as writer:  # next day: rotates first
        writer.write("out", b"new day\n")
    assert (tmp_path / "bot.log").read_bytes() == b"2026-11-25T00:00:05.000000Z out new day\n"


def test_rotation_failure_is_a_host_error_and_the_writer_goes_on(tmp_path, monkeypatch):
    writer = LogWriter(tmp_path, "bot", Clock(MIDNIGHT))
    writer.write("out", b"a\n")

    def refuse(*args):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(store.os, "rename", refuse)
    with pytest.raises(HostError):
        writer.rotate()
    monkeypatch.undo()
    writer.write("out", b"b\n")
    writer.close()
    assert list_rotated(tmp_path, "bot") == []
    assert texts((tmp_path / "bot.log").read_bytes()) == [b"a", b"b"]


# --- compression ------------------------------------------------------------------------------


def test_compress_file_round_trip_and_missing_source(tmp_path):
    path = tmp_path / "bot.20261125T000000.log"
    data = b"".join(b"2026-11-25T00:00:00.000000Z out %d\n" % i for i in range(10000))
    path.write_bytes(data)
    target = compress_file(path, level=1)
    assert target == tmp_path / "bot.20261125T000000.log.gz"
    assert not path.exists()
    assert gzip.decompress(target.read_bytes()) == data
    assert compress_file(path) is None
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left


def test_background_compressor(tmp_path):
    clock = Clock(MIDNIGHT)
    with Compressor(level=1) as compressor:
        with LogWriter(tmp_path, "bot", clock, max_bytes=2000, compressor=compressor) as writer:
            for i in range(300):
                writer.write("out", b"record %d\n" % i)
        assert compressor.wait_idle(10)
        assert not compressor.errors
    rotated = list_rotated(tmp_path, "bot")
    assert rotated
    assert all(r.compressed for r in rotated)
    assert all_texts(tmp_path) == [b"record %d" % i for i in range(300)]


def test_full_compressor_queue_leaves_log_for_the_sweep(tmp_path):
    compressor = Compressor(max_queued=1)
    compressor.close()  # closed: refuses everything, like a full queue
    with LogWriter(tmp_path, "bot", Clock(MIDNIGHT), max_bytes=100, compressor=compressor) as writer:
        for i in range(5):
            writer.write("out", b"%070d\n" % i)
    rotated = list_rotated(tmp_path, "bot")
    assert len(rotated) == 4
    assert not any(r.compressed for r in rotated)
    report = retention_sweep(tmp_path, MIDNIGHT + 60)
    assert len(report.compressed) == 4
    assert all(r.compressed for r in list_rotated(tmp_path, "bot"))
    assert all_texts(tmp_path) == [b"%070d" % i for i in range(5)]


def test_compressor_records_errors_and_keeps_going(tmp_path):
    seen = []
    bad = tmp_path / "bot.20261125T000000.log"
    bad.mkdir()  # reading it fails (EISDIR), as root too
    good = tmp_path / "bot.20261125T000001.log"
    good.write_bytes(b"y\n")
    with Compressor(on_error=lambda path, err: seen.append(path)) as compressor:
        assert compressor.submit(bad)
        assert compressor.submit(good)
        assert not compressor.submit(good) or compressor.busy(good) is False
        assert compressor.wait_idle(10)
    assert seen == [bad]
    assert compressor.errors[0][0] == bad
    assert compressor.done == 2
    assert (tmp_path / "bot.20261125T000001.log.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not compressor.submit(good)  # closed


def test_listing_prefers_gz_when_both_forms_exist(tmp_path):
    make_rotated(tmp_path, "bot", MIDNIGHT, 10, gz=False)
    make_rotated(tmp_path, "bot", MIDNIGHT, 10, gz=True)
    make_rotated(tmp_path, "bot", MIDNIGHT - DAY, 10, gz=False, seq=1)
    make_rotated(tmp_path, "bot", MIDNIGHT - DAY, 10, gz=False)
    make_rotated(tmp_path, "other", MIDNIGHT, 10)
    (tmp_path / "bot.notes.log").write_bytes(b"")
    rotated = list_rotated(tmp_path, "bot")
    assert [(r.closed_at, r.seq, r.compressed) for r in rotated] == [
        (MIDNIGHT - DAY, 0, False),
        (MIDNIGHT - DAY, 1, False),
        (MIDNIGHT, 0, True),
    ]
    assert list_bots(tmp_path) == ["bot", "other"]


# --- retention --------------------------------------------------------------------------------


def test_retention_by_age(tmp_path):
    now = MIDNIGHT
    old = make_rotated(tmp_path, "bot", now - 31 * DAY, 100)
    old_plain = make_rotated(tmp_path, "bot", now - 40 * DAY, 100, gz=False)
    young = make_rotated(tmp_path, "bot", now - 29 * DAY, 100)
    other_old = make_rotated(tmp_path, "other", now - 35 * DAY, 100)
    (tmp_path / "bot.log").write_bytes(b"current")
    report = retention_sweep(tmp_path, now)
    assert sorted(report.deleted) == sorted([old, old_plain, other_old])
    assert report.freed == 300
    assert young.exists()
    assert (tmp_path / "bot.log").exists()
    assert retention_sweep(tmp_path, now).deleted == ()


def test_retention_max_age_is_configurable_and_per_bot_list(tmp_path):
    now = MIDNIGHT
    a = make_rotated(tmp_path, "bot", now - 2 * DAY, 10)
    b = make_rotated(tmp_path, "other", now - 2 * DAY, 10)
    report = retention_sweep(tmp_path, now, max_age=DAY, bots=["bot"])
    assert report.deleted == (a,)
    assert b.exists()


def test_retention_by_total_size_deletes_oldest_first(tmp_path):
    now = MIDNIGHT
    files = [make_rotated(tmp_path, "bot", now - (10 - k) * 3600, 1000) for k in range(6)]
    (tmp_path / "bot.log").write_bytes(b"x" * 1500)
    report = retention_sweep(tmp_path, now, max_total=4000)
    # 6000 + 1500 bytes: the four oldest go (7500 -> 3500)
    assert report.deleted == tuple(files[:4])
    assert [f.exists() for f in files] == [False] * 4 + [True] * 2
    assert (tmp_path / "bot.log").exists()


def test_retention_never_deletes_the_current_file(tmp_path):
    (tmp_path / "bot.log").write_bytes(b"x" * 5000)
    rotated = make_rotated(tmp_path, "bot", MIDNIGHT - 60, 10)
    report = retention_sweep(tmp_path, MIDNIGHT, max_total=100)
    assert report.deleted == (rotated,)
    assert (tmp_path / "bot.log").stat().st_size == 5000


def test_retention_leaves_files_the_compressor_is_on(tmp_path):
    path = make_rotated(tmp_path, "bot", MIDNIGHT - 40 * DAY, 10, gz=False)

    class Busy(Compressor):
        def busy(self, p):
            return p == path

    with Busy() as compressor:
        report = retention_sweep(tmp_path, MIDNIGHT, compressor=compressor)
    assert report == upkeep.SweepReport((), (), 0)
    assert path.exists()


def test_retention_on_a_missing_folder(tmp_path):
    assert retention_sweep(tmp_path / "nope", MIDNIGHT) == upkeep.SweepReport((), (), 0)


def test_writer_rotation_then_retention_end_to_end(tmp_path):
    clock = Clock(MIDNIGHT)
    with LogWriter(tmp_path, "bot", clock, max_bytes=300) as writer:
        for day in range(40):
            clock.t = MIDNIGHT + day * DAY + 5
            writer.write("out", b"day %02d\n" % day)
    assert len(list_rotated(tmp_path, "bot")) == 39
    retention_sweep(tmp_path, clock.t)
    # the file holding day 8 was closed on day 9, exactly 30 days before `now`: kept
    assert all_texts(tmp_path) == [b"day %02d" % d for d in range(8, 40)]


def test_writer_module_constants():
    assert writer_mod.DEFAULT_MAX_BYTES == 50 << 20
    assert store.DEFAULT_MAX_AGE == 30 * DAY
    assert store.DEFAULT_MAX_TOTAL == 1 << 30
