"""The kernel's memory thresholds (cgroup v1), as the memory_pressure watcher uses them: an
eventfd that turns readable when a real process in the cgroup allocates past the level, and
again when it frees, and stays quiet while the use stays on one side."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from clawpen.plan.model import CgroupLimits
from clawpen.sandbox.cgroups import Cgroup, detect
from clawpen.sandbox.memevents import drain, threshold_fd
from clawpen.sandbox.procs import readable

pytestmark = [pytest.mark.root]

MiB = 1 << 20
HOG = """
import sys
held = []
for line in sys.stdin:
    if line.startswith("take"):
        held.append(bytearray(int(line.split()[1]) << 20))
    else:
        held.clear()
    print("ok", flush=True)
"""


@pytest.fixture
def cg() -> Iterator[Cgroup]:
    host = detect()
    made = host.create(f"memevents-{os.getpid()}", CgroupLimits(memory_max=256 * MiB))
    try:
        yield made
    finally:
        made.remove()


def test_crossing_the_level_either_way_wakes_the_eventfd(cg: Cgroup) -> None:
    efd = threshold_fd(cg, 32 * MiB)
    if cg.version == 2:
        assert efd is None  # no usage-level event there: the watcher polls
        return
    assert efd is not None
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert hog.stdin is not None and hog.stdout is not None
    try:
        cg.add(hog.pid)

        def ask(line: str) -> None:
            assert hog.stdin is not None and hog.stdout is not None
            hog.stdin.write(line + "\n")
            hog.stdin.flush()
            assert hog.stdout.readline() == "ok\n"

        ask("take 4")  # below the level: no event
        assert not readable(efd, 1.0)
        ask("take 64")  # across it
        assert readable(efd, 5.0)
        drain(efd)
        assert not readable(efd, 0.5)  # drained: quiet while the use stays above
        ask("free")  # back below
        assert readable(efd, 5.0)
    finally:
        hog.kill()
        hog.communicate()  # waits, and closes its pipes
        os.close(efd)


def test_a_closed_eventfd_unregisters_and_a_missing_controller_gives_none(cg: Cgroup) -> None:
    if cg.version == 2:
        assert threshold_fd(cg, MiB) is None
        return
    for _ in range(200):  # registrations end with their eventfd: no growth, no error
        efd = threshold_fd(cg, MiB)
        assert efd is not None
        os.close(efd)
    others = [d for d in cg.dirs if not os.path.exists(f"{d}/memory.usage_in_bytes")]
    assert threshold_fd(Cgroup(cg.name, 1, {"pids": others[0]}), MiB) is None  # no memory controller
