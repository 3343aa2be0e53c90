"""Failover between two daemons (two state directories, hosts "a" and "b") on one real etcd:
a primary's daemon frozen (SIGSTOP) loses its bot to the fence before the backup starts its
own, the new term's token is larger, the old primary comes back as standby; a planned
`clawpen failover` hands over with no moment of two primaries.

Each bot appends "<host> <token> <time>" to a shared file every 50 ms: the checker reads every
moment each instance believed it was primary."""

from __future__ import annotations

import contextlib
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

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow, pytest.mark.etcd]


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
                    with contextlib.suppress(ProcessLookupError):  # a test killed it
                        os.kill(pid, signal.SIGCONT)


def start_pair(a: DaemonCli, b: DaemonCli) -> dict[str, object]:
    """Host a's daemon first (its bot runs: primary), then b's (standby); a's bot's row."""
    a.cli("up")
    row = a.wait_state("pen", "running", timeout=30)
    b.cli("up")
    b.wait_state("pen", "standby", timeout=30)
    return row


def test_a_frozen_primary_loses_its_bot_before_the_backup_starts(
    pair: tuple[DaemonCli, DaemonCli, Terms, Etcd], sink: Sink
) -> None:
    a, b, terms, etcd = pair
    notify = f'[monitoring.builtin]\nhost_defaults = false\n[monitoring.notify]\nurls = ["{sink.url}"]\n'
    b.write(spec([etcd.url], terms.path.parent, extra=notify))
    start_pair(a, b)
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
    start_pair(a, b)
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
    before = start_pair(a, b)
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
    start_pair(a, b)
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


JOURNAL_BOT = r"""
n=0; [ -f /workspace/journal ] && n=$(wc -l < /workspace/journal)
while :; do
  n=$((n+1)); echo "$CLAWPEN_HA_HOST $CLAWPEN_FENCING_TOKEN $n" >> /workspace/journal
  echo "$CLAWPEN_HA_HOST $CLAWPEN_FENCING_TOKEN $CLAWPEN_FENCING_TOKEN $(date +%s.%N)" >> {log}
  sleep 0.05
done
"""


def test_ha_sync_ships_the_workspace_and_a_planned_failover_loses_nothing(
    pair: tuple[DaemonCli, DaemonCli, Terms, Etcd],
) -> None:
    a, b, terms, etcd = pair
    repo = terms.path.parent / "repo"
    script = JOURNAL_BOT.replace("{log}", str(terms.path))
    text = f"""
        [cluster]
        endpoints = ["{etcd.url}"]
        lease = "3s"
        poll = "200ms"

        [bots.pen]
        command = ["sh", "-c", '''{script}''']
        workspace = "./data"
        filesystem.rw = ["{terms.path.parent}"]
        restart.stop_grace = "1s"

        [bots.pen.ha]
        mode = "primary-backup"
        hosts = ["a", "b"]
        sync = {{ repository = "{repo}", password_secret = "HA_SYNC_PW", interval = "5s" }}
    """
    for d in (a, b):
        d.write(text)
        d.cli("secrets", "set", "HA_SYNC_PW", stdin="the-same-on-both\n")
    start_pair(a, b)
    journal_a, journal_b = a.spec.parent / "data" / "journal", b.spec.parent / "data" / "journal"
    # an interval shipment: its age shows on the backup
    assert wait_for(lambda: (b.json("cluster", "status")["bots"][0]["copy_age_s"] or 99) < 10, 20)  # type: ignore[index]
    assert not journal_b.exists()  # the backup restores at a takeover, not before
    b.cli("failover", "pen")
    b.wait_state("pen", "running", timeout=60)
    final_a = journal_a.read_text()  # a's bot is stopped: its last state
    assert final_a and journal_b.exists()
    got_b = journal_b.read_text()
    assert got_b.startswith(final_a), (len(final_a), got_b[: len(final_a) + 80])  # not a line lost
    assert wait_for(lambda: len(journal_b.read_text().splitlines()) > len(final_a.splitlines()) + 5, 10)
    numbers = [int(line.split()[2]) for line in journal_b.read_text().splitlines()]
    assert numbers == list(range(1, len(numbers) + 1))  # b's bot carried the count on
    assert terms.overlaps() == []
    owner = os.stat(journal_b).st_uid
    assert owner == os.stat(b.spec.parent / "data").st_uid != 0  # handed to b's bot uid


def test_a_killed_primary_daemon_loses_its_bot_to_the_fence_and_a_killed_bot_restarts_in_its_term(
    pair: tuple[DaemonCli, DaemonCli, Terms, Etcd],
) -> None:
    a, b, terms, _ = pair
    first = start_pair(a, b)
    assert wait_for(lambda: terms.primary_now() == {"a"}, 10)
    # the bot killed: a restarts it in the same term (no failover, the same token)
    os.kill(int(first["pid"]), signal.SIGKILL)
    assert wait_for(lambda: a.ps()["pen"]["state"] == "running" and a.ps()["pen"]["pid"] != first["pid"], 20)
    time.sleep(1.0)
    assert len(terms.spans()) == 1 and terms.primary_now() == {"a"}
    assert b.ps()["pen"]["state"] == "standby"
    # the daemon killed for good: its fence stops the bot at the deadline, then b takes over
    pid = a.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    assert wait_for(lambda: "b" in terms.primary_now(), 20), terms.spans()
    a_last = max(end for (h, _), (_, end) in terms.spans().items() if h == "a")
    assert a_last < killed + 3, a_last - killed  # within a's lease
    assert terms.overlaps() == []
