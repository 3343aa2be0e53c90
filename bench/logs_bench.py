#!/usr/bin/env python3
"""Log ingest benchmark: a million 25-byte lines through a pipe into clawpen's LogWriter.

    .venv/bin/python bench/logs_bench.py               # 7 interleaved repetitions
    .venv/bin/python bench/logs_bench.py --reps 3 --lines 200000 --no-gzip

Two producers write ``NNNNNNNNNNNN abcdefghijk\\n`` lines (25 bytes) to a pipe as fast as they
can: *buffered* (64 KiB write() calls) and *per-line* (one write() per line, like a bot that
flushes every line). Both are a small C program (gcc -O2), or Python when there is no compiler.
For each producer, interleaved, after one warm-up:

* producer alone, stdout to /dev/null (what the producer itself can do);
* anchor: ``producer | cat > file``;
* LogWriter: this process reads the pipe 64 KiB at a time and calls ``LogWriter.write`` (every
  line gets a timestamp and a stream tag), as the daemon's reader thread would;
* LogWriter under asyncio (``loop.add_reader`` on the non-blocking pipe), the daemon's loop;
* buffered only: LogWriter with the default 50 MiB rotation and a background ``Compressor``.

Each LogWriter run is checked afterwards (not timed): every line there, in order. Prints p50 and
p90 wall time, lines/s, the ratio to the anchor and the reader's CPU time, then gzip timings for
a 50 MiB log file. Exits 0 when LogWriter reaches the target (1,000,000 lines/s) with both
producers, 1 when not, 2 on a lost or reordered line.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clawpen.logs.store import compress_file, list_rotated
from clawpen.logs.upkeep import Compressor
from clawpen.logs.writer import READ_SIZE, LogWriter

TARGET = 1_000_000
LINE = b"%012d abcdefghijk\n"

C_PRODUCER = r"""
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void put(const char *p, size_t n) {
    while (n) {
        ssize_t w = write(1, p, n);
        if (w < 0) { if (errno == EINTR) continue; _exit(1); }
        p += w; n -= (size_t)w;
    }
}
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    int per_line = argv[1][0] == 'p';
    static char buf[65536];
    size_t used = 0;
    char line[26] = "000000000000 abcdefghijk\n";
    for (long i = 0; i < n; i++) {
        long v = i;
        for (int k = 11; k >= 0; k--) { line[k] = (char)('0' + v % 10); v /= 10; }
        if (per_line) { put(line, 25); continue; }
        if (used + 25 > sizeof buf) { put(buf, used); used = 0; }
        memcpy(buf + used, line, 25);
        used += 25;
    }
    if (used) put(buf, used);
    return 0;
}
"""
PY_PRODUCER = (
    "import os,sys\n"
    "n=int(sys.argv[2]); w=os.write\n"
    "if sys.argv[1][0]=='p':\n"
    "    for i in range(n): w(1, b'%012d abcdefghijk\\n' % i)\n"
    "else:\n"
    "    v=memoryview(b''.join(b'%012d abcdefghijk\\n' % i for i in range(n)))\n"
    "    while v: v=v[w(1, v[:65536]):]\n"
)


def producer_argv(work: Path) -> tuple[list[str], str]:
    """argv prefix of the producer (mode and count follow) and what it is."""
    if shutil.which("gcc"):
        src = work / "producer.c"
        src.write_text(C_PRODUCER)
        exe = work / "producer"
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
        return [str(exe)], "C (gcc -O2)"
    return [sys.executable, "-c", PY_PRODUCER], "Python (no gcc)"


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_alone(argv: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        subprocess.run(argv, stdout=devnull, check=True)
    return time.perf_counter() - t0


def run_cat(argv: list[str], out: Path) -> float:
    read_end, write_end = os.pipe()
    t0 = time.perf_counter()
    with open(out / "cat.out", "wb") as sink:
        prod = subprocess.Popen(argv, stdout=write_end)
        cat = subprocess.Popen(["cat"], stdin=read_end, stdout=sink)
        os.close(write_end)
        os.close(read_end)
        if prod.wait() or cat.wait():
            raise SystemExit("producer or cat failed")
    return time.perf_counter() - t0


def _writer(out: Path, rotate: bool, compressor: Compressor | None) -> LogWriter:
    max_bytes = 50 << 20 if rotate else 1 << 40
    return LogWriter(out, "bench", time.time, max_bytes=max_bytes, compressor=compressor)


def run_writer(argv: list[str], out: Path, *, rotate: bool = False) -> float:
    read_end, write_end = os.pipe()
    compressor = Compressor(level=1) if rotate else None
    t0 = time.perf_counter()
    prod = subprocess.Popen(argv, stdout=write_end)
    os.close(write_end)
    writer = _writer(out, rotate, compressor)
    read, write = os.read, writer.write
    while chunk := read(read_end, READ_SIZE):
        write("out", chunk)
    writer.close()
    os.close(read_end)
    if prod.wait():
        raise SystemExit("producer failed")
    elapsed = time.perf_counter() - t0
    if compressor is not None:
        compressor.close()
    return elapsed


def run_writer_asyncio(argv: list[str], out: Path) -> float:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        t0 = time.perf_counter()
        prod = subprocess.Popen(argv, stdout=write_end)
        os.close(write_end)
        writer = _writer(out, False, None)
        done = loop.create_future()

        def readable() -> None:
            chunk = os.read(read_end, READ_SIZE)
            if chunk:
                writer.write("out", chunk)
                return
            loop.remove_reader(read_end)
            done.set_result(None)

        loop.add_reader(read_end, readable)
        await done
        writer.close()
        os.close(read_end)
        if prod.wait():
            raise SystemExit("producer failed")
        return time.perf_counter() - t0

    return asyncio.run(main())


def check(out: Path, n: int) -> None:
    """Every line there, in order, each with a timestamp and the stream tag."""
    data = b""
    for entry in list_rotated(out, "bench"):
        with gzip.open(entry.path, "rb") if entry.compressed else open(entry.path, "rb") as handle:
            data += handle.read()
    data += (out / "bench.log").read_bytes()
    lines = data.split(b"\n")[:-1]
    body = b"\n".join(line[32:] for line in lines) + b"\n"
    tags_ok = all(line[26:32] == b"Z out " for line in lines[:: max(1, n // 1000)])
    if len(lines) != n or not tags_ok or body != b"".join(LINE % i for i in range(n)):
        print(f"LOST OR REORDERED: {len(lines)} lines of {n} in {out}", file=sys.stderr)
        raise SystemExit(2)


def gzip_timings(work: Path, reps: int) -> list[tuple[int, float, float]]:
    """(level, p50 seconds, compressed/original) for a 50 MiB file of varied log records."""
    rng = random.Random(1)
    words = ["GET", "POST", "/api/v1/users", "/health", "200", "404", "500", "ms=", "INFO", "WARN"]
    words += ["worker", "started", "request", "id=", "error", "timeout", "retry"]
    lines = []
    size = 0
    while size < 50 << 20:
        text = " ".join(rng.choice(words) for _ in range(6)) + f" {rng.getrandbits(32):08x} {size}"
        line = f"2026-11-24T10:00:{size % 60:02d}.{size % 999999:06d}Z out {text}\n".encode()
        lines.append(line)
        size += len(line)
    data = b"".join(lines)
    results = []
    for level in (1, 6):
        times = []
        ratio = 0.0
        for _ in range(reps):
            path = work / "gz.20261124T100000.log"
            path.write_bytes(data)
            t0 = time.perf_counter()
            target = compress_file(path, level=level)
            times.append(time.perf_counter() - t0)
            assert target is not None
            ratio = target.stat().st_size / len(data)
            target.unlink()
        results.append((level, statistics.median(times), ratio))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--no-gzip", action="store_true", help="skip the gzip timings")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clawpen-logs-bench-", dir=args.dir))
    try:
        return bench(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, args: argparse.Namespace) -> int:
    prefix, kind = producer_argv(work)
    n = args.lines
    print(f"{n} lines of 25 bytes; producer: {kind}; {args.reps} reps + 1 warm-up; read size {READ_SIZE}")
    variants: list[tuple[str, str, Callable[[list[str], Path], float], bool]] = []
    for mode in ("buffered", "per-line"):
        variants += [
            (mode, "producer alone (> /dev/null)", run_alone, False),
            (mode, "anchor: producer | cat > file", run_cat, False),
            (mode, "LogWriter (read loop)", run_writer, True),
            (mode, "LogWriter (asyncio add_reader)", run_writer_asyncio, True),
        ]

    def rotating(argv: list[str], out: Path) -> float:
        return run_writer(argv, out, rotate=True)

    variants.append(("buffered", "LogWriter, 50 MiB rotation + gzip thread", rotating, True))
    times: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    for rep in range(args.reps + 1):
        order = list(range(len(variants)))
        if rep % 2:
            order.reverse()
        for index in order:
            mode, _, run, verify = variants[index]
            out = work / f"run{index}"
            out.mkdir()
            before = cpu_self()
            elapsed = run([*prefix, mode, str(n)], out)
            used = cpu_self() - before
            if verify:
                check(out, n)
            shutil.rmtree(out)
            if rep:
                times[index].append(elapsed)
                cpu[index].append(used)
    ok = True
    for mode in ("buffered", "per-line"):
        print(f"\n{mode} producer")
        print(f"{'what':44} {'p50 ms':>8} {'p90 ms':>8} {'lines/s':>11} {'/ cat':>6} {'reader CPU ms':>13}")
        anchor = next(
            statistics.median(times[i]) for i, v in enumerate(variants) if v[0] == mode and "cat" in v[1]
        )
        for index, (vmode, name, _, verify) in enumerate(variants):
            if vmode != mode:
                continue
            p50 = statistics.median(times[index])
            p90 = sorted(times[index])[max(0, round(0.9 * len(times[index])) - 1)]
            rate = n / p50
            ratio = p50 / anchor
            print(
                f"{name:44} {p50 * 1e3:8.1f} {p90 * 1e3:8.1f} {rate:11,.0f} {ratio:6.2f} "
                f"{statistics.median(cpu[index]) * 1e3:13.1f}"
            )
            if verify and "rotation" not in name and "asyncio" not in name:
                passed = rate >= TARGET
                ok = ok and passed
                verdict = "PASS" if passed else "FAIL"
                print(f"  -> target >= {TARGET:,} lines/s: {verdict}; nothing lost or reordered")
    if not args.no_gzip:
        print("\ngzip of a 50 MiB rotated file (varied records), in the caller's thread")
        for level, p50, ratio in gzip_timings(work, max(1, min(3, args.reps))):
            print(f"  level {level}: {p50 * 1e3:7.0f} ms  ({50 / p50:5.0f} MiB/s), compressed to {ratio:.1%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
