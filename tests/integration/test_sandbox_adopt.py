"""Adoption at the sandbox tier, against the real cgroups of this host: a second NamespaceTier
(what a restarted daemon holds) finds a running sandbox again from its record (bubblewrap's pid
and start time, the cgroup's name), reads its cgroup, and kills and removes it.

The daemon's own adoption test (test_daemon.py) covers the whole path; this one needs no daemon,
so it also runs in the pure cgroup v2 guest (test_cgroup_v2_guest.py) where a daemon starts too
slowly under an emulated CPU.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from helpers import Clawpen, alive, of_uids, wait_for

from clawpen.plan.build import HostFacts, build_plan
from clawpen.sandbox import seccomp
from clawpen.sandbox.namespace import NamespaceTier
from clawpen.sandbox.tier import Stdio
from clawpen.sandbox.users import identity_for
from clawpen.spec.policy import policy_from_flags

pytestmark = [pytest.mark.root, pytest.mark.bwrap]


def test_a_new_tier_adopts_a_running_sandbox_and_kills_it_through_its_cgroup(
    clawpen: Clawpen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAWPEN_UID_BASE", str(clawpen.uid_base))
    command = ["sh", "-c", "sleep 300 & sleep 300; wait"]
    policy = policy_from_flags(command, base_dir="/", name="adoptee", pids=16)
    plan = build_plan(
        policy, identity_for("adoptee", clawpen.home), HostFacts.probe(), seccomp.default_policy()
    )
    uid = plan.identity.uid
    status = tmp_path / "status.json"
    null = os.open(os.devnull, os.O_RDWR)
    status_fd = os.open(status, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    first = NamespaceTier(clawpen.home)
    box = first.start(
        plan, cgroup_name=f"adoptee-{os.getpid()}", stdio=Stdio(null, null, null), status_fd=status_fd
    )
    os.close(status_fd)
    os.close(null)
    try:

        def sleeping() -> int:
            return len([p for p in of_uids([uid]) if p.comm == "sleep" and not p.zombie])

        assert wait_for(lambda: sleeping() == 2, 30), "the bot did not start"
        record = box.record()
        assert record.cgroup == f"adoptee-{os.getpid()}" and record.pid == box.pid
        # a later daemon: a new tier, no handle on the first one's processes or descriptors
        second = NamespaceTier(clawpen.home)
        # negative control: a record whose pid was reused (another start time) is not adopted
        stale = record._replace(pid_start=(record.pid_start or 0) + 1)
        assert second.adopt(stale, status=status, started_at=time.time()) is None
        adopted = second.adopt(record, status=status, started_at=time.time())
        assert adopted is not None
        assert adopted.pid == box.pid and adopted.sandbox_pid == box.sandbox_pid
        assert adopted.cg.dirs == box.cg.dirs
        # the plan's limit is on the cgroup (v2: the bot's one directory; v1: the pids hierarchy's)
        pids_max = [Path(d, "pids.max") for d in adopted.cg.dirs if Path(d, "pids.max").exists()]
        assert [p.read_text() for p in pids_max] == ["16\n"]
        bots = {p.pid for p in of_uids([uid])} - {box.pid}  # bubblewrap's monitor stays outside
        assert len(bots) >= 3
        assert bots <= set(adopted.cg.pids())  # every process of the bot is in the adopted cgroup
        stats = adopted.stats()
        assert stats.pids_current is not None and stats.pids_current >= len(bots)
        assert stats.memory_current is not None and stats.memory_current > 0
        adopted.kill(monitor=True)
        assert adopted.cg.pids() == []
        # nothing of the bot's uid lives on (bubblewrap, our child, stays a zombie until reaped)
        assert wait_for(lambda: all(p.zombie for p in of_uids([uid])), 5), of_uids([uid])
        assert wait_for(lambda: not alive(box.pid), 5)  # bubblewrap ended with its bot
        adopted.teardown()
        assert not any(os.path.exists(d) for d in adopted.cg.dirs)
    finally:
        for p in of_uids([uid]):
            os.kill(p.pid, signal.SIGKILL)
        box.teardown()
    assert not of_uids([uid])
