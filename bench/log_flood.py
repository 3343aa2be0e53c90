#!/usr/bin/env python3
"""Log flood benchmark: a `yes` with 1,000-character lines against the caps, and disk full.

    .venv/bin/python bench/log_flood.py            # 60 s per flood
    .venv/bin/python bench/log_flood.py --quick    # 10 s per flood
    .venv/bin/python bench/log_flood.py --disk-full-only --reps 5   # root: recovery time only

`yes <999 x>` writes into a pipe as fast as it can, next to a *slow* bot (one numbered line per
100 ms). This process reads both pipes as the daemon does (``loop.add_reader``, 64 KiB reads,
one :class:`~clawpen.logs.writer.LogWriter` per bot, one shared Compressor and budget), and
every second adds up the flooding bot's files on disk. Three floods, one after the other:

* **anchor**: the same bytes read from the pipe and written straight to a file (kept under the
  cap by rewinding), the raw speed of pipe + page cache;
* **daemon**: :func:`~clawpen.logs.writer.daemon_writer`, the daemon's settings (1 MiB/s with
  16 MiB bursts, 1 GiB per bot): how fast the pipe is drained while lines are dropped;
* **no rate limit**: the same writer without the rate limit and a per-bot cap of ``--cap``
  (default 256 MiB, rotating at a quarter of it): the caps enforced on write at full speed.

For each: bytes drained from the pipe per second (and the ratio to the anchor), bytes logged,
the largest sampled size of the bot's files against the cap, and whether every line of the
slow bot is there, in order. Then, as root, **disk full**: a 16 MiB tmpfs filled to below the
watermark pauses the slow bot's log; the time from deleting the filler file to the slow bot's
first new line (after its ``[N lines dropped: disk full]`` marker) is the recovery time.
Exits 1 when a cap was exceeded or a slow line was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clawpen.logs.budget import LogBudget
from clawpen.logs.query import read_logs
from clawpen.logs.space import SpaceGuard
from clawpen.logs.store import DEFAULT_MAX_TOTAL
from clawpen.logs.upkeep import Compressor
from clawpen.logs.writer import READ_SIZE, LogWriter, daemon_writer

MiB = 1 << 20
SLOW = "import sys,time\nfor i in range(100000):\n    print('slow', i, flush=True); time.sleep(0.1)\n"


def flood_argv() -> list[str]:
    yes = shutil.which("yes")
    if yes is None:
        raise SystemExit("needs coreutils' yes")
    return [yes, "x" * 999]  # 1,000-byte lines


def on_disk(directory: Path, bot: str) -> int:
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith((f"{bot}.", f".{bot}.")):  # the compressor's temporary too
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
    return total


def slow_lines_intact(directory: Path) -> tuple[int, bool]:
    texts = [r.text for r in read_logs(directory, "slow", streams=("out",))]
    numbers = [int(t.split()[1]) for t in texts if t.startswith("slow ")]
    return len(numbers), numbers == list(range(len(numbers)))


async def _flood(
    directory: Path, seconds: float, make: Callable[[str], LogWriter] | None, cap: int
) -> dict[str, float]:
    """One flood: returns drained bytes/s, logged bytes, max sampled size, slow lines ok."""
    loop = asyncio.get_running_loop()
    fr, fw = os.pipe()
    sr, sw = os.pipe()
    flood = subprocess.Popen(flood_argv(), stdout=fw)
    slow = subprocess.Popen([sys.executable, "-c", SLOW], stdout=sw)
    os.close(fw)
    os.close(sw)
    drained = 0
    anchor = None
    writers: dict[int, LogWriter] = {}
    if make is None:
        anchor = os.open(directory / "flood.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    else:
        writers = {fr: make("flood"), sr: make("slow")}
    anchored = 0

    def drain(fd: int) -> None:
        nonlocal drained, anchored
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if fd == fr:
            drained += len(chunk)
        if anchor is not None:
            if fd == fr:  # straight to a file, rewound before it passes the cap
                if anchored + len(chunk) > cap:
                    anchored = 0
                os.pwrite(anchor, chunk, anchored)
                anchored += len(chunk)
            return
        try:
            writers[fd].write("out", chunk)
        except Exception as err:  # as the daemon's _drain: never stop draining
            print(f"write failed: {err}", file=sys.stderr)

    for fd in (fr, sr):
        os.set_blocking(fd, False)
        loop.add_reader(fd, drain, fd)
    biggest = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        await asyncio.sleep(min(1.0, seconds - elapsed))
        biggest = max(biggest, on_disk(directory, "flood"))
        for writer in writers.values():
            writer.tick()
    rate = drained / (time.monotonic() - start)
    for fd in (fr, sr):
        loop.remove_reader(fd)
    for proc in (flood, slow):
        proc.kill()
        proc.wait()
    for fd in (fr, sr):
        os.close(fd)
    logged = sum(w.path.stat().st_size for w in writers.values())
    for writer in writers.values():
        writer.close()
    if anchor is not None:
        os.close(anchor)
    return {"rate": rate, "max": biggest, "logged": logged, "dropped": 0}


def run_floods(seconds: float, cap: int, work: Path) -> bool:
    ok = True
    results: dict[str, dict[str, float]] = {}
    for name in ("anchor", "daemon", "no rate limit"):
        directory = work / name.replace(" ", "-")
        directory.mkdir()
        comp = Compressor()
        bot_cap = cap if name != "daemon" else DEFAULT_MAX_TOTAL

        def make(
            bot: str, name: str = name, comp: Compressor = comp, directory: Path = directory
        ) -> LogWriter:
            if name == "daemon":
                return daemon_writer(directory, bot, time.time, comp, redact=None, notify=lambda k, t: None)
            return LogWriter(directory, bot, time.time, compressor=comp, max_total=cap)

        res = asyncio.run(_flood(directory, seconds, None if name == "anchor" else make, cap))
        comp.close(timeout=30)
        results[name] = res
        line = (
            f"{name:14s} drained {res['rate'] / MiB:8.1f} MiB/s"
            f"  max on disk {res['max'] / MiB:7.1f} MiB (cap {bot_cap / MiB:.0f} MiB)"
        )
        if name != "anchor":
            count, intact = slow_lines_intact(directory)
            line += (
                f"  ratio {res['rate'] / results['anchor']['rate']:.2f}  slow lines {count} intact={intact}"
            )
            ok = ok and intact and count >= seconds * 8
        ok = ok and res["max"] <= bot_cap
        print(line, flush=True)
        shutil.rmtree(directory)
    return ok


def disk_full_recovery(work: Path, reps: int) -> list[float]:
    """As root: seconds from freeing space to the slow bot's first new line, ``reps`` times."""
    mnt = work / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    times: list[float] = []
    try:
        comp = Compressor(budget=LogBudget(max_all=4 * MiB))
        comp.budget.space = SpaceGuard(mnt)
        writer = daemon_writer(mnt, "slow", time.time, comp, redact=None, notify=lambda k, t: None)
        read_end, write_end = os.pipe()
        slow = subprocess.Popen([sys.executable, "-c", SLOW], stdout=write_end)
        os.close(write_end)
        os.set_blocking(read_end, False)
        filler = mnt / "filler"

        def pump(until: Callable[[], bool], limit: float) -> None:
            deadline = time.monotonic() + limit
            while not until() and time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError):
                    writer.write("out", os.read(read_end, READ_SIZE))
                time.sleep(0.005)

        for _ in range(reps):
            st = os.statvfs(mnt)
            with open(filler, "wb") as f:  # leave 0.5 MiB: below the 0.8 MiB watermark
                os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - MiB // 2)
            pump(lambda: bool(writer.dropped.get("disk full")), 5)
            pump(lambda: False, 1.0)  # paused for a second
            before = writer.path.stat().st_size
            freed = time.monotonic()
            filler.unlink()
            pump(lambda before=before: b"slow" in writer.path.read_bytes()[before:].split(b"full]")[-1], 10)
            times.append(time.monotonic() - freed)
            writer.dropped.clear()
        slow.kill()
        slow.wait()
        os.close(read_end)
        writer.close()
        comp.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each flood (default 60)")
    ap.add_argument("--quick", action="store_true", help="10 s floods")
    ap.add_argument("--cap", type=int, default=256 * MiB, help="per-bot cap without the rate limit (bytes)")
    ap.add_argument("--reps", type=int, default=5, help="disk-full recoveries to time (root)")
    ap.add_argument("--disk-full-only", action="store_true")
    args = ap.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    ok = True
    with tempfile.TemporaryDirectory(prefix="clawpen-flood-") as tmp:
        work = Path(tmp)
        if not args.disk_full_only:
            print(f"flood: yes with 1,000-byte lines, {seconds:g} s each, sampled every second")
            ok = run_floods(seconds, args.cap, work)
        if os.geteuid() == 0:
            times = disk_full_recovery(work, args.reps)
            print(
                f"disk full -> space freed -> first new line: p50 {statistics.median(times):.2f} s,"
                f" max {max(times):.2f} s over {len(times)} tries"
            )
        else:
            print("disk full: skipped (needs root to mount a tmpfs)")
    print("OK" if ok else "FAILED: a cap was exceeded or a slow line was lost")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
