"""A full disk, for real: a 16 MiB tmpfs holds the daemon's state dir; a bot floods its log.

Low space (below the watermark, 5 % = 0.8 MiB here) raises an event and the built-in
``host_state_disk_low`` alert, delivered to a webhook; every bot's logging pauses instead of
dying; the flooding bot can still be stopped; and once space is freed another bot's log
resumes by itself, with a ``[clawpen: N lines dropped: disk full]`` record.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonCli, Sink, wait_for

from conftest import daemon_at

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

MiB = 1 << 20
TICKER = "import time\\ni=0\\nwhile True:\\n    i+=1; print('tick', i, flush=True); time.sleep(0.1)"
# random bytes: gzip cannot shrink them, so the flood's files keep their space once paused
FLOOD = (
    "import os,sys\\nw=sys.stdout.buffer.write\\n"
    "while True: w(os.urandom(1000).replace(b'\\\\n', b'')+b'\\\\n')"
)


@pytest.fixture
def disk() -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards (lazily if something still holds it)."""
    mnt = Path(tempfile.mkdtemp(prefix="clawpen-disk-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if not wait_for(lambda: subprocess.run(["umount", str(mnt)], check=False).returncode == 0, 10, 0.2):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()


@pytest.fixture
def small(disk: Path) -> Iterator[DaemonCli]:
    """A daemon whose state dir is on the small tmpfs (stopped before the tmpfs is unmounted)."""
    with daemon_at(disk / "state") as d:
        yield d


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def spec(sink: Sink, *, flood: bool) -> str:
    bots = f"""
        [bots.ticker]
        command = ["python3", "-c", "{TICKER}"]
    """
    if flood:
        bots += f"""
        [bots.flood]
        command = ["python3", "-c", "{FLOOD}"]
    """
    return (
        bots
        + f"""
        [monitoring]
        interval = "1s"
        prometheus_listen = "off"

        [monitoring.builtin]
        host_defaults = false      # the test host is shared: keep its load out of this test

        [monitoring.notify]
        urls = ["{sink.url}"]
        retry_backoff = "0.2s"
    """
    )


def kinds(d: DaemonCli) -> list[str]:
    """The kinds of the daemon's events (every bot's and its own)."""
    return [json.loads(line)["kind"] for line in d.cli("events", "--json").stdout.splitlines()]


def ticks(d: DaemonCli) -> list[str]:
    return d.cli("logs", "ticker", "--raw").stdout.splitlines()


def test_low_space_pauses_logs_alerts_stop_works_and_logging_resumes(
    disk: Path, small: DaemonCli, sink: Sink
) -> None:
    d = small
    d.write(spec(sink, flood=False))
    d.cli("up")
    d.wait_state("ticker", "running")
    assert wait_for(lambda: len(ticks(d)) >= 5, 10, 0.2)

    # leave 2.5 MiB: the flood takes the rest of the margin above the 0.8 MiB watermark
    filler = disk / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, free(disk) - int(2.5 * MiB))
    d.write(spec(sink, flood=True))
    d.cli("up")
    d.wait_state("flood", "running")

    assert wait_for(lambda: "disk-low" in kinds(d), 20, 0.2), d.cli("events").stdout
    low = [line for line in d.cli("events").stdout.splitlines() if "disk-low" in line]
    # below the watermark, or (the filler and the flood within one look) a write failed: ENOSPC
    assert ("watermark 0.8 MiB" in low[0] and "is low" in low[0]) or "No space left" in low[0], low
    assert wait_for(lambda: any("host_state_disk_low" in t for t in sink.titles()), 20, 0.2), sink.titles()
    assert any(t.startswith("[FIRING] host_state_disk_low") for t in sink.titles())

    # logging is paused for every bot: the ticker's log stops growing, the ticker keeps running
    time.sleep(1.5)
    paused = len(ticks(d))
    time.sleep(1.5)
    assert len(ticks(d)) <= paused + 1
    assert d.ps()["ticker"]["state"] == "running"

    # the flooding bot can be stopped on the nearly full disk
    stopped = d.cli("stop", "flood", timeout=30)
    assert stopped.returncode == 0
    assert d.ps()["flood"]["state"] == "stopped"

    # space returns: the ticker's log resumes by itself, saying what it dropped
    freed_at = time.monotonic()
    filler.unlink()

    def resumed() -> list[str]:
        lines = ticks(d)
        marks = [i for i, line in enumerate(lines) if "lines dropped: disk full]" in line]
        return lines if marks and any("tick" in line for line in lines[marks[-1] + 1 :]) else []

    lines = wait_for(resumed, 15, 0.1)
    assert lines, ticks(d)[-5:]
    recovered = time.monotonic() - freed_at
    # a loaded host can see the watermark flap (a short pause, a resume, then the long one): each
    # pause leaves its own record, and together they count what the pauses dropped
    markers = [line for line in lines if "lines dropped: disk full]" in line]
    dropped = sum(int(m.split("[clawpen: ", 1)[1].split(" ", 1)[0]) for m in markers)
    assert dropped >= 10, markers  # about 10 lines a second while paused
    assert recovered < 10
    assert wait_for(lambda: "disk-ok" in kinds(d), 10, 0.2)
