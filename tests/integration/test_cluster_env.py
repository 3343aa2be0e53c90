"""The simulated cluster the failover tests stand on (cluster_env.py) does what they assume:

* etcd (3 real members in the fabric namespace) answers from every simulated host, with
  etcdctl and with etcd3gw (the daemon's client); it keeps answering with one member SIGKILLed,
  and the member catches up after its restart;
* a partitioned host's etcd requests fail within the timeout while the other host's still work,
  and work again after heal(); the partition table exists in that host's namespace only;
* two clawpen daemons, one per simulated host, run the same bots from the same spec at once
  without clashing (cgroups, uids, API port, gateway links), and leave nothing behind;
* a host's teardown removes what a SIGKILLed daemon left (and reports it), and stops a
  SIGSTOPped one; a test body that raises midway leaves no namespace, member or process;
* the checker's recorder (term_log.py) hears a bot on a partitioned host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import etcd3gw
import pytest
from cluster_env import ETCDCTL, PARTITION_TABLE, Fabric, SimHost, bot_cgroups, cluster, leftovers, wait_dead
from helpers import alive, daemons_of, of_uids, read_proc, wait_for
from term_log import TermLog

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow, pytest.mark.etcd]


def value(host: SimHost, key: str, endpoints: list[str] | None = None, timeout: float = 2.0) -> str | None:
    """``key``'s value read from ``host`` (None: no such key); raises when etcd does not answer."""
    done = host.etcdctl("get", key, "--print-value-only", endpoints=endpoints, timeout=timeout)
    assert done.returncode == 0, f"etcdctl get from {host.name}: {done.returncode} {done.stderr.strip()}"
    return done.stdout.strip() or None


def put(host: SimHost, key: str, val: str, timeout: float = 2.0) -> subprocess.CompletedProcess[str]:
    return host.etcdctl("put", key, val, timeout=timeout)


def test_etcd_answers_every_host_survives_a_member_loss_and_a_partition(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a, b = c.hosts["a"], c.hosts["b"]
        tag = c.fabric.tag
        assert sorted(leftovers(tag)) == sorted([c.fabric.ns, a.ns, b.ns])

        # reachable from each host: etcdctl, and etcd3gw from a thread in the host's namespace
        assert put(a, "/t/from-a", "1").returncode == 0
        assert value(b, "/t/from-a") == "1"
        ep = c.etcd.members[1]

        def gw_roundtrip() -> list[bytes]:
            client = etcd3gw.Etcd3Client(host=ep.address, port=2379, timeout=3)
            assert client.put("/t/from-b", "2")
            return client.get("/t/from-a")

        assert b.call(gw_roundtrip) == [b"1"]
        assert value(a, "/t/from-b") == "2"
        # a long-running command in a host (popen): a watch from the first revision sees both puts
        watch = b.popen(
            [ETCDCTL, f"--endpoints={ep.client_url}", "watch", "--prefix", "--rev=1", "/t/from-"],
            env={"ETCDCTL_API": "3"},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert watch.stdout is not None
        seen = [watch.stdout.readline().strip() for _ in range(6)]  # PUT, key, value (x2)
        watch.kill()
        watch.wait()
        assert seen == ["PUT", "/t/from-a", "1", "PUT", "/t/from-b", "2"], seen

        # the leader SIGKILLed: the other two elect one (quorum 2/3) and answer reads and writes
        k = c.etcd.leader()
        assert k is not None
        dead, other = c.etcd.members[k], c.etcd.members[(k + 1) % 3]
        pid = dead.proc.pid if dead.proc else -1
        c.etcd.kill(k)
        assert not alive(pid)
        gone = a.etcdctl("get", "/t/from-a", endpoints=[dead.client_url], timeout=1)
        assert gone.returncode != 0, "the killed member still answers"
        c.etcd.wait_healthy(10)
        assert c.etcd.leader() not in (None, k)
        assert put(a, "/t/while-down", "3").returncode == 0
        assert value(b, "/t/while-down", endpoints=[other.client_url]) == "3"
        c.etcd.restart(k)
        c.etcd.wait_healthy(20)
        assert value(a, "/t/while-down", endpoints=[dead.client_url]) == "3", "no catch-up after restart"

        # a partition of host a: its requests fail within the timeout, host b's still work
        a.partition()
        assert PARTITION_TABLE in a.nft_tables()
        assert PARTITION_TABLE not in b.nft_tables()
        root = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
        assert PARTITION_TABLE not in root, "the partition table leaked into the root namespace"
        start = time.monotonic()
        cut = put(a, "/t/partitioned", "4", timeout=1.0)
        took = time.monotonic() - start
        assert cut.returncode != 0, f"a partitioned host wrote to etcd: {cut.stdout}"
        assert took < 5, f"the failure took {took:.1f}s"
        assert not a.connects(ep.address, 2379), "a partitioned host still reaches the fabric"
        assert b.connects(ep.address, 2379), "positive control"
        assert a.loopback_works(), "loopback must stay up"
        assert put(b, "/t/b-during", "5").returncode == 0  # positive control
        assert value(b, "/t/partitioned") is None

        # healed: works again
        a.heal()
        assert PARTITION_TABLE not in a.nft_tables()
        assert a.connects(ep.address, 2379)
        ok = put(a, "/t/healed", "6", timeout=3.0)
        assert ok.returncode == 0, ok.stderr
        assert value(b, "/t/healed") == "6"
        assert value(a, "/t/b-during") == "5"
        members = [m.proc.pid for m in c.etcd.members if m.proc]
    assert leftovers(tag) == [], "namespaces left behind"
    assert wait_dead(members, 5), "etcd members left running"
    assert not any(m.data.exists() for m in c.etcd.members), "data dirs left behind"


def test_a_test_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    """cluster() removes everything when the test body raises: the members, a command still
    running in a host (popen), the partition table with its namespace, the data dirs."""
    with pytest.raises(RuntimeError, match="midway"), cluster(tmp_path) as c:
        tag = c.fabric.tag
        members = [m.proc.pid for m in c.etcd.members if m.proc]
        sleeper = c.hosts["b"].popen(["sleep", "600"])
        c.hosts["a"].partition()
        assert alive(sleeper.pid) and all(alive(p) for p in members)
        raise RuntimeError("the test failed midway")
    assert leftovers(tag) == []
    assert wait_dead([*members, sleeper.pid], 5)
    assert not any(m.data.exists() for m in c.etcd.members)


SPEC = """
[bots.twin]
command = ["sleep", "600"]
"""
NET_SPEC = (
    SPEC
    + """
[bots.web]
command = ["sleep", "600"]
network = { egress = ["www.example.test:443"] }
"""
)


def _healthz(host: SimHost) -> dict[str, object]:
    def get() -> dict[str, object]:
        with urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    return host.call(get)


def test_two_daemons_on_two_hosts_run_the_same_bot_without_clashing(tmp_path: Path) -> None:
    fabric = Fabric()
    tag = fabric.tag
    try:
        a, b = fabric.host("a"), fabric.host("b")
        with a.daemon(tmp_path / "a") as da, b.daemon(tmp_path / "b") as db:
            for d, h in ((da, a), (db, b)):
                pid = d.pid()
                assert pid is not None
                assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(h.netns_path).st_ino, (
                    "daemon not in its host"
                )
                d.write(NET_SPEC)  # web: a link to the daemon's gateway (its namespaces, nft tables)
                d.cli("up")
            wa, wb = da.wait_state("web", "running"), db.wait_state("web", "running")
            ra, rb = da.wait_state("twin", "running"), db.wait_state("twin", "running")
            pa, pb = int(ra["pid"]), int(rb["pid"])
            assert pa != pb and alive(pa) and alive(pb)
            ua, ub = read_proc(pa), read_proc(pb)
            assert ua is not None and ub is not None
            assert ua.uid != ub.uid, "two hosts gave their bots one uid"
            cga, cgb = bot_cgroups(da.home), bot_cgroups(db.home)
            assert cga and cgb, "no bot cgroups found (the check would prove nothing)"
            assert not set(cga) & set(cgb)
            # each host has its own API on 127.0.0.1:8080 (one namespace each: no port clash)
            assert _healthz(a) and _healthz(b)
            assert set(da.ps()) == {"twin", "web"} and set(db.ps()) == {"twin", "web"}
            assert wa["pid"] != wb["pid"]
            # stopping one host's bot leaves the other's alone
            da.cli("down")
            assert wait_dead([pa], 10)
            assert alive(pb) and db.ps()["twin"]["state"] == "running"
            homes, uids = (da.home, db.home), (ua.uid, ub.uid)
        for home in homes:
            assert daemons_of(home) == []
            assert bot_cgroups(home) == [], f"cgroups left: {bot_cgroups(home)}"
        assert wait_dead([pa, pb, int(wa["pid"]), int(wb["pid"])], 10)
        assert [p.pid for p in of_uids(uids) if not p.zombie] == []
    finally:
        fabric.close()
    assert leftovers(tag) == []


def test_a_host_teardown_cleans_up_after_a_killed_or_stopped_daemon(tmp_path: Path) -> None:
    """The fault tests SIGKILL and SIGSTOP daemons: SimHost.daemon() still removes everything,
    and reports (strict) what a killed daemon left: its bot and the bot's cgroups."""
    fabric = Fabric()
    tag = fabric.tag
    try:
        a, b = fabric.host("a"), fabric.host("b")
        with pytest.raises(AssertionError, match="left behind") as report, a.daemon(tmp_path / "a") as da:
            da.write(SPEC)
            da.cli("up")
            bot = int(da.wait_state("twin", "running")["pid"])
            daemon = da.pid()
            assert daemon is not None
            os.kill(daemon, signal.SIGKILL)
            assert wait_dead([daemon], 5)
            assert alive(bot), "the bot went down with its daemon (nothing to clean up)"
            home = da.home
        said = str(report.value)
        assert re.search(rf"'bot processes': \[[^\]]*\b{bot}\b", said) and "'cgroups': []" not in said, said
        assert not alive(bot)
        assert bot_cgroups(home) == []
        assert daemons_of(home) == []

        with b.daemon(tmp_path / "b") as db:  # strict: a stopped daemon is continued and stopped
            db.write(SPEC)
            db.cli("up")
            bot = int(db.wait_state("twin", "running")["pid"])
            daemon = db.pid()
            assert daemon is not None
            os.kill(daemon, signal.SIGSTOP)
            home = db.home
        assert not alive(bot) and not alive(daemon)
        assert bot_cgroups(home) == []
    finally:
        fabric.close()
    assert leftovers(tag) == []


REPORTER = r"""
import itertools, os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for i in itertools.count():
    s.sendto(f"{os.environ['HOST']} {i}".encode(), "/termlog/log.sock")
    time.sleep(0.05)
"""


def test_a_bot_on_a_partitioned_host_still_reaches_the_term_log(tmp_path: Path) -> None:
    """The checker's recorder (term_log.TermLog) is not on the network: a bot keeps reporting
    while its host is cut off (the partition is real: a fabric listener becomes unreachable)."""
    fabric = Fabric()
    log = TermLog()
    tag = fabric.tag
    try:
        a = fabric.host("a")
        listener = fabric.call(lambda: socket.create_server((fabric.gateway, 7777)))
        with listener, a.daemon(tmp_path / "a") as d:
            d.write(
                f"""
                [bots.rep]
                command = ["/usr/bin/python3", "-c", {json.dumps(REPORTER)}]
                env = {{ HOST = "a" }}
                filesystem = {{ rw = ["{log.mount}"] }}
                """
            )
            d.cli("up")
            assert wait_for(lambda: len(log.lines()) >= 3, 15), d.cli("logs", "rep").stdout
            assert a.connects(fabric.gateway, 7777)
            a.partition()
            assert not a.connects(fabric.gateway, 7777), "the partition did not cut the host off"
            seen = len(log.lines())
            assert wait_for(lambda: len(log.lines()) >= seen + 5, 5), "no records while partitioned"
            a.heal()
        numbers = [int(line.split()[1]) for line in log.lines() if line.startswith("a ")]
        assert numbers == list(range(len(numbers))), "records lost or out of order"
    finally:
        log.close()
        fabric.close()
    assert leftovers(tag) == []
