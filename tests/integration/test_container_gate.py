"""The container tier's start gate holds the bot's log pipes before it opens (no Docker needed:
the gate script runs under the host's static busybox with clawpen's paths moved to a folder).

The daemon closes its own ends of a run's named pipes once the tier's start returns, which is
once the gate has a reader; a FIFO with no writer reads as EOF, and the daemon stops reading a
run's pipes at EOF. So by the time the gate has a reader, the container must hold the pipes: a
gate that opened them only after reading its line lost a container run's whole output whenever
the daemon closed its ends first (seen under load in CI as a container demo bot with no logs).
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from clawpen.container import create
from clawpen.container.files import BUSYBOX_HOST

pytestmark = pytest.mark.skipif(not Path(BUSYBOX_HOST).exists(), reason="needs busybox-static")


def gate_reader(gate: Path, timeout: float = 10.0) -> int:
    """Wait until the script has the gate open for reading; a write end of it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert time.monotonic() < deadline, "the gate script never opened its gate"
            time.sleep(0.005)


def test_the_gate_holds_the_log_pipes_before_it_opens(tmp_path: Path) -> None:
    folder = tmp_path / "clawpen"
    folder.mkdir()
    for name in ("gate", "out", "err"):
        os.mkfifo(folder / name, 0o600)
    loader = folder / "seccomp-exec"  # stands in for the loader: drops the program, runs the rest
    loader.write_text('#!/bin/sh\nshift\nexec "$@"\n')
    loader.chmod(stat.S_IRWXU)
    script = create.GATE_SCRIPT_LOGS.replace(create.CLAWPEN_DIR, str(folder))
    # the daemon's side, as open_slot makes it: its read ends, and the bot's ends (read-write)
    reads = {s: os.open(folder / s, os.O_RDONLY | os.O_NONBLOCK) for s in ("out", "err")}
    ends = [os.open(folder / s, os.O_RDWR) for s in ("out", "err")]
    bot = subprocess.Popen(
        [BUSYBOX_HOST, "sh", "-c", script, "clawpen-gate", "sh", "-c", "echo to-out; echo to-err >&2"],
        stdin=subprocess.DEVNULL,
    )
    try:
        gate = gate_reader(folder / "gate")
        for fd in ends:  # the tier's start has returned: the daemon closes the bot's ends
            os.close(fd)
        for fd in reads.values():  # a writer is there (EOF would read b"")
            with pytest.raises(BlockingIOError):
                os.read(fd, 100)
        os.write(gate, b"go\n")
        os.close(gate)
        assert bot.wait(10) == 0
        assert os.read(reads["out"], 100) == b"to-out\n"
        assert os.read(reads["err"], 100) == b"to-err\n"
        assert os.read(reads["out"], 100) == b""  # the run is over: EOF
    finally:
        bot.kill()
        bot.wait()
        for fd in reads.values():
            os.close(fd)


def test_a_closed_gate_ends_the_script_with_the_gate_status(tmp_path: Path) -> None:
    folder = tmp_path / "clawpen"
    folder.mkdir()
    for name in ("gate", "out", "err"):
        os.mkfifo(folder / name, 0o600)
    script = create.GATE_SCRIPT_LOGS.replace(create.CLAWPEN_DIR, str(folder))
    reads = [os.open(folder / s, os.O_RDONLY | os.O_NONBLOCK) for s in ("out", "err")]
    bot = subprocess.Popen([BUSYBOX_HOST, "sh", "-c", script, "clawpen-gate", "true"])
    try:
        os.close(gate_reader(folder / "gate"))  # clawpen gave up: the gate closes without a line
        assert bot.wait(10) == create.GATE_EXIT
    finally:
        bot.kill()
        bot.wait()
        for fd in reads:
            os.close(fd)
