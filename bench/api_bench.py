#!/usr/bin/env python3
"""HTTP API and dashboard benchmarks (issue 7).

Run as root::

    .venv/bin/python bench/api_bench.py [--bots 50] [--runs 300] [--json out.json]

A daemon (``clawpen up``, its own CLAWPEN_HOME in a temporary folder, the API on a free loopback
port) supervises ``--bots`` bots running ``sleep``. Then, interleaved in one run:

1. ``list``    GET /api/v1/bots (the ``ps`` operation) over one keep-alive HTTP connection, and
   the same over a new connection per request; anchor: the ``ps`` operation over the daemon's
   Unix socket, a new connection per call, as the CLI makes it. Target: HTTP p50 <= 20 ms.
2. ``status``  GET /api/v1/bots/bot007 (the ``status`` operation); anchor: ``status`` over the
   socket. Target: p50 <= 20 ms.
3. ``first load``  the bytes the dashboard's first load transfers: index.html, the CSS and every
   JavaScript module it imports (followed from the files themselves), plus the JSON the overview
   asks for with 50 bots (whoami, bots, metrics/latest, alerts). Target: <= 500 KB.

Everything is stopped and removed at the end. Exits 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLAWPEN = str(Path(sys.executable).with_name("clawpen"))
TARGET_MS = 20.0
TARGET_BYTES = 500_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def socket_call(path: Path, op: str, args: dict[str, object]) -> object:
    """One call the way the CLI makes it: connect, one JSON line each way, close."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        with s.makefile("rb") as f:
            reply = json.loads(f.readline())
    if "error" in reply:
        raise RuntimeError(reply)
    return reply["result"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bots", type=int, default=50)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", metavar="FILE")
    ns = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the daemon starts bots as their own uids)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="clawpen-apibench-", dir="/tmp"))
    tmp.chmod(0o755)
    home = tmp / "state"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env.update(CLAWPEN_HOME=str(home), CLAWPEN_API_LISTEN=f"127.0.0.1:{port}")
    spec = "".join(f'[bots.bot{i:03d}]\ncommand = ["sleep", "100000"]\n\n' for i in range(ns.bots))
    (tmp / "clawpen.toml").write_text(spec)
    results: dict[str, object] = {"bots": ns.bots, "runs": ns.runs}
    ok = True

    def cli(*args: str) -> str:
        return subprocess.run(
            [CLAWPEN, *args], env=env, cwd=tmp, capture_output=True, text=True, check=True, timeout=120
        ).stdout

    try:
        cli("up", "--detach")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = json.loads(cli("ps", "--json"))
            if sum(r["state"] == "running" for r in rows) == ns.bots:
                break
            time.sleep(0.5)
        else:
            print("the bots did not all start", file=sys.stderr)
            return 2
        token = cli("token", "create", "--role", "viewer").strip()
        sock = home / "clawpen.sock"
        auth = {"Authorization": f"Bearer {token}"}
        keep = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def http_keep(path: str) -> bytes:
            keep.request("GET", path, headers=auth)
            r = keep.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"{path}: {r.status} {body[:200]!r}")
            return body

        def http_fresh(path: str) -> bytes:
            return _get(port, path, auth)

        cases = {
            "list http keep-alive": lambda: http_keep("/api/v1/bots"),
            "list http new conn": lambda: http_fresh("/api/v1/bots"),
            "list socket (anchor)": lambda: socket_call(sock, "ps", {}),
            "status http keep-alive": lambda: http_keep("/api/v1/bots/bot007"),
            "status http new conn": lambda: http_fresh("/api/v1/bots/bot007"),
            "status socket (anchor)": lambda: socket_call(sock, "status", {"bots": ["bot007"]}),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm up
            for _ in range(10):
                fn()
        for _ in range(ns.runs):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
        print(f"API with {ns.bots} bots, {ns.runs} requests each, interleaved (ms)")
        print(f"{'case':<26} {'p50':>7} {'p90':>7} {'min':>7} {'vs socket p50':>14}")
        for name, values in times.items():
            kind = name.split()[0]
            anchor = statistics.median(times[f"{kind} socket (anchor)"])
            p50 = statistics.median(values)
            print(f"{name:<26} {p50:7.2f} {pct(values, 0.9):7.2f} {min(values):7.2f} {p50 / anchor:13.2f}x")
            results[name] = {"p50": p50, "p90": pct(values, 0.9), "min": min(values)}
        for kind in ("list", "status"):
            worst = max(
                statistics.median(times[f"{kind} http keep-alive"]),
                statistics.median(times[f"{kind} http new conn"]),
            )
            met = worst <= TARGET_MS
            ok &= met
            verdict = "PASS" if met else "FAIL"
            print(f"target {kind} p50 <= {TARGET_MS:g} ms: {verdict} ({worst:.2f} ms, the slower HTTP case)")

        # ---------------------------------------------------------------- first load
        sizes: dict[str, int] = {}
        queue = ["/"]
        while queue:
            path = queue.pop()
            if path in sizes:
                continue
            body = http_fresh(path) if path.startswith("/api/") else _get(port, path)
            sizes[path] = len(body)
            text = body.decode("utf-8", "replace")
            for ref in re.findall(r'(?:href|src)="(/static/[^"]+)"', text):
                queue.append(ref)
            for ref in re.findall(r'from "\./([^"]+)"', text):
                queue.append(f"/static/{ref}")
        for path in ("/api/v1/whoami", "/api/v1/bots", "/api/v1/metrics/latest", "/api/v1/alerts"):
            with contextlib.suppress(RuntimeError):
                sizes[path] = len(http_fresh(path))
        total = sum(sizes.values())
        print("first load (bytes):", ", ".join(f"{p} {n}" for p, n in sizes.items()))
        met = total <= TARGET_BYTES
        ok &= met
        verdict = "PASS" if met else "FAIL"
        print(f"target first load <= {TARGET_BYTES // 1000} KB: {verdict} ({total / 1000:.1f} KB)")
        results["first_load_bytes"] = total
        results["first_load"] = sizes
        keep.close()
    finally:
        with contextlib.suppress(Exception):
            subprocess.run([CLAWPEN, "down"], env=env, cwd=tmp, capture_output=True, timeout=120, check=False)
        with contextlib.suppress(Exception):
            pid = int((home / "daemon.pid").read_text())
            os.kill(pid, 15)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        shutil.rmtree(tmp, ignore_errors=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """One GET on a new connection; raises unless the answer is 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status}")
        return body
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
