#!/usr/bin/env python3
"""Egress gateway under hostile load (issue 13): can one bot starve another bot's network?

Run from the repository as root::

    .venv/bin/python bench/gateway_attack.py [--quick] [--seconds N] [--attacks a,b] [--json FILE]

Network namespaces this script creates (and removes), nothing else on the host is touched::

    victim ns  eth0 10.213.0.2/30 --veth-- cb..v 10.213.0.1/30 \\  gateway ns (clawpen's nft ruleset,
    attack ns  eth0 10.213.0.6/30 --veth-- cb..a 10.213.0.5/30 /   the gateway's listeners)
    upstream ns u.. 45.79.0.1/24 --veth-- i.. 45.79.0.2/24  inet ns: 45.79.0.53 DNS (bench.test),
                                                            45.79.0.10 HTTPS origin (:443)

Processes, so no two share an interpreter lock: this orchestrator; the "internet" (the origin of
``gateway_bench.serve_origin`` and a fake DNS server); the gateway (``clawpen.net.gateway.Gateway``
with its ``ConnLog`` and DNS server, bots ``victim`` and ``attacker``, both allowed
``bench.test:443``); the victim; the attacker.

The victim loops for N seconds (default 15, ``--quick`` 4): an HTTPS GET with a new TLS handshake
through the proxy (CONNECT), the same transparently (to 45.79.0.10:443, redirected by nftables),
and an A query for ``bench.test`` to the gateway's DNS. First a quiet run, then one run per attack,
the attacker starting 1 s before the victim and stopping after it:

* ``slow-connect`` many connections to the proxy sending ``CONNECT bench.test:443 HTTP/1.1\\r\\n``
  and then nothing (reopened when the gateway closes them);
* ``slow-tls``     many connections to :443 (transparent) sending the first 6 bytes of a TLS record;
* ``slow-hello``   many complete ``CONNECT bench.test:443`` heads, and after the ``200`` nothing
  (the ClientHello never comes);
* ``idle-cap``     connections up to the per-bot cap (``MAX_CONNECTIONS``), proxy and transparent,
  sending nothing;
* ``dns-flood``    UDP queries for never-repeating denied names, as fast as one process can send;
* ``conn-flood``   connect and reset at once, 64 in flight, proxy and transparent.

A control run first (``cpu-only``: the attacker only busy-loops) shows what CPU contention alone
costs the victim on a small machine; it is reported, not judged.

Reported per attack: the victim's p50/p99 per kind (a failed attempt counts as the timeout) and
p99 / quiet p99 (goal <= 2), victim failures, the attacker's rows and row bytes added to the
connection-log database (and the database files' growth), the gateway process's fds and
threads before / peak / after. Exits 0 when every attack meets the goal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import resource
import secrets
import selectors
import shutil
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gateway_bench as gb  # also puts src/ on sys.path

THIS = str(Path(__file__).resolve())
VICTIM, VICTIM_GW = "10.213.0.2", "10.213.0.1"
ATTACKER, ATTACKER_GW = "10.213.0.6", "10.213.0.5"
UP_ADDR, INET_ADDR, DNS_ADDR, WWW_ADDR = "45.79.0.1", "45.79.0.2", "45.79.0.53", "45.79.0.10"
NAME, EGRESS = "bench.test", ("bench.test:443",)
PROXY, DNS_PORT = 3128, 53  # the gateway's defaults (clawpen.net.types)
ATTACKS = ("slow-connect", "slow-tls", "slow-hello", "idle-cap", "dns-flood", "conn-flood")
CONTROL = "cpu-only"  # the attacker busy-loops, no network: what CPU contention alone costs
KINDS = ("proxy", "transparent", "dns")
RAMP = 1.0  # seconds the attacker runs before the victim starts
RATE = 15.0  # victim rounds per second: 30 new connections and 15 queries a second
GOAL = 2.0


# ---------------------------------------------------------------- children
def serve_inet(cert: str, key: str) -> None:
    """The fake internet: DNS for bench.test at DNS_ADDR, the HTTPS origin on every address."""
    import dns.message
    import dns.rcode
    import dns.rrset

    def fake_dns() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((DNS_ADDR, 53))
        while True:
            data, addr = s.recvfrom(4096)
            with contextlib.suppress(Exception):
                q = dns.message.from_wire(data)
                r = dns.message.make_response(q)
                if q.question[0].name.to_text(omit_final_dot=True).lower() == NAME:
                    r.answer.append(dns.rrset.from_text(NAME + ".", 300, "IN", "A", WWW_ADDR))
                else:
                    r.set_rcode(dns.rcode.NXDOMAIN)
                s.sendto(r.to_wire(), addr)

    threading.Thread(target=fake_dns, daemon=True).start()
    gb.serve_origin(443, 8080, cert, key, 1, host="0.0.0.0")


def serve_gateway(gw_ns: str, up_ns: str, state: str) -> None:
    """The gateway with two bots; writes ``state/ready`` once listening, stops at stdin EOF."""
    from clawpen.net.connlog import ConnLog
    from clawpen.net.gateway import Gateway
    from clawpen.net.resolve import Resolver
    from clawpen.net.types import BotLink

    gw_fd = os.open(f"/run/netns/{gw_ns}", os.O_RDONLY | os.O_CLOEXEC)
    up_fd = os.open(f"/run/netns/{up_ns}", os.O_RDONLY | os.O_CLOEXEC)
    links = {
        VICTIM: BotLink("victim", 0, VICTIM, VICTIM_GW, EGRESS),
        ATTACKER: BotLink("attacker", 0, ATTACKER, ATTACKER_GW, EGRESS),
    }

    class Registry:
        def by_source(self, addr: str) -> BotLink | None:
            return links.get(addr)

    log = ConnLog(Path(state) / "connlog.db")
    log.start()
    gw = Gateway(Registry(), log, Resolver([DNS_ADDR]), netns_fd=gw_fd, upstream_netns_fd=up_fd)
    gw.start()
    (Path(state) / "ready").write_text(str(os.getpid()))
    sys.stdin.read()  # the orchestrator closes stdin to stop us
    gw.stop()
    log.close()


def victim(cert: str, seconds: float, timeout: float, rate: float) -> dict[str, Any]:
    """Rounds of (proxy fetch, transparent fetch, DNS query) started ``rate`` times a second."""
    import dns.message
    import dns.query
    import dns.rcode

    socket.setdefaulttimeout(timeout)  # every socket operation of https_once is bounded
    ctx = ssl.create_default_context(cafile=cert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    def dns_once() -> None:
        r = dns.query.udp(dns.message.make_query(NAME, "A"), VICTIM_GW, port=DNS_PORT, timeout=timeout)
        if r.rcode() != dns.rcode.NOERROR or not r.answer:
            raise OSError(f"dns answered {dns.rcode.to_text(r.rcode())} with {len(r.answer)} records")

    ops = {
        "proxy": lambda: gb.https_once(ctx, 443, PROXY, NAME, host=VICTIM_GW),
        "transparent": lambda: gb.https_once(ctx, 443, None, NAME, host=WWW_ADDR),
        "dns": dns_once,
    }
    out: dict[str, Any] = {k: {"ms": [], "fail": 0, "errors": {}} for k in ops}
    start = time.monotonic()
    deadline, due = start + seconds, start
    while time.monotonic() < deadline:
        time.sleep(max(0.0, due - time.monotonic()))
        due = max(due + 1 / rate, time.monotonic())  # a late round is not made up for by a burst
        for kind, op in ops.items():
            t0 = time.perf_counter()
            try:
                op()
                out[kind]["ms"].append((time.perf_counter() - t0) * 1000)
            except Exception as err:
                out[kind]["ms"].append(max((time.perf_counter() - t0) * 1000, timeout * 1000))
                out[kind]["fail"] += 1
                msg = f"{type(err).__name__}: {err}"[:80]
                out[kind]["errors"][msg] = out[kind]["errors"].get(msg, 0) + 1
    return out


def attack_tcp(
    addrs: list[tuple[str, int]],
    payload: bytes,
    count: int,
    seconds: float,
    reset_at_once: bool,
    hold_200: bool = False,
) -> dict[str, int]:
    """Keep ``count`` connections open (or, ``reset_at_once``, in flight), reopening any the
    gateway closes; at most 2,000 new ones per 10 ms tick and 2 M in all. With ``hold_200`` a
    connection answered ``200`` is kept open (and silent) until the gateway closes it."""
    sel = selectors.DefaultSelector()
    names = ("opened", "connected", "connect_errors", "closed_by_gateway", "replies", "held_200", "peak")
    st = dict.fromkeys(names, 0)
    deadline = time.monotonic() + seconds

    def drop(s: socket.socket, rst: bool = False) -> None:
        sel.unregister(s)
        if rst:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    try:
        while time.monotonic() < deadline and st["opened"] < 2_000_000:
            budget = 2000
            while len(sel.get_map()) < count and budget > 0:
                new = socket.socket()
                new.setblocking(False)
                err = new.connect_ex(addrs[st["opened"] % len(addrs)])
                if err not in (0, errno.EINPROGRESS):
                    new.close()
                    st["connect_errors"] += 1
                    what = f"connect_{errno.errorcode.get(err, err)}"
                    st[what] = st.get(what, 0) + 1
                    break
                sel.register(new, selectors.EVENT_WRITE, "connecting")
                st["opened"] += 1
                budget -= 1
            st["peak"] = max(st["peak"], len(sel.get_map()))
            for key, _ in sel.select(timeout=0.01):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if key.data == "connecting":
                    if err := s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        st["connect_errors"] += 1
                        what = f"connect_{errno.errorcode.get(err, err)}"
                        st[what] = st.get(what, 0) + 1
                        drop(s)
                        continue
                    st["connected"] += 1
                    if reset_at_once:
                        drop(s, rst=True)
                        continue
                    try:
                        if payload:
                            s.send(payload)
                    except OSError:
                        st["closed_by_gateway"] += 1
                        drop(s)
                        continue
                    sel.modify(s, selectors.EVENT_READ, "open")
                    continue
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if hold_200 and key.data == "open" and data.startswith(b"HTTP/1.1 200"):
                    st["held_200"] += 1
                    sel.modify(s, selectors.EVENT_READ, "held")
                    continue
                st["replies" if data else "closed_by_gateway"] += 1
                drop(s)
    finally:
        for key in list(sel.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            drop(key.fileobj)
        sel.close()
    return st


def attack_dns(seconds: float) -> dict[str, int]:
    """Never-repeating denied names from 4 UDP sockets, as fast as possible (at most 20 M)."""
    socks = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((ATTACKER_GW, DNS_PORT))
        socks.append(s)
    tail = b"\x05flood\x06denied\x04test\x00\x00\x01\x00\x01"
    st = {"sent": 0, "answered": 0, "send_full": 0, "errors": 0}
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < deadline and n < 20_000_000:
            for _ in range(256):
                head = struct.pack("!HHHHHH", n & 0xFFFF, 0x0100, 1, 0, 0, 0)
                try:
                    socks[n % 4].send(head + b"\x0c" + b"%012x" % n + tail)
                    st["sent"] += 1
                except BlockingIOError:
                    st["send_full"] += 1
                    break
                except OSError:
                    st["errors"] += 1
                n += 1
            for s in socks:
                for _ in range(512):
                    try:
                        s.recv(4096)
                        st["answered"] += 1
                    except OSError:
                        break
    finally:
        for s in socks:
            s.close()
    return st


def attacker(kind: str, seconds: float, cap: int, heads: int) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(cap + 256, heads + 256, 4096)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    proxy, transparent = (ATTACKER_GW, PROXY), (WWW_ADDR, 443)
    if kind == "slow-connect":
        return attack_tcp([proxy], f"CONNECT {NAME}:443 HTTP/1.1\r\n".encode(), heads, seconds, False)
    if kind == "slow-hello":
        head = f"CONNECT {NAME}:443 HTTP/1.1\r\nHost: {NAME}:443\r\n\r\n".encode()
        return attack_tcp([proxy], head, heads, seconds, False, hold_200=True)
    if kind == "slow-tls":
        return attack_tcp([transparent], b"\x16\x03\x01\x02\x00\x01", heads, seconds, False)
    if kind == "idle-cap":
        return attack_tcp([proxy, transparent], b"", cap, seconds, False)
    if kind == "conn-flood":
        return attack_tcp([proxy, transparent], b"", 64, seconds, True)
    if kind == "dns-flood":
        return attack_dns(seconds)
    deadline, spins = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        spins += 1
    return {"spins": spins}


# ---------------------------------------------------------------- orchestrator
class Lab:
    """The namespaces, the child processes, and what the gateway process looks like."""

    def __init__(self, tmp: Path, kernel_limits: bool = True) -> None:
        self.kernel_limits = kernel_limits
        tag = secrets.token_hex(3)
        self.tag = tag
        self.ns = {k: f"clawpen-ga-{tag}-{k}" for k in ("victim", "attack", "gw", "up", "inet")}
        self.tmp = tmp
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.gateway: subprocess.Popen[str] | None = None
        self.cert, self.key = (str(p) for p in gb.make_cert(tmp))
        self.db = tmp / "connlog.db"

    def ip(self, *args: str, ns: str | None = None) -> None:
        argv = ["ip", *(["-n", self.ns[ns]] if ns else []), *args]
        subprocess.run(argv, check=True, capture_output=True, text=True)

    def veth(self, a: str, a_ns: str, b: str, b_ns: str) -> None:
        na, nb = self.ns[a_ns], self.ns[b_ns]
        self.ip("link", "add", a, "netns", na, "type", "veth", "peer", "name", b, "netns", nb)

    def build(self) -> None:
        from clawpen.net import nft

        for key, name in self.ns.items():
            self.ip("netns", "add", name)
            self.made.append(name)
            self.ip("link", "set", "lo", "up", ns=key)
        t = self.tag
        for bot, addr, gw_addr, end in (
            ("victim", VICTIM, VICTIM_GW, "v"),
            ("attack", ATTACKER, ATTACKER_GW, "a"),
        ):
            self.veth(f"cb{t}{end}", "gw", "eth0", bot)
            self.ip("addr", "add", f"{gw_addr}/30", "dev", f"cb{t}{end}", ns="gw")
            self.ip("link", "set", f"cb{t}{end}", "up", ns="gw")
            self.ip("addr", "add", f"{addr}/30", "dev", "eth0", ns=bot)
            self.ip("link", "set", "eth0", "up", ns=bot)
            self.ip("route", "add", "default", "via", gw_addr, ns=bot)
        self.veth(f"u{t}", "up", f"i{t}", "inet")
        self.ip("addr", "add", f"{UP_ADDR}/24", "dev", f"u{t}", ns="up")
        self.ip("link", "set", f"u{t}", "up", ns="up")
        self.ip("route", "add", "default", "via", INET_ADDR, ns="up")
        for addr in (INET_ADDR, DNS_ADDR, WWW_ADDR):
            self.ip("addr", "add", f"{addr}/24", "dev", f"i{t}", ns="inet")
        self.ip("link", "set", f"i{t}", "up", ns="inet")
        fd = os.open(f"/run/netns/{self.ns['gw']}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            nft.apply(fd, nft.ruleset())
            if self.kernel_limits:
                from clawpen.net import nftlimit

                nft.apply(fd, nftlimit.ruleset())
        finally:
            os.close(fd)
        self.procs.append(self.spawn("inet", "inet", self.cert, self.key))
        gw = subprocess.Popen(
            [sys.executable, THIS, "--serve", "gateway", self.ns["gw"], self.ns["up"], str(self.tmp)],
            stdin=subprocess.PIPE,
            text=True,
        )
        self.gateway = gw
        self.procs.append(gw)
        deadline = time.monotonic() + 15
        while not (self.tmp / "ready").exists():
            if gw.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the gateway did not start")
            time.sleep(0.05)

    def spawn(self, ns: str, *args: str) -> subprocess.Popen[str]:
        argv = ["ip", "netns", "exec", self.ns[ns], sys.executable, THIS, "--serve", *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        lines = out.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"a bench child failed (exit {proc.returncode}): {err.strip()[-800:]}")
        parsed: dict[str, Any] = json.loads(lines[-1])
        return parsed

    def gw_cpu(self) -> float:
        """CPU seconds (user + system) the gateway process has used so far."""
        assert self.gateway is not None
        try:
            fields = Path(f"/proc/{self.gateway.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def gw_proc(self) -> tuple[int, int]:
        """(open fds, threads) of the gateway process."""
        assert self.gateway is not None
        pid = self.gateway.pid
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return -1, -1
        threads = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("Threads:")), -1)
        return fds, threads

    def log_added(self, after_id: int, bot: str) -> dict[str, int]:
        """Rows of ``bot`` after ``after_id``, their content bytes and, if the log aggregates
        (a ``count`` column), the connections / queries they stand for."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as db:
            cols = [r[1] for r in db.execute("PRAGMA table_info(conn)")]
            size = " + ".join(f"COALESCE(LENGTH({c}), 0)" for c in cols)
            events = "SUM(count)" if "count" in cols else "COUNT(*)"
            sql = f"SELECT COUNT(*), COALESCE(SUM({size}), 0), COALESCE({events}, 0) FROM conn"
            sql += " WHERE bot = ? AND id > ?"
            rows, nbytes, nevents = db.execute(sql, (bot, after_id)).fetchone()
            last = db.execute("SELECT COALESCE(MAX(id), 0) FROM conn").fetchone()[0]
        return {"rows": int(rows), "row_bytes": int(nbytes), "events": int(nevents), "last_id": int(last)}

    def kernel_drops(self) -> dict[str, int]:
        """Packets the per-source kernel limits dropped so far ({} when they are off)."""
        if not self.kernel_limits:
            return {}
        from clawpen.net import nftlimit

        fd = os.open(f"/run/netns/{self.ns['gw']}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return nftlimit.drops(fd)
        finally:
            os.close(fd)

    def db_size(self) -> int:
        return sum(p.stat().st_size for p in self.tmp.glob("connlog.db*") if p.is_file())

    def close(self) -> None:
        if self.gateway is not None and self.gateway.stdin is not None:
            with contextlib.suppress(OSError):
                self.gateway.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.gateway.wait(timeout=10)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def machine_cpu() -> dict[str, float]:
    """Seconds of all CPUs so far: busy (user, system, softirq, ...) and of those, softirq
    (where the kernel receives, filters and drops packets)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    return {"busy": (sum(ticks[:8]) - idle) / hz, "softirq": ticks[6] / hz}


def own_cpu() -> float:
    """CPU seconds of this process (a bench child reports its own)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return round(r.ru_utime + r.ru_stime, 3)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else float("nan")


def run_phase(lab: Lab, name: str, args: argparse.Namespace, cap: int) -> dict[str, Any]:
    fds0, threads0 = lab.gw_proc()
    drops0 = lab.kernel_drops()
    gw_cpu0, machine0, t0 = lab.gw_cpu(), machine_cpu(), time.monotonic()
    mark, size0 = lab.log_added(0, "")["last_id"], lab.db_size()
    peak = [fds0, threads0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            fds, threads = lab.gw_proc()
            peak[0], peak[1] = max(peak[0], fds), max(peak[1], threads)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    att = None
    if name != "quiet":
        att = lab.spawn("attack", "attack", name, str(RAMP + args.seconds + 0.5), str(cap), str(args.heads))
        time.sleep(RAMP)
    vic = lab.spawn("victim", "victim", lab.cert, str(args.seconds), str(args.timeout), str(args.rate))
    vres = lab.result(vic, args.seconds + 20 * args.timeout)
    ares = lab.result(att, args.seconds + 60) if att is not None else {}
    gw_cpu1, machine1, wall = lab.gw_cpu(), machine_cpu(), time.monotonic() - t0
    cpu = {
        "wall_s": round(wall, 2),
        "gateway_s": round(gw_cpu1 - gw_cpu0, 2),
        "machine_busy_s": round(machine1["busy"] - machine0["busy"], 2),
        "softirq_s": round(machine1["softirq"] - machine0["softirq"], 2),
        "victim_s": vres.pop("cpu_s", None),
        "attacker_s": ares.pop("cpu_s", None),
    }
    # settle: the gateway lets go of the attack's connections, the log writer catches up
    deadline, last = time.monotonic() + 20, -1
    while time.monotonic() < deadline:
        rows = lab.log_added(mark, "attacker")["rows"]
        if rows == last and lab.gw_proc()[0] <= fds0 + 4:
            break
        last = rows
        time.sleep(0.5)
    stop.set()
    sampler.join()
    fds1, threads1 = lab.gw_proc()
    drops = {k: v - drops0.get(k, 0) for k, v in lab.kernel_drops().items()}
    log = lab.log_added(mark, "attacker")
    log["db_growth"] = lab.db_size() - size0  # all bots (the victim's rows too), database + WAL
    window = RAMP + args.seconds + 0.5 if att is not None else args.seconds
    log["mb_per_day"] = round(log["row_bytes"] / window * 86400 / 1e6, 1)  # at this rate, attacker
    for v in vres.values():
        v.update(n=len(v["ms"]), p50_ms=pct(v["ms"], 0.5), p99_ms=pct(v["ms"], 0.99))
        v["errors"] = dict(sorted(v["errors"].items(), key=lambda kv: -kv[1])[:3])
        del v["ms"]
    return {
        "victim": vres,
        "attacker": ares,
        "log": log,
        "gateway_fds": {"before": fds0, "peak": peak[0], "after": fds1},
        "gateway_threads": {"before": threads0, "peak": peak[1], "after": threads1},
        "kernel_drops": drops,
        "cpu": cpu,
    }


def report(res: dict[str, Any]) -> bool:
    quiet = res["quiet"]["victim"]
    ok_all = True
    print(f"victim latency ({res['seconds']:g} s per run; failed attempt = timeout {res['timeout']:g} s)")
    print(
        f"  {'run':<13}{'victim':<12}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'p99/quiet':>11}{'fail':>6}  goal"
    )
    for phase, r in res.items():
        if not isinstance(r, dict) or "victim" not in r:
            continue
        ok = True
        for kind in KINDS:
            v = r["victim"][kind]
            ratio = v["p99_ms"] / quiet[kind]["p99_ms"]
            v["p99_ratio"] = ratio
            good = ratio <= GOAL and v["fail"] == 0
            ok = ok and good
            mark = {"quiet": "", CONTROL: "(control)"}.get(phase, "ok" if good else "MISSED")
            print(
                f"  {phase:<13}{kind:<12}{v['n']:>6}{v['p50_ms']:>10.2f}{v['p99_ms']:>10.2f}"
                f"{ratio:>10.2f}x{v['fail']:>6}  {mark}"
            )
        r["goal_met"] = ok
        ok_all = ok_all and (ok or phase == CONTROL)
    print("attacker and gateway during each run")
    print(
        f"  {'run':<13}{'attack':>22}{'log rows':>10}{'for events':>11}{'row bytes':>11}{'MB/day':>8}"
        f"{'fds before/peak/after':>23}{'threads b/p/a':>16}  kernel drops (syn/open/dns)"
    )
    for phase, r in res.items():
        if not isinstance(r, dict) or "victim" not in r:
            continue
        a = r["attacker"]
        what = (
            f"{a['sent']} q, {a['answered']} ans"
            if "sent" in a
            else (f"{a['opened']} conn, peak {a['peak']}" if "opened" in a else "-")
        )
        lg = r["log"]
        kd = r.get("kernel_drops") or {}
        drops = "/".join(str(kd.get(k, 0)) for k in ("syn_rate", "open", "dns_rate")) if kd else "off"
        fds, threads = (
            "/".join(str(r[k][x]) for x in ("before", "peak", "after"))
            for k in ("gateway_fds", "gateway_threads")
        )
        print(
            f"  {phase:<13}{what:>22}{lg['rows']:>10}{lg['events']:>11}{lg['row_bytes']:>11}"
            f"{lg['mb_per_day']:>8}{fds:>23}{threads:>16}  {drops}"
        )
    print("CPU seconds during each run (2 cores: at most 2 x wall)")
    cols = ("wall", 7), ("machine busy", 14), ("softirq", 9), ("gateway", 9), ("attacker", 10), ("victim", 8)
    print(f"  {'run':<13}" + "".join(f"{name:>{width}}" for name, width in cols))
    for phase, r in res.items():
        if not isinstance(r, dict) or "cpu" not in r:
            continue
        c = r["cpu"]
        print(
            f"  {phase:<13}{c['wall_s']:>7.1f}{c['machine_busy_s']:>14.1f}{c['softirq_s']:>9.1f}"
            f"{c['gateway_s']:>9.1f}{c['attacker_s'] or 0:>10.1f}{c['victim_s'] or 0:>8.1f}"
        )
    print(f"goal (victim p99 <= {GOAL:g}x quiet, no failures, every attack): {'PASS' if ok_all else 'FAIL'}")
    return ok_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="4 s per run instead of 15")
    ap.add_argument("--seconds", type=float, help="seconds per run (default 15, --quick 4)")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma list of {', '.join(ATTACKS)}")
    ap.add_argument("--heads", type=int, default=256, help="slow heads held open (default 256)")
    ap.add_argument("--cap", type=int, help="idle connections (default: the gateway's MAX_CONNECTIONS)")
    ap.add_argument("--timeout", type=float, default=5.0, help="victim timeout per step (default 5 s)")
    ap.add_argument("--rate", type=float, default=RATE, help=f"victim rounds per second (default {RATE:g})")
    ap.add_argument("--no-control", dest="control", action="store_false", help=f"skip the {CONTROL} run")
    ap.add_argument(
        "--no-kernel-limits",
        dest="kernel_limits",
        action="store_false",
        help="without the per-source nftables limits of clawpen.net.nftlimit (the before figure)",
    )
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        kind, *rest = args.serve
        if kind == "inet":
            serve_inet(rest[0], rest[1])
        elif kind == "gateway":
            serve_gateway(rest[0], rest[1], rest[2])
        elif kind == "victim":
            out: dict[str, Any] = victim(rest[0], float(rest[1]), float(rest[2]), float(rest[3]))
            print(json.dumps({**out, "cpu_s": own_cpu()}))
        else:
            out = attacker(rest[0], float(rest[1]), int(rest[2]), int(rest[3]))
            print(json.dumps({**out, "cpu_s": own_cpu()}))
        return 0
    attacks = [a for a in args.attacks.split(",") if a]
    if unknown := [a for a in attacks if a not in ATTACKS]:
        ap.error(f"unknown attack {', '.join(unknown)} (choose from {', '.join(ATTACKS)})")
    if args.seconds is None:
        args.seconds = 4.0 if args.quick else 15.0
    if not 1 <= args.seconds <= 600 or not 1 <= args.heads <= 20000 or not 0.1 <= args.rate <= 200:
        ap.error("--seconds must be 1..600, --heads 1..20000, --rate 0.1..200")
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
        print("needs root, iproute2 and nftables (it builds its own network namespaces)", file=sys.stderr)
        return 2
    from clawpen.net import gateway

    cap = args.cap or int(getattr(gateway, "MAX_CONNECTIONS", 1024))
    tmp = Path(tempfile.mkdtemp(prefix="clawpen-gwattack-"))
    lab = Lab(tmp, kernel_limits=args.kernel_limits)
    try:
        lab.build()
        warm = lab.result(lab.spawn("victim", "victim", lab.cert, "1", str(args.timeout), str(args.rate)), 60)
        warm.pop("cpu_s", None)
        if broken := {k: v["errors"] for k, v in warm.items() if v["fail"] == len(v["ms"])}:
            print(f"the victim cannot reach anything before any attack: {broken}", file=sys.stderr)
            return 2
        res: dict[str, Any] = {
            "seconds": args.seconds,
            "timeout": args.timeout,
            "cap": cap,
            "heads": args.heads,
            "kernel_limits": args.kernel_limits,
        }
        for phase in ["quiet", *([CONTROL] if args.control else []), *attacks]:
            print(f"... {phase}", file=sys.stderr, flush=True)
            res[phase] = run_phase(lab, phase, args, cap)
        ok = report(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return 0 if ok else 1
    finally:
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
