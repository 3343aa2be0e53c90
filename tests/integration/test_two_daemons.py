"""Two daemons on one host (two state directories) never share a bot cgroup.

A bot's cgroup path is one for the whole host (``clawpen/<name>``): before, two daemons each
running a bot called ``twin`` put both sandboxes into ``clawpen/twin.0``, and stopping one
SIGKILLed the other's bot. Now a daemon on another state directory prefixes its cgroups with a
short id of that directory (the default state directory keeps plain names).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonCli, alive, daemons_of

from clawpen.paths import DEFAULT_STATE, cgroup_scope

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

SPEC = """
[bots.twin]
command = ["sleep", "600"]
"""


def test_scope_is_empty_for_the_default_state_and_differs_between_other_states(tmp_path: Path) -> None:
    assert cgroup_scope(DEFAULT_STATE) == ""
    a, b = cgroup_scope(tmp_path / "a"), cgroup_scope(tmp_path / "b")
    assert a and b and a != b
    assert cgroup_scope(tmp_path / "x" / ".." / "a") == a  # the real path counts


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[DaemonCli, DaemonCli]]:
    made: list[DaemonCli] = []
    spec_dirs: list[Path] = []
    try:
        for n in ("one", "two"):
            spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-2d-", dir="/tmp"))
            spec_dir.chmod(0o755)
            spec_dirs.append(spec_dir)
            made.append(DaemonCli(tmp_path / n / "state", spec_dir, 1_940_000_000 + len(made) * 10_000))
        yield made[0], made[1]
    finally:
        for d in made:
            d.shutdown()
            for pid in daemons_of(d.home):
                os.kill(pid, signal.SIGKILL)
        for spec_dir in spec_dirs:
            subprocess.run(["rm", "-rf", str(spec_dir)], check=False)


def _cgroups(pid: int) -> set[str]:
    """The cgroup paths of ``pid`` in every hierarchy (v1 and v2 lines of /proc/PID/cgroup)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {line.split(":", 2)[2] for line in lines if "/clawpen/" in line}


def test_stopping_one_daemons_bot_leaves_the_others_bot_alone(pair: tuple[DaemonCli, DaemonCli]) -> None:
    one, two = pair
    for d in (one, two):
        d.write(SPEC)
        d.cli("up")
    a, b = one.wait_state("twin", "running"), two.wait_state("twin", "running")
    assert a["pid"] != b["pid"]
    cg_one, cg_two = _cgroups(a["pid"]), _cgroups(b["pid"])
    assert all("/clawpen/" in path for path in cg_one | cg_two), (cg_one, cg_two)
    assert not cg_one & cg_two, f"two daemons share a cgroup: {cg_one & cg_two}"
    one.cli("down")
    assert not alive(a["pid"])
    assert alive(b["pid"]), "the other daemon's bot was killed"
    assert two.ps()["twin"]["state"] == "running"
