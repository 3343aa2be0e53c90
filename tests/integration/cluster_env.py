"""A simulated cluster for the failover tests: a real etcd cluster and hosts, each host a network
namespace of the test's own, wired to one bridge.

    fabric ns clawpen-t-<tag>-fab             host ns clawpen-t-<tag>-<name>
      br0 10.A.B.1/24 (the hosts' gateway)      lo up, eth0 10.A.B.(21+k)/24, default via 10.A.B.1
          10.A.B.11..(10+n) etcd members   <-veth (h-<name> on br0)-> (nftables partition table
          :2379 clients, :2380 peers                                    while partitioned)

Every process here is started with ``nsenter --net=/run/netns/NS`` (only the network namespace:
it keeps the machine's mounts and cgroups, so a daemon in a host namespace manages its bots'
cgroups as on a real host). ``10.A.B`` is a random /24 in 10.x per fabric. Nothing touches the
root namespace but ``ip netns add`` / ``del`` themselves.

Use :func:`cluster` (a ``with`` block that removes everything, also on failure)::

    with cluster(tmp_path, hosts=("a", "b")) as c:
        c.etcd.endpoints                      # ["http://10.A.B.11:2379", ...]
        c.hosts["a"].etcdctl("put", "k", "v")  # run inside host a's namespace
        c.hosts["a"].partition(); c.hosts["a"].heal()
        with c.hosts["a"].daemon(tmp_path / "a") as d:  # a clawpen daemon "on" host a
            d.write(SPEC); d.cli("up")
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from helpers import (
    NetnsDaemon,
    alive,
    daemons_of,
    kill_fences,
    kill_uids,
    of_uids,
    session_uid_base,
    wait_for,
)

from clawpen.netns import netns_thread_call
from clawpen.paths import cgroup_scope

T = TypeVar("T")

ETCD, ETCDCTL = "/usr/bin/etcd", "/usr/bin/etcdctl"
CLIENT_PORT, PEER_PORT = 2379, 2380
CGROUP_ROOT = Path("/sys/fs/cgroup")
PARTITION_TABLE = "clawpen_t_partition"
PARTITION = f"""table inet {PARTITION_TABLE} {{
  chain input {{ type filter hook input priority -400; policy drop; iif "lo" accept; }}
  chain forward {{ type filter hook forward priority -400; policy drop; }}
  chain output {{ type filter hook output priority -400; policy drop; oif "lo" accept; }}
}}
"""
NAME = re.compile(r"[a-z][a-z0-9]{0,9}")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} -> {done.returncode}: {done.stderr.strip()}")


def nsenter(ns: str) -> list[str]:
    """The argv prefix that runs a command in network namespace ``ns`` (and nothing else)."""
    return ["nsenter", f"--net=/run/netns/{ns}", "--"]


def _env(env: dict[str, str] | None) -> dict[str, str]:
    return {"PATH": PATH_ENV, "LANG": "C.UTF-8", **(env or {})}


def _run(
    ns: str, argv: Sequence[str], env: dict[str, str] | None, timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*nsenter(ns), *argv], capture_output=True, text=True, input=input, env=_env(env), timeout=timeout
    )


def _call_in(ns: str, fn: Callable[[], T]) -> T:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return netns_thread_call(fd, fn)
    finally:
        os.close(fd)


def _ns_exists(ns: str) -> bool:
    return Path(f"/run/netns/{ns}").exists()


def _del_ns(ns: str) -> None:
    if _ns_exists(ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class Fabric:
    """The network the simulated hosts and the etcd members share: a namespace with a bridge."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(3)
        self.ns = f"clawpen-t-{self.tag}-fab"
        rnd = random.SystemRandom()
        self.prefix = f"10.{rnd.randrange(120, 200)}.{rnd.randrange(0, 256)}."
        self.gateway = self.addr(1)
        self.hosts: dict[str, SimHost] = {}
        self.etcd_addresses: list[str] = []  # the members' (set by EtcdCluster)
        try:
            ip("netns", "add", self.ns)
            ip("-n", self.ns, "link", "set", "lo", "up")
            ip("-n", self.ns, "link", "add", "br0", "type", "bridge")
            ip("-n", self.ns, "addr", "add", f"{self.gateway}/24", "dev", "br0")
            ip("-n", self.ns, "link", "set", "br0", "up")
        except BaseException:
            _del_ns(self.ns)
            raise

    def addr(self, last: int) -> str:
        return f"{self.prefix}{last}"

    def add_address(self, address: str) -> None:
        """One more address on the bridge (an etcd member's)."""
        ip("-n", self.ns, "addr", "add", f"{address}/24", "dev", "br0")

    def run(
        self, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return _run(self.ns, argv, env, timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread in the fabric's namespace: a server socket made there (bound to
        :attr:`gateway`, say) is reachable from every host that is not partitioned."""
        return _call_in(self.ns, fn)

    def host(self, name: str) -> SimHost:
        """A new simulated host ``name`` (a-z0-9, at most 10 characters) on this fabric."""
        if not NAME.fullmatch(name) or name in self.hosts or name == "fab":
            raise ValueError(
                f"bad or taken host name {name!r} (a-z0-9, 1-10 characters, starts with a letter)"
            )
        h = SimHost(self, name, self.addr(21 + len(self.hosts)))
        self.hosts[name] = h
        return h

    def close(self) -> None:
        for h in self.hosts.values():
            h.close()
        _del_ns(self.ns)


class SimHost:
    """A simulated host: a network namespace with a veth to the fabric's bridge."""

    def __init__(self, fabric: Fabric, name: str, address: str) -> None:
        self.fabric, self.name, self.address = fabric, name, address
        self.ns = f"clawpen-t-{fabric.tag}-{name}"
        self.partitioned = False
        self.popens: list[subprocess.Popen[str]] = []  # killed by close()
        self._uid_base = session_uid_base() + 4096 * (1 + len(fabric.hosts))  # a block per host
        try:
            ip("netns", "add", self.ns)
            ip("-n", self.ns, "link", "set", "lo", "up")
            fab, veth = fabric.ns, f"h-{name}"
            ip("-n", fab, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
            ip("-n", fab, "link", "set", veth, "master", "br0", "up")
            ip("-n", self.ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", self.ns, "link", "set", "eth0", "up")
            ip("-n", self.ns, "route", "add", "default", "via", fabric.gateway)
        except BaseException:
            _del_ns(self.ns)  # takes its veth pair along
            raise

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.ns}"

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*nsenter(self.ns), *argv]

    def run(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host's network namespace (not checked: look at returncode)."""
        return _run(self.ns, argv, env, timeout, input)

    def popen(
        self, argv: Sequence[str], env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[str]:
        """Start ``argv`` inside this host's network namespace (text mode). It is SIGKILLed by
        :meth:`close` if still running (a process would keep the namespace alive)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(argv), env=_env(env), text=True, **kw)
        self.popens.append(proc)
        return proc

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread of this process that joined the host's namespace: the sockets it
        makes (an etcd3gw client's connections) stay in the host's namespace."""
        return _call_in(self.ns, fn)

    def etcdctl(
        self, *args: str, endpoints: Sequence[str] | None = None, timeout: float = 2.0
    ) -> subprocess.CompletedProcess[str]:
        """``etcdctl ARGS`` (API v3) from this host against ``endpoints`` (default: every member
        of the fabric's cluster), giving up after ``timeout`` seconds."""
        eps = list(endpoints) if endpoints is not None else self.fabric_endpoints()
        argv = [
            ETCDCTL,
            f"--endpoints={','.join(eps)}",
            f"--dial-timeout={timeout}s",
            f"--command-timeout={timeout}s",
            *args,
        ]
        return self.run(argv, env={"ETCDCTL_API": "3"}, timeout=timeout + 10)

    def fabric_endpoints(self) -> list[str]:
        return [f"http://{a}:{CLIENT_PORT}" for a in self.fabric.etcd_addresses]

    def partition(self) -> None:
        """Cut this host off: an nftables table in ITS namespace drops everything but loopback."""
        done = self.run(["nft", "-f", "-"], input=PARTITION)
        if done.returncode != 0:
            raise RuntimeError(f"nft refused the partition table in {self.ns}: {done.stderr.strip()}")
        self.partitioned = True

    def heal(self) -> None:
        done = self.run(["nft", "delete", "table", "inet", PARTITION_TABLE])
        if done.returncode != 0:
            raise RuntimeError(
                f"nft could not remove the partition table in {self.ns}: {done.stderr.strip()}"
            )
        self.partitioned = False

    def connects(self, address: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from this host to ``address:port`` is accepted in time."""

        def attempt() -> bool:
            try:
                with socket.create_connection((address, port), timeout=timeout):
                    return True
            except OSError:
                return False

        return self.call(attempt)

    def loopback_works(self) -> bool:
        """A listener on this host's 127.0.0.1 accepts a connection (loopback is never cut)."""

        def attempt() -> bool:
            with socket.socket() as srv:
                srv.bind(("127.0.0.1", 0))
                srv.listen(1)
                try:
                    with socket.create_connection(srv.getsockname(), timeout=1):
                        return True
                except OSError:
                    return False

        return self.call(attempt)

    def nft_tables(self) -> str:
        return self.run(["nft", "list", "tables"]).stdout

    @contextlib.contextmanager
    def daemon(
        self, base: Path, uid_base: int | None = None, strict: bool = True, env: dict[str, str] | None = None
    ) -> Iterator[NetnsDaemon]:
        """A clawpen daemon "on" this host: state ``base/state``, a 0755 spec folder in /tmp, the
        daemon and every ``cli()`` command in this namespace, a uid range of the host's own
        (``uid_base``, default: a block of 4,096 per host above the session's base).

        After, the daemon is stopped (SIGCONT first: a test may have SIGSTOPped it), then what
        is left is removed: daemons, the bots' processes (their uids), the bots' cgroups (this
        state dir's scope). With ``strict`` a leftover fails a test that passed so far; a test
        that SIGKILLs a daemon and starts no other passes ``strict=False``."""
        spec_dir = Path(tempfile.mkdtemp(prefix=f"clawpen-{self.name}-", dir="/tmp"))
        spec_dir.chmod(0o755)
        base.mkdir(parents=True, exist_ok=True)
        uids = uid_base or self._uid_base
        d = NetnsDaemon(base / "state", spec_dir, self.ns, uids, cli_in_ns=True)
        d.env.update(env or {})
        failed = True  # the test's own error is the one to report, not the leftovers it causes
        try:
            d.start()
            yield d
            failed = False
        finally:
            for pid in daemons_of(d.home):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            d.shutdown()
            shutil.rmtree(spec_dir, ignore_errors=True)
            leaked = daemons_of(d.home)
            for pid in leaked:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            bots = [p.pid for p in of_uids(range(uids, uids + 4096)) if not p.zombie]
            kill_uids(range(uids, uids + 4096))
            kill_fences(d.home)
            cgroups = remove_cgroups(d.home)
            left = {"daemons": leaked, "bot processes": bots, "cgroups": cgroups}
            assert failed or not strict or not any(left.values()), f"host {self.name} left behind: {left}"

    def close(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
                proc.communicate(timeout=5)
        _del_ns(self.ns)


@dataclass
class Member:
    name: str
    address: str
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False  # by EtcdCluster.kill (until its restart)

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{PEER_PORT}"


@dataclass
class EtcdCluster:
    """``n`` real etcd members (Debian's etcd 3.4) in the fabric's namespace, short raft timers."""

    fabric: Fabric
    root: Path
    n: int = 3
    heartbeat_ms: int = 100
    election_ms: int = 1000
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            m = Member(f"m{i}", self.fabric.addr(11 + i), self.root / f"m{i}.data", self.root / f"m{i}.log")
            self.fabric.add_address(m.address)
            self.members.append(m)
        self.fabric.etcd_addresses = [m.address for m in self.members]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _argv(self, m: Member) -> list[str]:
        return [
            ETCD,
            f"--name={m.name}",
            f"--data-dir={m.data}",
            f"--listen-client-urls={m.client_url}",
            f"--advertise-client-urls={m.client_url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            "--initial-cluster=" + ",".join(f"{x.name}={x.peer_url}" for x in self.members),
            "--initial-cluster-state=new",  # a member with a data dir (a restart) ignores it
            f"--initial-cluster-token=clawpen-t-{self.fabric.tag}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    def start(self) -> None:
        for i in range(self.n):
            self.restart(i)

    def restart(self, i: int) -> None:
        """(Re)start member ``i`` on its data dir (after :meth:`kill`)."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            raise RuntimeError(f"etcd member {m.name} is running")
        m.killed = False
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(
                [*nsenter(self.fabric.ns), *self._argv(m)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_env(None),
                start_new_session=True,
            )

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (nsenter execs etcd: the pid is etcd's) and reap it."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(10)
        m.killed = True

    @staticmethod
    def _up(m: Member) -> bool:
        return m.proc is not None and m.proc.poll() is None

    def running(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if self._up(m)]

    def _etcdctl(self, endpoints: Sequence[str], *args: str) -> subprocess.CompletedProcess[str]:
        argv = [ETCDCTL, f"--endpoints={','.join(endpoints)}", "--command-timeout=1s", *args]
        return self.fabric.run(argv, env={"ETCDCTL_API": "3"}, timeout=10)

    def healthy(self, i: int) -> bool:
        return self._etcdctl([self.members[i].client_url], "endpoint", "health").returncode == 0

    def wait_healthy(self, timeout: float = 20) -> None:
        """Wait until every member not killed answers ``endpoint health`` (a linearizable read:
        the cluster has a leader and a quorum). A member that exited by itself fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            exited = [m.name for m in self.members if not m.killed and not self._up(m)]
            if exited:
                raise AssertionError(f"etcd members {exited} are not running\n{self.logs()}")
            if all(self.healthy(i) for i in self.running()):
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"etcd not healthy after {timeout}s\n{self.logs()}")
            time.sleep(0.1)

    def leader(self) -> int | None:
        """The index of the current raft leader, by ``endpoint status`` of the running members
        (None: no member names one)."""
        eps = [self.members[i].client_url for i in self.running()]
        done = self._etcdctl(eps, "endpoint", "status", "-w", "json")
        try:
            rows = json.loads(done.stdout)
        except ValueError:
            return None
        ids = {row["Endpoint"]: row["Status"]["header"]["member_id"] for row in rows}
        leaders = {row["Status"]["leader"] for row in rows}
        for i, m in enumerate(self.members):
            if len(leaders) == 1 and ids.get(m.client_url) in leaders:
                return i
        return None

    def logs(self, tail: int = 15) -> str:
        out = []
        for m in self.members:
            with contextlib.suppress(OSError):
                lines = m.log.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {m.name} ({m.address}) {m.log}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        """Kill every member and remove the data dirs (the logs stay, for failure messages)."""
        for i in range(self.n):
            with contextlib.suppress(Exception):
                self.kill(i)
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:  # kill() timed out
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGKILL)
            shutil.rmtree(m.data, ignore_errors=True)


@dataclass
class Cluster:
    fabric: Fabric
    etcd: EtcdCluster
    hosts: dict[str, SimHost]


@contextlib.contextmanager
def cluster(tmp: Path, hosts: Sequence[str] = ("a", "b"), members: int = 3) -> Iterator[Cluster]:
    """A fabric, an etcd cluster of ``members`` (healthy when this yields) and the ``hosts``;
    all of it is removed afterwards, also when the test fails midway."""
    fabric = Fabric()
    etcd: EtcdCluster | None = None
    try:
        etcd = EtcdCluster(fabric, tmp / "etcd", n=members)
        etcd.start()
        made = {name: fabric.host(name) for name in hosts}
        etcd.wait_healthy()
        yield Cluster(fabric, etcd, made)
    finally:
        if etcd is not None:
            etcd.stop()
        fabric.close()


def bot_cgroups(home: Path) -> list[Path]:
    """The bot cgroups of the daemon on state dir ``home`` (its scope), in every hierarchy."""
    scope = cgroup_scope(home)
    return [*CGROUP_ROOT.glob(f"clawpen/{scope}*"), *CGROUP_ROOT.glob(f"*/clawpen/{scope}*")]


def remove_cgroups(home: Path) -> list[str]:
    """rmdir what is left of :func:`bot_cgroups` (children first); returns what was there."""
    found = bot_cgroups(home)
    for top in found:
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
    return [str(p) for p in found]


def leftovers(tag: str) -> list[str]:
    """Namespaces of fabric ``tag`` still there (after :func:`cluster`: none)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"clawpen-t-{tag}-")]


def wait_dead(pids: Sequence[int], timeout: float = 10) -> bool:
    return bool(wait_for(lambda: not any(alive(p) for p in pids), timeout, interval=0.05))
