"""Failover under network faults, on a real 3-member etcd cluster and two simulated hosts (each
clawpen daemon in a network namespace of its own, cluster_env.py):

* the primary's host cut off (nftables in its namespace only): its bot stops before its lease
  ends, the backup takes over after it, and after the heal the old primary rests as standby;
* a partition shorter than the lease heals with no failover at all;
* losing the etcd member that leads the raft changes nothing for the bot.

The checker (ha_env.Terms) reads every moment each bot believed it was primary."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_env import SimHost, bot_cgroups, cluster
from ha_env import Terms, shared_dir, spec
from helpers import NetnsDaemon, wait_for

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.bwrap, pytest.mark.slow, pytest.mark.etcd]

LEASE = 5.0  # the test configuration (with checks every second)


@contextlib.contextmanager
def two_hosts(
    tmp_path: Path, **more: Any
) -> Iterator[tuple[SimHost, SimHost, NetnsDaemon, NetnsDaemon, Terms, object]]:
    with cluster(tmp_path) as c, shared_dir() as shared:
        a, b = c.hosts["a"], c.hosts["b"]
        text = spec(c.etcd.endpoints, shared, lease=f"{LEASE:g}s", **more)

        def env(h: SimHost) -> dict[str, str]:
            return {"CLAWPEN_CLUSTER_HOST": h.name, "CLAWPEN_CLUSTER_ADDRESS": h.address}

        with a.daemon(tmp_path / "a", env=env(a)) as da, b.daemon(tmp_path / "b", env=env(b)) as db:
            for d in (da, db):
                d.write(text)
            da.cli("up")
            da.wait_state("pen", "running", timeout=30)
            db.cli("up")
            db.wait_state("pen", "standby", timeout=30)
            terms = Terms(shared / "primary.log")
            assert wait_for(lambda: terms.primary_now() == {"a"}, 10), terms.spans()
            try:
                yield a, b, da, db, terms, c.etcd
            finally:
                with contextlib.suppress(Exception):
                    a.heal()


def first_moment(terms: Terms, host: str) -> float:
    return min(start for (h, _), (start, _) in terms.spans().items() if h == host)


def test_a_partitioned_primary_stops_before_the_backup_starts(tmp_path: Path) -> None:
    with two_hosts(tmp_path) as (a, _b, da, db, terms, _):
        a.partition()
        cut = time.time()
        assert wait_for(lambda: "b" in terms.primary_now(), 20), terms.spans()
        took = first_moment(terms, "b") - cut
        a_last = max(end for (h, _), (_, end) in terms.spans().items() if h == "a")
        assert a_last < cut + LEASE, a_last - cut  # a's bot was gone before its lease ended
        assert terms.overlaps() == []
        assert took < LEASE + 0.2 + 3, took  # the lease + a poll (+ a sandbox start, slack)
        da.wait_state("pen", "standby", timeout=15)
        a.heal()
        time.sleep(LEASE)  # a reaches etcd again: it must learn it lost, not come back
        assert terms.primary_now() == {"b"} and terms.overlaps() == []
        assert da.ps()["pen"]["state"] == "standby" and db.ps()["pen"]["state"] == "running"
        tokens = sorted(token for (_, token) in terms.spans())
        assert len(tokens) == 2 and tokens[0] < tokens[1]


def test_a_partition_shorter_than_the_lease_heals_without_a_failover(tmp_path: Path) -> None:
    with two_hosts(tmp_path) as (a, _b, da, db, terms, _):
        a.partition()
        time.sleep(LEASE / 3)  # one renewal lost at most
        a.heal()
        time.sleep(2 * LEASE)
        assert len(terms.spans()) == 1 and terms.primary_now() == {"a"}
        assert db.ps()["pen"]["state"] == "standby" and da.ps()["pen"]["state"] == "running"


def test_losing_the_etcd_leader_member_changes_nothing(tmp_path: Path) -> None:
    with two_hosts(tmp_path) as (_a, _b, _da, db, terms, etcd):
        leader = etcd.leader()  # type: ignore[attr-defined]
        etcd.kill(leader)  # type: ignore[attr-defined]
        try:
            time.sleep(3 * LEASE)  # renewals go to the other members, through the new raft leader
            assert len(terms.spans()) == 1 and terms.primary_now() == {"a"}, terms.spans()
            assert db.ps()["pen"]["state"] == "standby"
            status = db.json("cluster", "status")
            assert status["problem"] is None and status["bots"][0]["primary"] == "a"  # type: ignore[index]
        finally:
            etcd.restart(leader)  # type: ignore[attr-defined]


def test_a_stopped_bot_fails_the_backups_check_and_the_backup_takes_over(tmp_path: Path) -> None:
    """SIGSTOP of the primary's bot: its daemon still renews the lease, but the backup's health
    check of it (through its published port) fails `failures` times: the backup asks the term to
    step down, the primary stops its bot and frees the key, the backup starts."""
    check = 'check = { http = "http://{address}:18099/", interval = "1s", timeout = "500ms", failures = 2 }'
    publish = 'network = { publish = ["0.0.0.0:18099:8099"], expose = true }'
    with two_hosts(tmp_path, ha_more=check, extra=publish, serve=8099) as (a, b, da, db, terms, _):
        assert b.run(["curl", "-sf", "-o", "/dev/null", f"http://{a.address}:18099/"]).returncode == 0
        pid = int(da.ps()["pen"]["pid"])
        time.sleep(2.5)  # positive control: a healthy primary is left alone
        assert terms.primary_now() == {"a"} and len(terms.spans()) == 1
        for _ in range(3):  # the shell loop forks `date` and `sleep`: until none is left running
            for p in bot_pids(da, pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGSTOP)
            time.sleep(0.1)
        stopped = time.time()
        assert wait_for(lambda: "b" in terms.primary_now(), 30), terms.spans()
        took = first_moment(terms, "b") - stopped
        assert terms.overlaps() == []
        da.wait_state("pen", "standby", timeout=15)
        assert took < 2 * 1.0 + 0.5 + LEASE + 3, took  # two failed checks, the step-down, a start
        reasons = [e.get("reason", "") for e in db.events("pen")]
        assert any("check of http://" in r for r in reasons), reasons
        # b's published port waited in standby with its relay up: not ended and started again
        assert not [r for r in reasons if "port relay" in r and "starting it again" in r], reasons
        # the new term is checked from a's side too, with its own count: no ping-pong
        time.sleep(4 * 1.0)  # four check intervals
        assert terms.primary_now() == {"b"} and len(terms.spans()) == 2, terms.spans()


def bot_pids(d: NetnsDaemon, sandbox_pid: int) -> list[int]:
    """The processes of bot pen on daemon ``d`` (its cgroups; ``sandbox_pid``, bubblewrap, is
    outside them and is its parent), never root's: this test SIGSTOPs them."""
    found: set[int] = set()
    for cg in bot_cgroups(d.home):
        procs = cg / "cgroup.procs"
        if cg.name.endswith("pen.0") and procs.exists():
            found |= {int(p) for p in procs.read_text().split()}
    assert sandbox_pid not in found and all(p > sandbox_pid for p in found), (sandbox_pid, found)
    mine = [p for p in found if os.path.exists(f"/proc/{p}") and os.stat(f"/proc/{p}").st_uid != 0]
    assert len(mine) >= 2, found  # the shell loop and the HTTP server at least
    return mine
