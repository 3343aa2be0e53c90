"""Failover between two daemons (two state directories, hosts "a" and "b") on one real etcd:
a primary's daemon frozen (SIGSTOP) loses its bot to the fence before the backup starts its
own, the new term's token is larger, the old primary comes back as standby; a planned
`clawpen failover` hands over with no moment of two primaries.

Each bot appends "<host> <token> <time>" to a shared file every 50 ms: the checker reads every
moment each instance believed it was primary."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from etcd_env import Etcd, etcd_at
from ha_env import Terms, shared_dir, spec
from helpers import DaemonCli, Sink, alive, wait_for

from conftest import daemon_at

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[DaemonCli, DaemonCli, Terms, Etcd]]:
    with ExitStack() as stack:
        shared = stack.enter_context(shared_dir())
        etcd = stack.enter_context(etcd_at(tmp_path))
        a = stack.enter_context(daemon_at(tmp_path / "a"))
        b = stack.enter_context(daemon_at(tmp_path / "b"))
        for name, d in (("a", a), ("b", b)):
            d.env["CLAWPEN_CLUSTER_HOST"] = name
            d.write(spec([etcd.url], shared))
        try:
            yield a, b, Terms(shared / "primary.log"), etcd
        finally:
            for d in (a, b):  # a stopped daemon cannot stop its bots
                pid = d.pid()
                if pid:
                    os.kill(pid, signal.SIGCONT)


def test_a_frozen_primary_loses_its_bot_before_the_backup_starts(
    pair: tuple[DaemonCli, DaemonCli, Terms, Etcd], sink: Sink
) -> None:
    a, b, terms, etcd = pair
    notify = f'[monitoring.builtin]\nhost_defaults = false\n[monitoring.notify]\nurls = ["{sink.url}"]\n'
    b.write(spec([etcd.url], terms.path.parent, extra=notify))
    a.cli("up")
    a.wait_state("pen", "running", timeout=30)
    b.cli("up")
    b.wait_state("pen", "standby", timeout=30)
    assert wait_for(lambda: terms.primary_now() == {"a"}, 10)
    ((_, token_a),) = terms.spans().keys()
    pid = a.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the primary's daemon freezes: no renewal any more
    frozen_at = time.time()
    try:
        assert wait_for(lambda: "b" in terms.primary_now(), 20), terms.spans()
        took = min(start for (host, _), (start, _) in terms.spans().items() if host == "b") - frozen_at
        assert wait_for(lambda: "a" not in terms.primary_now(), 1)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert terms.overlaps() == []
    tokens = {host: token for (host, token) in terms.spans()}
    assert tokens["b"] > token_a
    assert took < 3 + 0.2 + 3, took  # the lease + a poll (+ the start of a sandbox, slack)
    # The old primary wakes up: it learns its term is over and rests as standby, never running.
    a.wait_state("pen", "standby", timeout=15)
    time.sleep(1.0)
    assert terms.primary_now() == {"b"} and terms.overlaps() == []
    assert "killed bot pen" in (a.home / "ha-fence.log").read_text()
    # the backup's daemon told a person (an HTTP sink): it is primary now, and why
    assert wait_for(lambda: any(t.startswith("[FAILOVER] pen") for t in sink.titles()), 15, 0.2), (
        sink.titles()
    )
    bodies = [str(m.get("message")) for m in sink.got]
    assert any("b is primary" in body for body in bodies), bodies


def test_a_planned_failover_hands_over_with_no_two_primaries(
    pair: tuple[DaemonCli, DaemonCli, Terms, Etcd],
) -> None:
    a, b, terms, _ = pair
    a.cli("up")
    a.wait_state("pen", "running", timeout=30)
    b.cli("up")
    b.wait_state("pen", "standby", timeout=30)
    status = b.json("cluster", "status")
    assert status["host"] == "b" and status["problem"] is None  # type: ignore[index]
    assert {h["host"] for h in status["hosts"]} == {"a", "b"}  # type: ignore[index]
    (row,) = status["bots"]  # type: ignore[index]
    assert row["primary"] == "a" and row["here"] == "standby"
    done = b.cli("failover", "pen", "--json")
    assert '"after": "b"' in done.stdout, done.stdout
    b.wait_state("pen", "running", timeout=30)
    a.wait_state("pen", "standby", timeout=30)
    assert wait_for(lambda: terms.primary_now() == {"b"}, 10)
    assert terms.overlaps() == []
    # and back, named: --to a
    b.cli("failover", "pen", "--to", "a")
    a.wait_state("pen", "running", timeout=30)
    assert wait_for(lambda: terms.primary_now() == {"a"}, 10)
    assert terms.overlaps() == []
    assert len(terms.spans()) == 3  # three terms, three tokens
    kinds = [e["kind"] for e in a.events("pen")]
    assert "failover" in kinds
    # the planned ones are in the audit log of the host they were asked on
    audited = [json.loads(line) for line in (b.home / "audit.log").read_text().splitlines()]
    failovers = [r for r in audited if r.get("action") == "failover"]
    assert len(failovers) == 2 and failovers[1]["detail"]["to"] == "a", failovers


def test_a_daemon_killed_and_restarted_within_the_lease_keeps_its_term_and_bot(
    pair: tuple[DaemonCli, DaemonCli, Terms, Etcd],
) -> None:
    a, b, terms, etcd = pair
    shared = terms.path.parent
    for d in (a, b):
        d.write(spec([etcd.url], shared, lease="10s"))
    a.cli("up")
    before = a.wait_state("pen", "running", timeout=30)
    b.cli("up")
    b.wait_state("pen", "standby", timeout=30)
    pid = a.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid), 5)
    after = a.wait_state("pen", "running", timeout=30)  # `clawpen ps` started a new daemon: it adopted
    assert after["pid"] == before["pid"]
    time.sleep(12)  # longer than the lease: the new daemon renews it
    assert terms.primary_now() == {"a"} and len(terms.spans()) == 1 and terms.overlaps() == []
    assert b.ps()["pen"]["state"] == "standby"
    kinds = [(e["kind"], e.get("reason", "")) for e in a.events("pen")]
    assert any("adopted" in reason or "primary" in reason for _, reason in kinds), kinds


def test_a_host_that_drops_the_bot_from_its_spec_hands_the_term_on(
    pair: tuple[DaemonCli, DaemonCli, Terms, Etcd],
) -> None:
    a, b, terms, etcd = pair
    a.cli("up")
    a.wait_state("pen", "running", timeout=30)
    b.cli("up")
    b.wait_state("pen", "standby", timeout=30)
    a.write(
        f'[cluster]\nendpoints = ["{etcd.url}"]\nlease = "3s"\n[bots.other]\ncommand = ["sleep", "600"]\n'
    )
    a.cli("up")
    assert wait_for(lambda: terms.primary_now() == {"b"}, 20), terms.spans()
    assert terms.overlaps() == []
    assert "pen" not in a.ps()
    # and a does not hold (or take) the term again: b keeps it past a lease
    time.sleep(4)
    assert terms.primary_now() == {"b"} and len(terms.spans()) == 2
