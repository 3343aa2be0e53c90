"""A daemon SIGKILLed between starting bubblewrap and moving the sandbox into the bot's cgroup
(a few milliseconds of every start): the sandbox it leaves never runs the bot, and the next
daemon removes it (``clawpen.sandbox.spawnmark``).

The start runs in a child process whose ``Cgroup.add`` is replaced by a SIGKILL of itself: it
dies exactly in that window. Before the fix, the cold start's bubblewrap read EOF on its block
fd (its only writer, the daemon, was gone) and ran the bot outside every cgroup limit, and
nothing ever found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Clawpen, of_uids, wait_for

from clawpen.sandbox import spawnmark
from clawpen.sandbox.namespace import NamespaceTier
from conftest import daemon_at

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

START = """
import os, signal, sys
from pathlib import Path
from clawpen.plan.build import HostFacts, build_plan
from clawpen.sandbox import cgroups, seccomp
from clawpen.sandbox.namespace import NamespaceTier
from clawpen.sandbox.tier import Stdio
from clawpen.sandbox.users import identity_for
from clawpen.spec.policy import policy_from_flags

home, group, die = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "die"
policy = policy_from_flags(["sleep", "300"], base_dir="/", name="window")
identity = identity_for("window", home)
plan = build_plan(policy, identity, HostFacts.probe(), seccomp.default_policy(), die_with_parent=False)
print(identity.uid, flush=True)
if die:  # killed (as a daemon can be) after the spawn, before the cgroup join
    cgroups.Cgroup.add = lambda self, pid: os.kill(os.getpid(), signal.SIGKILL)
null = os.open(os.devnull, os.O_RDWR)
NamespaceTier(home).start(plan, cgroup_name=group, stdio=Stdio(null, null, null))
"""


def start(cp: Clawpen, group: str, mode: str) -> tuple[int, int]:
    """Run the start in a child; (its exit status, the bot's uid)."""
    done = subprocess.run(
        [sys.executable, "-c", START, str(cp.home), group, mode],
        env=cp.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, int(done.stdout.split()[0])


def live(uid: int, comm: str | None = None) -> list[int]:
    return [p.pid for p in of_uids([uid]) if not p.zombie and (comm is None or p.comm == comm)]


@pytest.fixture
def group(clawpen: Clawpen) -> Iterator[str]:
    name = f"window-{os.getpid()}"
    yield name
    NamespaceTier(clawpen.home).cgroup_host().attach(name).remove()


def test_a_start_killed_before_its_cgroup_never_runs_and_the_next_daemon_removes_it(
    clawpen: Clawpen, group: str
) -> None:
    # positive control: the same start, not killed, runs the bot (and its spawner can exit)
    rc, uid = start(clawpen, group, "run")
    assert rc == 0
    assert wait_for(lambda: live(uid, "sleep"), 10), of_uids([uid])
    assert not list(spawnmark.folder(clawpen.home).iterdir())  # a finished start leaves no mark
    NamespaceTier(clawpen.home).cgroup_host().attach(group).remove()
    assert wait_for(lambda: not live(uid), 10), of_uids([uid])

    rc, uid = start(clawpen, group, "die")
    assert rc == -9
    held = live(uid)
    assert held and all(p.comm == "bwrap" for p in of_uids([uid]) if p.pid in held), of_uids([uid])
    time.sleep(1.5)  # its spawner is long gone: EOF on a read-only block fd would have run it
    assert not live(uid, "sleep"), "the bot ran outside its cgroup after its starter died"
    marks = list(spawnmark.folder(clawpen.home).iterdir())
    assert [m.name for m in marks] == [group]
    # bubblewrap's monitor (the mark's pid, its group's leader) may die of SIGPIPE when it writes
    # the rest of its info to the dead starter's pipe, leaving the held sandbox alone (a CI run
    # saw it): kill it, so that the sweep must find the sandbox by group, uid and start time
    leader = int(marks[0].read_text().split()[0])
    with contextlib.suppress(ProcessLookupError):
        os.kill(leader, signal.SIGKILL)
    assert wait_for(lambda: leader not in live(uid), 5), of_uids([uid])
    sandbox = live(uid)
    assert sandbox and set(sandbox) <= set(held), of_uids([uid])  # the held sandbox lives on

    with daemon_at(clawpen.home) as d:  # the next daemon sweeps at its start
        d.cli("ps")  # starts it
        assert wait_for(lambda: not live(uid), 10), of_uids([uid])
        events = [json.loads(line) for line in d.cli("events", "--json").stdout.splitlines()]
        removed = [e["reason"] for e in events if "removed a held sandbox" in e.get("reason", "")]
        assert len(removed) == 1 and group in removed[0], removed
    assert not list(spawnmark.folder(clawpen.home).iterdir())


def test_a_mark_whose_writer_lives_or_whose_pid_was_reused_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "300"], process_group=0)
    try:
        folder = spawnmark.folder(tmp_path)
        mine = spawnmark.write(tmp_path, "busy.0", other.pid, os.getuid())  # by this live process
        assert mine is not None and mine.parent == folder
        assert spawnmark.sweep(tmp_path) == [] and mine.exists()
        # a dead writer, but the group's processes started after the mark's (a reused group id),
        # or run as another uid
        pid, start_time, _, _, uid = (int(f) for f in mine.read_text().split())
        (folder / "reused.0").write_text(f"{pid} {start_time + 1} 999999999 1 {uid}\n")
        (folder / "other-uid.0").write_text(f"{pid} {start_time} 999999999 1 {uid + 1}\n")
        (folder / "junk.0").write_text("not a mark\n")
        assert spawnmark.sweep(tmp_path) == []
        assert other.poll() is None  # never killed
        assert sorted(m.name for m in folder.iterdir()) == ["busy.0"]  # stale marks removed
        # the same process, its writer dead: killed
        mine.write_text(f"{pid} {start_time} 999999999 1 {uid}\n")
        assert len(spawnmark.sweep(tmp_path)) == 1
        assert other.wait(5) == -9
    finally:
        other.kill()
        other.wait()
