"""LineFramer and LogWriter: framing, record format, order, and million-line bursts through pipes."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import subprocess
import sys
import threading

import pytest

from clawpen.errors import HostError, UsageError
from clawpen.logs import writer as writer_mod
from clawpen.logs.writer import MARKER, LineFramer, LogWriter

T0 = 1795564799.25  # 2026-11-24T23:59:59.250000Z
RECORD = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (out|err) ")


class Clock:
    """A settable clock."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def unframe(pieces):
    """The original bytes: a piece ending in MARKER continues on the next one."""
    return b"".join(p[: -len(MARKER)] if p.endswith(MARKER) else p + b"\n" for p in pieces)


def lines_of(path):
    return path.read_bytes().split(b"\n")[:-1]


# --- LineFramer -------------------------------------------------------------------------------


def test_partial_lines_across_chunks():
    framer = LineFramer()
    assert framer.feed(b"hel") == []
    assert framer.pending == 3
    assert framer.feed(b"lo\nwor") == [b"hello"]
    assert framer.feed(b"ld\n") == [b"world"]
    assert framer.pending == 0
    assert framer.flush() == []


def test_crlf_and_other_bytes_untouched():
    framer = LineFramer()
    assert framer.feed(b"a\r\nb\rc\n\x00\xff\t\n") == [b"a\r", b"b\rc", b"\x00\xff\t"]


def test_empty_lines_are_records():
    assert LineFramer().feed(b"\n\nx\n\n") == [b"", b"", b"x", b""]


def test_flush_returns_unfinished_line():
    framer = LineFramer()
    assert framer.feed(b"a\nno newline") == [b"a"]
    assert framer.flush() == [b"no newline"]
    assert framer.flush() == []


def test_line_of_exactly_max_line_is_not_split():
    framer = LineFramer(100)
    assert framer.feed(b"x" * 100 + b"\n") == [b"x" * 100]
    assert framer.feed(b"y" * 101 + b"\n") == [b"y" * 100 + MARKER, b"y"]


def test_long_line_in_one_chunk_is_cut_with_marker():
    framer = LineFramer(100)
    out = framer.feed(b"short\n" + b"z" * 250 + b"\nafter\n")
    assert out == [b"short", b"z" * 100 + MARKER, b"z" * 100 + MARKER, b"z" * 50, b"after"]


def test_long_line_across_chunks_keeps_memory_bounded():
    framer = LineFramer(1024)
    pieces: list[bytes] = []
    for _ in range(160):  # 10 MiB without a newline, in 64 KiB reads
        pieces += framer.feed(b"q" * 65536)
        assert framer.pending <= 1024
    pieces += framer.feed(b"end\n")
    assert all(p.endswith(MARKER) for p in pieces[:-1])
    assert not pieces[-1].endswith(MARKER)
    assert b"".join(p.removesuffix(MARKER) for p in pieces) == b"q" * (160 * 65536) + b"end"
    assert max(len(p) for p in pieces) <= 1024 + len(MARKER)


def test_cut_keeps_utf8_characters_whole():
    framer = LineFramer(64)
    text = ("é" * 40 + "€" * 30).encode()
    out = framer.feed(text + b"\n")
    joined = b"".join(p.removesuffix(MARKER) for p in out)
    assert joined == text
    for piece in out:
        piece.decode("utf-8")  # every piece is valid UTF-8 on its own


def test_cut_of_invalid_utf8_still_bounded():
    out = LineFramer(64).feed(b"\x80" * 200 + b"\n")
    assert b"".join(p.removesuffix(MARKER) for p in out) == b"\x80" * 200
    assert all(len(p) <= 64 + len(MARKER) for p in out)


@pytest.mark.parametrize("max_line", [64, 100, 4096])
def test_random_chunking_gives_the_same_lines(max_line):
    rng = random.Random(max_line)
    data = b"".join(
        b"x" * rng.choice([0, 1, 5, 63, 64, 65, 99, 100, 101, 300, 5000]) + rng.choice([b"\n", b"\r\n"])
        for _ in range(2000)
    )
    expected = LineFramer(max_line).feed(data)
    framer = LineFramer(max_line)
    got: list[bytes] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 9000)
        got += framer.feed(data[pos : pos + step])
        pos += step
        assert framer.pending <= max_line
    assert framer.flush() == []
    # A long line is cut at the same places however it arrives: every max_line bytes from its start.
    assert got == expected
    assert unframe(got) == data


def test_too_small_max_line_is_refused():
    with pytest.raises(UsageError):
        LineFramer(10)


# --- LogWriter: records -----------------------------------------------------------------------


def test_record_format_and_timestamp(tmp_path):
    clock = Clock(T0 - 60)
    with LogWriter(tmp_path, "bot", clock) as writer:
        writer.write("out", b"hello\r\n\nworld\n")
        clock.t = T0 - 60 + 1.000001
        writer.write("err", b"oops\n")
        clock.t = T0 - 60.25 + 2.9999996  # rounds up to the next whole second
        writer.write("out", b"x\n")
    assert lines_of(tmp_path / "bot.log") == [
        b"2026-11-24T23:58:59.250000Z out hello\r",
        b"2026-11-24T23:58:59.250000Z out ",
        b"2026-11-24T23:58:59.250000Z out world",
        b"2026-11-24T23:59:00.250001Z err oops",
        b"2026-11-24T23:59:02.000000Z out x",
    ]


def test_streams_keep_arrival_order_and_partial_lines(tmp_path):
    clock = Clock(T0 - 100)
    writer = LogWriter(tmp_path, "bot", clock)
    writer.write("out", b"o1\no2-part")
    writer.write("err", b"e1\n")
    writer.write("out", b"-end\no3\n")
    writer.write("err", b"e2 unfinished")
    writer.close()  # writes both streams' unfinished lines
    texts = [line[28:] for line in lines_of(tmp_path / "bot.log")]
    assert texts == [b"out o1", b"err e1", b"out o2-part-end", b"out o3", b"err e2 unfinished"]
    writer.close()  # twice is fine


def test_finish_writes_the_unfinished_line(tmp_path):
    writer = LogWriter(tmp_path, "bot", Clock(T0 - 100))
    writer.write("out", b"tail without newline")
    assert (tmp_path / "bot.log").read_bytes() == b""
    writer.finish("out")
    assert lines_of(tmp_path / "bot.log")[0].endswith(b" out tail without newline")
    writer.close()


def test_misuse_is_refused(tmp_path):
    with pytest.raises(UsageError):
        LogWriter(tmp_path, "Bad.Name", Clock())
    with pytest.raises(UsageError):
        LogWriter(tmp_path, "a" * 65, Clock())
    LogWriter(tmp_path, "a" * 31 + "-r12", Clock()).close()  # a replica of a long-named bot
    writer = LogWriter(tmp_path, "bot", Clock())
    with pytest.raises(UsageError):
        writer.write("stdout", b"x\n")  # type: ignore[arg-type]
    writer.close()
    with pytest.raises(UsageError):
        writer.write("out", b"x\n")


def test_appends_to_existing_file_and_repairs_a_torn_end(tmp_path):
    (tmp_path / "bot.log").write_bytes(b"2026-11-24T23:59:58.000000Z out old\n2026-11-24T23:59:58.0")
    with LogWriter(tmp_path, "bot", Clock(T0 - 0.1)) as writer:
        writer.write("out", b"new\n")
    lines = lines_of(tmp_path / "bot.log")
    assert lines[0].endswith(b"out old")
    assert lines[1] == b"2026-11-24T23:59:58.0"
    assert lines[2] == b"2026-11-24T23:59:59.150000Z out new"


def test_write_error_is_a_host_error_and_next_record_starts_a_line(tmp_path, monkeypatch):
    writer = LogWriter(tmp_path, "bot", Clock(T0 - 100))

    def full(fd, buffers):
        os.write(fd, bytes(buffers[0])[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    real = writer_mod.os.writev
    monkeypatch.setattr(writer_mod.os, "writev", full)
    with pytest.raises(HostError) as err:
        writer.write("out", b"lost\n")
    assert "No space left" in err.value.what
    monkeypatch.setattr(writer_mod.os, "writev", real)
    writer.write("out", b"kept\nand this\n")
    writer.close()
    lines = lines_of(tmp_path / "bot.log")
    assert len(lines) == 3
    assert lines[0] == b"2026-11-24"  # the 10 bytes written before the failure
    assert [line[28:] for line in lines[1:]] == [b"out kept", b"out and this"]
    assert all(RECORD.match(line) for line in lines[1:])


def test_short_writev_is_completed(tmp_path, monkeypatch):
    writer = LogWriter(tmp_path, "bot", Clock(T0 - 100))
    monkeypatch.setattr(writer_mod.os, "writev", lambda fd, bufs: os.write(fd, bytes(bufs[0])[:5]))
    writer.write("out", b"a\nb\n")
    writer.close()
    assert [line[28:] for line in lines_of(tmp_path / "bot.log")] == [b"out a", b"out b"]


# --- bursts through real pipes ----------------------------------------------------------------

N = 1_000_000
BUFFERED = (
    "import os,sys\n"
    "n=int(sys.argv[1]); data=b''.join(b'%012d abcdefghijk\\n' % i for i in range(n))\n"
    "v=memoryview(data)\n"
    "while v: v=v[os.write(1, v[:1<<16]):]\n"
)
PER_LINE = "import os,sys\nw=os.write\nfor i in range(int(sys.argv[1])): w(1, b'%012d abcdefghijk\\n' % i)\n"


def expected_body(n):
    return b"".join(b"%012d abcdefghijk\n" % i for i in range(n))


def drain_pipe(tmp_path, code, n):
    """Run ``code`` writing ``n`` lines into a pipe and log what it writes, as the daemon would."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", code, str(n)], stdout=write_end)
    os.close(write_end)
    writer = LogWriter(tmp_path, "bot", Clock(T0 - 3600), max_bytes=1 << 40)
    try:
        while chunk := os.read(read_end, 1 << 16):
            writer.write("out", chunk)
    finally:
        os.close(read_end)
        writer.close()
    assert proc.wait() == 0
    return lines_of(tmp_path / "bot.log")


def check_complete(lines, n):
    assert len(lines) == n
    assert all(line.startswith(b"2026-11-24T22:59:59.250000Z out ") for line in lines[:: n // 100])
    assert b"\n".join(line[32:] for line in lines) + b"\n" == expected_body(n)


def test_million_lines_from_a_buffered_writer_arrive_complete_and_in_order(tmp_path):
    check_complete(drain_pipe(tmp_path, BUFFERED, N), N)


def test_million_lines_written_one_write_each_arrive_complete_and_in_order(tmp_path):
    check_complete(drain_pipe(tmp_path, PER_LINE, N), N)


def test_writer_from_an_asyncio_reader(tmp_path):
    """The daemon's way: a non-blocking pipe read from ``loop.add_reader``, both streams."""
    n = 50_000

    async def main():
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        code = f"import os,sys\nfor i in range({n}):\n    os.write(1 if i % 3 else 2, b'%06d\\n' % i)\n"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out_w, stderr=err_w)
        os.close(out_w)
        os.close(err_w)
        writer = LogWriter(tmp_path, "bot", Clock(T0 - 100))
        done = {fd: loop.create_future() for fd in (out_r, err_r)}
        for fd, stream in ((out_r, "out"), (err_r, "err")):
            os.set_blocking(fd, False)

            def readable(fd=fd, stream=stream):
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    writer.write(stream, chunk)
                    return
                loop.remove_reader(fd)
                os.close(fd)
                writer.finish(stream)
                done[fd].set_result(None)

            loop.add_reader(fd, readable)
        await asyncio.gather(*done.values())
        writer.close()
        assert await loop.run_in_executor(None, proc.wait) == 0

    asyncio.run(main())
    lines = lines_of(tmp_path / "bot.log")
    outs = [int(line[32:]) for line in lines if line[28:31] == b"out"]
    errs = [int(line[32:]) for line in lines if line[28:31] == b"err"]
    assert outs == [i for i in range(n) if i % 3]
    assert errs == list(range(0, n, 3))


def test_two_writers_in_threads_do_not_mix_files(tmp_path):
    def run(bot):
        with LogWriter(tmp_path, bot, Clock(T0 - 100)) as writer:
            for i in range(2000):
                writer.write("out", b"%d\n" % i)

    threads = [threading.Thread(target=run, args=(f"bot{k}",)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        assert [int(line[32:]) for line in lines_of(tmp_path / f"bot{k}.log")] == list(range(2000))
