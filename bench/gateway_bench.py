#!/usr/bin/env python3
"""Egress gateway benchmarks: added latency of a new HTTPS request, CONNECT tunnel throughput.

Run from the repository as root (the script re-runs itself in a private network namespace,
``unshare -n``, so its loopback and port 443 are its own)::

    .venv/bin/python bench/gateway_bench.py [--quick] [--json out.json]

Four processes, so no two share an interpreter lock: this client, the origin servers, the
clawpen gateway (``clawpen.net.gateway.Gateway`` with its connection log and resolver, policy
``bench.test:PORT`` allowlisted with ``allow_private = ["127.0.0.1/32"]``, the name resolved by a
fake DNS server on loopback and then cached), and tinyproxy (Debian's ``apt-get install
tinyproxy``, config in a temp dir; the system service is not used). The client sends its
requests back to back, so the gateway's per-bot rate of new connections is raised here (the
quotas are measured by bench/gateway_attack.py).

1. ``https``  a small HTTPS request with a new TLS 1.3 handshake each time (connect, [CONNECT],
   handshake, GET, read the reply, close), direct vs through the gateway (CONNECT; the gateway
   checks the ClientHello's SNI) vs through tinyproxy, interleaved round-robin. Target (issue
   22): the gateway's added p50 (gateway p50 - direct p50) <= tinyproxy's in the same run; the
   ratio is printed, and each proxy's CPU time per connection over the rounds (from
   /proc/PID/stat: each process served only its own connections).
2. ``tunnel`` a CONNECT tunnel carrying a 1 GiB download (256 MiB with ``--quick``) read with
   1 MiB ``recv_into``: direct vs gateway vs tinyproxy, MiB/s, best of 3 each. Targets: gateway
   >= tinyproxy, aim >= 50 % of direct.

Exits 0 when every target is met, 1 when one is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise SystemExit(f"port {port} did not open")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_cert(directory: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from selfsigned import self_signed

    return self_signed(directory, dns=["bench.test"])


# ---------------------------------------------------------------- child processes
def serve_origin(
    tls_port: int, bulk_port: int, cert: str, key: str, size: int, host: str = "127.0.0.1"
) -> None:
    """TLS: one tiny reply per connection. Bulk: ``size`` bytes then close. Both on ``host``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def tls_conn(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as t:
            t.recv(4096)
            t.sendall(REPLY)

    def bulk_conn(conn: socket.socket) -> None:
        block = memoryview(b"x" * (1 << 20))
        left = size
        with contextlib.suppress(OSError), conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            while left > 0:
                n = conn.send(block[: min(left, len(block))])
                left -= n

    def loop(port: int, handler: object) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(512)
        while True:
            conn, _ = ls.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, args=(bulk_port, bulk_conn), daemon=True).start()
    loop(tls_port, tls_conn)


def serve_gateway(proxy_port: int, dns_port: int, tls_port: int, bulk_port: int, state: str) -> None:
    import dns.message
    import dns.rrset

    from clawpen.net.connlog import ConnLog
    from clawpen.net.gateway import Gateway
    from clawpen.net.resolve import Resolver
    from clawpen.net.types import BotLink
    from clawpen.spec.quotas import NetLimits

    def fake_dns() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", dns_port))
        while True:
            data, addr = s.recvfrom(4096)
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text("bench.test.", 300, "IN", "A", "127.0.0.1"))
            s.sendto(r.to_wire(), addr)

    threading.Thread(target=fake_dns, daemon=True).start()
    link = BotLink(
        "bench",
        0,
        "127.0.0.1",
        "127.0.0.1",
        (f"bench.test:{tls_port}", f"bench.test:{bulk_port}"),
        ("127.0.0.1/32",),
        # back-to-back requests: the per-bot quota is not what is measured here
        NetLimits(connections_per_s=1e6, connection_burst=1_000_000),
    )

    class Registry:
        def by_source(self, addr: str) -> BotLink | None:
            return link if addr == "127.0.0.1" else None

    log = ConnLog(Path(state) / "connlog.db")
    log.start()
    gw = Gateway(
        Registry(),
        log,
        Resolver([f"127.0.0.1:{dns_port}"]),
        host="127.0.0.1",
        proxy_port=proxy_port,
        transparent_port=0,
        dns_port=None,
    )
    gw.start()
    threading.Event().wait()


# ---------------------------------------------------------------- client side
def https_once(
    ctx: ssl.SSLContext, port: int, proxy: int | None, target: str, host: str = "127.0.0.1"
) -> float:
    """One small HTTPS GET with a new handshake to ``host`` (the proxy's or the origin's), in ms."""
    t0 = time.perf_counter()
    s = socket.create_connection((host, proxy or port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if proxy:
        s.sendall(f"CONNECT {target}:{port} HTTP/1.1\r\nHost: {target}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("proxy closed")
            head += chunk
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise OSError(f"proxy said {head[:60]!r}")
    with ctx.wrap_socket(s, server_hostname="bench.test") as t:
        t.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
        got = b""
        while len(got) < len(REPLY):
            chunk = t.recv(4096)
            if not chunk:
                break
            got += chunk
    if not got.endswith(b"hello"):
        raise OSError("short reply")
    return (time.perf_counter() - t0) * 1000.0


def tunnel_once(port: int, proxy: int | None, target: str, size: int) -> float:
    s = socket.create_connection(("127.0.0.1", proxy or port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    t0 = time.perf_counter()
    if proxy:
        s.sendall(f"CONNECT {target}:{port} HTTP/1.1\r\nHost: {target}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)  # byte by byte: nothing of the tunnel is read here
    buf = bytearray(1 << 20)
    got = 0
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - t0
    s.close()
    if got != size:
        raise OSError(f"tunnel moved {got} of {size} bytes")
    return size / (1 << 20) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--rounds", type=int, help="https rounds (default 600, 200 with --quick)")
    ap.add_argument("--no-tunnel", action="store_true", help="the https latency part only")
    ap.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        kind, *rest = args.serve
        if kind == "origin":
            serve_origin(int(rest[0]), int(rest[1]), rest[2], rest[3], int(rest[4]))
        else:
            serve_gateway(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]), rest[4])
        return 0
    if not args.in_netns:
        if os.geteuid() != 0 or not shutil.which("unshare"):
            print("needs root and unshare (a private network namespace for port 443)", file=sys.stderr)
            return 2
        argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--in-netns"]
        return subprocess.run(["unshare", "-n", "--", *argv], check=False).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if not shutil.which("tinyproxy"):
        print("needs tinyproxy, the anchor (Debian: apt-get install tinyproxy)", file=sys.stderr)
        return 2
    rounds = args.rounds or (200 if args.quick else 600)
    size = (256 if args.quick else 1024) << 20
    tmp = Path(tempfile.mkdtemp(prefix="clawpen-gwbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cert, key = make_cert(tmp)
        tls_port = 443  # CONNECT to 443: the gateway reads the ClientHello before the reply path
        bulk_port, gw_port, tp_port, dns_port = (free_port() for _ in range(4))
        me = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        procs.append(
            subprocess.Popen([*me, "origin", str(tls_port), str(bulk_port), str(cert), str(key), str(size)])
        )
        procs.append(
            subprocess.Popen(
                [*me, "gateway", str(gw_port), str(dns_port), str(tls_port), str(bulk_port), str(tmp)]
            )
        )
        conf = tmp / "tinyproxy.conf"
        conf.write_text(
            f"Port {tp_port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 100\nAllow 127.0.0.1\n"
            f'LogLevel Critical\nPidFile "{tmp}/tinyproxy.pid"\nLogFile "{tmp}/tinyproxy.log"\n'
        )
        procs.append(
            subprocess.Popen(
                ["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        for port in (tls_port, bulk_port, gw_port, tp_port):
            wait_port(port)
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        paths = {
            "direct": (None, "127.0.0.1"),
            "gateway": (gw_port, "bench.test"),
            "tinyproxy": (tp_port, "127.0.0.1"),
        }
        for proxy, target in paths.values():  # warm up (and the gateway's DNS cache)
            for _ in range(20):
                https_once(ctx, tls_port, proxy, target)
        lat: dict[str, list[float]] = {k: [] for k in paths}
        pids = {"gateway": procs[1].pid, "tinyproxy": procs[2].pid}
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        for _ in range(rounds):
            for name, (proxy, target) in paths.items():
                lat[name].append(https_once(ctx, tls_port, proxy, target))
        # each proxy process served only its own rounds in this window: its CPU per connection
        cpu_ms = {k: (cpu_seconds(pid) - cpu0[k]) / rounds * 1000 for k, pid in pids.items()}
        p50 = {k: statistics.median(v) for k, v in lat.items()}
        p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in lat.items()}
        added = {k: p50[k] - p50["direct"] for k in paths}
        print(f"https (new TLS 1.3 handshake, small GET), {rounds} rounds interleaved")
        for k in paths:
            cpu = f"  CPU {cpu_ms[k]:.3f} ms/conn" if k in cpu_ms else ""
            print(f"  {k:<10} p50 {p50[k]:7.3f} ms  p90 {p90[k]:7.3f} ms  added p50 {added[k]:+.3f} ms{cpu}")
        ok_lat = added["gateway"] <= added["tinyproxy"]
        lat_ratio = added["gateway"] / added["tinyproxy"] if added["tinyproxy"] > 0 else float("inf")
        print(
            f"  gateway added p50 {added['gateway']:.3f} ms / tinyproxy's {added['tinyproxy']:.3f} ms"
            f" = {lat_ratio:.2f} (target <= 1): {'PASS' if ok_lat else 'FAIL'}"
        )
        mibs: dict[str, float] = {}
        ok_tp = True
        if not args.no_tunnel:
            for name, (proxy, target) in paths.items():
                mibs[name] = max(tunnel_once(bulk_port, proxy, target, size) for _ in range(3))
            print(f"tunnel ({size >> 20} MiB download, best of 3)")
            for k in paths:
                print(f"  {k:<10} {mibs[k]:8.0f} MiB/s  {mibs[k] / mibs['direct']:6.1%} of direct")
            ok_tp = mibs["gateway"] >= mibs["tinyproxy"]
            ratio = mibs["gateway"] / mibs["direct"]
            vs_tp = mibs["gateway"] / mibs["tinyproxy"]
            print(f"  gateway / tinyproxy {vs_tp:.2f}x (target >= 1): {'PASS' if ok_tp else 'FAIL'}")
            print(f"  gateway / direct {ratio:.1%} (aim >= 50%): {'met' if ratio >= 0.5 else 'not met'}")
        if args.json:
            out = {"p50_ms": p50, "p90_ms": p90, "added_p50_ms": added, "added_ratio": lat_ratio}
            Path(args.json).write_text(
                json.dumps({**out, "cpu_ms_per_conn": cpu_ms, "tunnel_mib_s": mibs}, indent=1)
            )
        return 0 if ok_lat and ok_tp else 1
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
