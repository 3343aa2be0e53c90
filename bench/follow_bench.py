#!/usr/bin/env python3
"""Following a log: how soon a new line is seen, and what idle followers cost.

    .venv/bin/python bench/follow_bench.py            # about 20 s
    .venv/bin/python bench/follow_bench.py --lines 100 --followers 16

Side by side in one run, over the same file written by clawpen's ``LogWriter``:

* ``tail -F`` (GNU coreutils, inotify): the anchor;
* ``follow`` as it is (inotify, :class:`clawpen.logs.watch.FileWatch`);
* ``follow`` polling every 0.1 s (how it was before inotify: ``sleep=time.sleep``).

Latency: a line is written every 20 ms with its send time inside; each follower notes when it
sees it. Idle cost: N followers of a file nobody writes, for 5 s: the CPU time they use.
Prints p50/p99 latency in ms with the ratio to ``tail -F``, and the idle CPU seconds.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from clawpen.logs.query import follow
from clawpen.logs.writer import LogWriter

GAP = 0.02


def _write_lines(writer: LogWriter, n: int) -> None:
    time.sleep(0.3)
    for i in range(n):
        writer.write("out", b"%d %.9f\n" % (i, time.monotonic()))
        time.sleep(GAP)


def latency_follow(work: Path, n: int, polling: bool) -> list[float]:
    writer = LogWriter(work, "bot", time.time)
    seen: list[float] = []
    done = threading.Event()

    def consume() -> None:
        kw = {"sleep": time.sleep, "poll_interval": 0.1} if polling else {}
        for rec in follow(work, "bot", stop=done.is_set, **kw):  # type: ignore[arg-type]
            seen.append((time.monotonic() - float(rec.text.split()[1])) * 1000)
            if len(seen) >= n:
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    _write_lines(writer, n)
    thread.join(10)
    done.set()
    writer.close()
    return seen


def latency_tail(work: Path, n: int) -> list[float]:
    writer = LogWriter(work, "bot", time.time)
    writer.write("out", b"start 0\n")
    proc = subprocess.Popen(
        ["tail", "-F", "-n", "0", str(work / "bot.log")], stdout=subprocess.PIPE, text=True
    )
    seen: list[float] = []

    def consume() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append((time.monotonic() - float(line.split()[-1])) * 1000)
            if len(seen) >= n:
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    _write_lines(writer, n)
    thread.join(10)
    proc.kill()
    proc.wait()
    writer.close()
    return seen


def idle_cpu(work: Path, followers: int, polling: bool, seconds: float = 5.0) -> float:
    writer = LogWriter(work, "bot", time.time)
    writer.write("out", b"x\n")
    done = threading.Event()
    kw = {"sleep": time.sleep, "poll_interval": 0.1} if polling else {}

    def consume() -> None:
        for _ in follow(work, "bot", stop=done.is_set, **kw):  # type: ignore[arg-type]
            pass

    threads = [threading.Thread(target=consume, daemon=True) for _ in range(followers)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    done.set()
    writer.write("out", b"wake\n")  # inotify followers see it and stop at once
    for t in threads:
        t.join(5)
    writer.close()
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _pcts(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--followers", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        runs = {
            "tail -F (anchor)": lambda d: latency_tail(d, args.lines),
            "follow (inotify)": lambda d: latency_follow(d, args.lines, polling=False),
            "follow (0.1 s polling)": lambda d: latency_follow(d, args.lines, polling=True),
        }
        results = {}
        for i, (name, run) in enumerate(runs.items()):
            work = base / f"lat{i}"
            work.mkdir()
            results[name] = _pcts(run(work))
        anchor = results["tail -F (anchor)"]
        print(f"latency, {args.lines} lines {GAP * 1000:.0f} ms apart (ms)")
        for name, (p50, p99) in results.items():
            ratio = f"{p50 / anchor[0]:.1f}x / {p99 / anchor[1]:.1f}x"
            print(f"  {name:24} p50 {p50:7.2f}  p99 {p99:7.2f}  ({ratio})")
        print(f"idle CPU of {args.followers} followers over 5 s (s)")
        for polling in (False, True):
            work = base / f"idle{int(polling)}"
            work.mkdir()
            name = "0.1 s polling" if polling else "inotify"
            print(f"  {name:24} {idle_cpu(work, args.followers, polling):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
