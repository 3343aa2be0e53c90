"""read_logs (since/until/grep/tail/streams over rotated gz and current files), follow, parse_since."""

from __future__ import annotations

import gzip
import os
import threading
import time

import pytest

from clawpen.errors import UsageError
from clawpen.logs import query
from clawpen.logs.query import LogRecord, follow, parse_since, read_logs
from clawpen.logs.store import list_rotated
from clawpen.logs.writer import LogWriter

MIDNIGHT = 1795564800.0  # 2026-11-25T00:00:00Z
N = 600


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ts_of(i):
    return MIDNIGHT + 10 * i + 0.125


@pytest.fixture
def history(tmp_path):
    """N records, one every 10 s from midnight, "out" for even i and "err" for odd; rotated every
    ~2 KiB into .gz files, with one rotated file left uncompressed, and the rest in bot.log."""
    clock = Clock(MIDNIGHT)
    with LogWriter(tmp_path, "bot", clock, max_bytes=2048) as writer:
        for i in range(N):
            clock.t = ts_of(i)
            writer.write("err" if i % 2 else "out", b"msg %04d%s\n" % (i, b" needle" if i % 50 == 0 else b""))
    rotated = list_rotated(tmp_path, "bot")
    assert len(rotated) > 5
    gz = rotated[2].path
    plain = gz.with_name(gz.name[:-3])
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    return tmp_path


def texts(records):
    return [r.text for r in records]


def msgs(indices):
    return [f"msg {i:04d}" + (" needle" if i % 50 == 0 else "") for i in indices]


def test_read_everything_in_order(history):
    records = list(read_logs(history, "bot"))
    assert texts(records) == msgs(range(N))
    assert records[0] == LogRecord(ts_of(0), "out", "msg 0000 needle")
    assert records[1].stream == "err"
    assert all(r.ts == pytest.approx(ts_of(i), abs=1e-6) for i, r in enumerate(records))


def test_since_until_across_files(history):
    since, until = ts_of(100), ts_of(450)
    records = list(read_logs(history, "bot", since=since, until=until))
    assert texts(records) == msgs(range(100, 451))
    assert texts(read_logs(history, "bot", since=ts_of(598) - 1)) == msgs([598, 599])
    assert texts(read_logs(history, "bot", until=ts_of(1))) == msgs([0, 1])
    assert list(read_logs(history, "bot", since=ts_of(N) + 100)) == []


def test_grep_and_streams(history):
    assert texts(read_logs(history, "bot", grep=r"needle$")) == msgs(range(0, N, 50))
    assert texts(read_logs(history, "bot", grep="0[13]$", streams=["err"])) == msgs(
        [i for i in range(N) if i % 2 and i % 100 in (1, 3)]
    )
    assert {r.stream for r in read_logs(history, "bot", streams=("out",))} == {"out"}


def test_tail_across_rotated_and_current(history):
    current = (history / "bot.log").read_bytes().count(b"\n")
    assert current < 100
    assert texts(read_logs(history, "bot", tail=5)) == msgs(range(N - 5, N))
    assert texts(read_logs(history, "bot", tail=150)) == msgs(range(N - 150, N))
    assert texts(read_logs(history, "bot", tail=10_000)) == msgs(range(N))
    assert list(read_logs(history, "bot", tail=0)) == []


def test_tail_with_filters(history):
    assert texts(read_logs(history, "bot", tail=3, grep="needle")) == msgs([450, 500, 550])
    assert texts(read_logs(history, "bot", tail=4, streams=["out"])) == msgs([592, 594, 596, 598])
    assert texts(read_logs(history, "bot", tail=100, since=ts_of(580))) == msgs(range(580, N))
    assert texts(read_logs(history, "bot", tail=2, until=ts_of(300))) == msgs([299, 300])


def test_tail_reads_a_huge_current_file_from_its_end(tmp_path):
    line = b"2026-11-25T00:00:00.000000Z out " + b"x" * 90 + b"\n"
    with open(tmp_path / "bot.log", "wb") as handle:
        for _ in range(400):
            handle.write(line * 1000)  # 48 MiB
        handle.write(b"2026-11-25T00:00:01.000000Z err the end\n")

    def rchar():
        with open("/proc/self/io") as io:
            return int(next(x for x in io if x.startswith("rchar")).split()[1])

    before = rchar()
    records = list(read_logs(tmp_path, "bot", tail=3))
    read = rchar() - before
    assert texts(records) == ["x" * 90, "x" * 90, "the end"]
    assert read < 1 << 20


def test_partial_last_line_and_garbage_are_skipped(tmp_path):
    (tmp_path / "bot.log").write_bytes(
        b"2026-11-25T00:00:00.000000Z out one\n"
        b"not a record\n"
        b"2026-11-25T00:00:00.000000Z bad wrong stream\n"
        b"2026-13-25T00:00:00.000000Z out bad month is skipped\n"
        b"2026-11-25T00:00:01.000000Z out \xff\xfe bytes\n"
        b"2026-11-25T00:00:02.000000Z out being writ"
    )
    assert texts(read_logs(tmp_path, "bot")) == ["one", "\ufffd\ufffd bytes"]
    assert texts(read_logs(tmp_path, "bot", tail=1)) == ["\ufffd\ufffd bytes"]


def test_no_logs_at_all(tmp_path):
    assert list(read_logs(tmp_path, "bot")) == []
    assert list(read_logs(tmp_path / "missing", "bot", tail=3)) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError) as err:
        list(read_logs(tmp_path, "bot", grep="(unclosed"))
    assert err.value.where == "--grep"
    with pytest.raises(UsageError):
        list(read_logs(tmp_path, "bot", streams=["stdout"]))


def test_rotated_file_compressed_while_listed_is_read_as_gz(history, monkeypatch):
    """A .log that is compressed between the listing and the open is read from its .gz."""
    plain = next(r.path for r in list_rotated(history, "bot") if not r.compressed)
    real = query.store.list_rotated

    def listing_then_compress(directory, bot):
        entries = real(directory, bot)
        if plain.exists():
            query.store.compress_file(plain)
        return entries

    monkeypatch.setattr(query.store, "list_rotated", listing_then_compress)
    monkeypatch.setattr(query, "_snapshot", lambda d, b: _one_listing(d, b, listing_then_compress))
    assert texts(read_logs(history, "bot")) == msgs(range(N))


def _one_listing(directory, bot, lister):
    sources = []
    lower = float("-inf")
    for entry in lister(directory, bot):
        sources.append(query._Source(entry.path, lower, entry.closed_at + 1, False))
        lower = entry.closed_at
    path = directory / f"{bot}.log"
    sources.append(query._Source(path, lower, float("inf"), True))
    return sources, os.open(path, os.O_RDONLY)


# --- parse_since --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", MIDNIGHT - 3600),
        ("30m", MIDNIGHT - 1800),
        ("1h30m", MIDNIGHT - 5400),
        ("2d", MIDNIGHT - 2 * 86400),
        ("2026-11-24T10:00:00Z", 1795514400.0),
        ("2026-11-24T10:00:00.5Z", 1795514400.5),
        ("2026-11-24T12:00:00+02:00", 1795514400.0),
        ("2026-11-24T10:00:00", 1795514400.0),
        ("2026-11-24", 1795478400.0),
        ("1795514400", 1795514400.0),
        ("1795514400.25", 1795514400.25),
        (1795514400, 1795514400.0),
    ],
)
def test_parse_since(text, expected):
    assert parse_since(text, MIDNIGHT) == expected


@pytest.mark.parametrize("bad", ["", "yesterday", "1x", "2026-13-01T00:00:00Z", "-5m"])
def test_parse_since_rejects_with_hint(bad):
    with pytest.raises(UsageError) as err:
        parse_since(bad, MIDNIGHT, flag="--until")
    assert err.value.hint
    assert err.value.where == "--until"


# --- follow -------------------------------------------------------------------------------------


class Script:
    """A fake ``sleep`` that runs the next scripted action each time ``follow`` waits."""

    def __init__(self, *actions):
        self.actions = list(actions)
        self.sleeps = 0

    def __call__(self, seconds):
        assert seconds == 0.5  # follow's default longest wait
        self.sleeps += 1
        if self.actions:
            self.actions.pop(0)()

    def done(self):
        return not self.actions


def test_follow_sees_new_lines_and_survives_rotations(tmp_path):
    clock = Clock(MIDNIGHT)
    writer = LogWriter(tmp_path, "bot", clock)
    writer.write("out", b"before\n")

    def write(*lines):
        def act():
            clock.t += 1
            for line in lines:
                writer.write("out", line)

        return act

    def rotate_then_write():
        writer.write("out", b"last of old file\n")
        writer.rotate()
        writer.write("err", b"first of new file\n")

    def rotate_only():
        writer.write("out", b"end of second file\n")
        writer.rotate()

    script = Script(
        write(b"one\n"),
        write(b"two\nthr", b"ee\n"),
        lambda: None,
        rotate_then_write,
        write(b"after rotation\n"),
        rotate_only,
        lambda: None,
        write(b"in third file\n"),
    )
    got = list(follow(tmp_path, "bot", sleep=script, stop=script.done))
    writer.close()
    assert texts(got) == [
        "one",
        "two",
        "three",
        "last of old file",
        "first of new file",
        "after rotation",
        "end of second file",
        "in third file",
    ]
    assert got[4].stream == "err"


def test_follow_with_tail_grep_and_a_file_that_appears_later(tmp_path):
    clock = Clock(MIDNIGHT)
    writers: list[LogWriter] = []

    def start():
        writers.append(LogWriter(tmp_path, "bot", clock))
        writers[0].write("out", b"keep 1\nskip\n")

    script = Script(lambda: None, start, lambda: writers[0].write("out", b"keep 2\n"))
    got = list(follow(tmp_path, "bot", grep="keep", tail=5, sleep=script, stop=script.done))
    assert texts(got) == ["keep 1", "keep 2"]
    writers[0].close()


def test_follow_tail_spans_rotated_files_and_the_unfinished_line_waits(tmp_path):
    clock = Clock(MIDNIGHT)
    writer = LogWriter(tmp_path, "bot", clock)
    for i in range(5):
        writer.write("out", b"old %d\n" % i)
        writer.rotate()
    writer.write("out", b"cur 0\n")
    with open(tmp_path / "bot.log", "ab") as raw:
        raw.write(b"2026-11-25T00:00:00.000000Z out half")
    script = Script(lambda: _append(tmp_path, b" done\n"))
    got = list(follow(tmp_path, "bot", tail=3, sleep=script, stop=script.done))
    assert texts(got) == ["old 3", "old 4", "cur 0", "half done"]
    writer.close()


def _append(directory, data):
    with open(directory / "bot.log", "ab") as raw:
        raw.write(data)


def test_follow_in_a_thread_with_real_sleeps(tmp_path):
    writer = LogWriter(tmp_path, "bot", time.time, max_bytes=4000)
    got: list[LogRecord] = []
    deadline = time.monotonic() + 30

    def stop():
        return len(got) >= 300 or time.monotonic() > deadline

    def consume():
        for record in follow(tmp_path, "bot", stop=stop, poll_interval=0.1):
            got.append(record)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.2)
    for i in range(300):  # several rotations while it follows
        writer.write("out", b"n %d\n" % i)
        if i % 50 == 0:
            time.sleep(0.02)
    writer.close()
    thread.join(35)
    assert texts(got) == [f"n {i}" for i in range(300)]
    assert writer.rotations >= 2
