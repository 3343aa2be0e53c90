"""The stall detector counts network bytes: a build step that prints nothing but keeps receiving
bytes (a slow download through the build's egress) runs on; one whose download stops receiving
is killed, naming the URL its output gave. A daemon in a namespace of the test's, as in
test_gateway_daemon.py:

    daemon's ns  h0 45.79.2.1/24 --veth-- o0 45.79.2.2/24  inet ns: DNS 45.79.2.53,
                                                           www.drip.test 45.79.2.10:80
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_env import FakeDNS
from helpers import NetnsDaemon, session_uid_base

from clawpen.netns import netns_thread_call, socket_in

pytestmark = [pytest.mark.netns, pytest.mark.root, pytest.mark.bwrap]

CHUNK = 4096


class Drip(http.server.BaseHTTPRequestHandler):
    """``/drip``: 8 chunks, one every 2 s; ``/hang``: one chunk, then nothing for a minute."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        chunks = 8 if self.path == "/drip" else 9
        self.send_response(200)
        self.send_header("Content-Length", str(chunks * CHUNK))
        self.end_headers()
        for i in range(chunks):
            if self.path != "/drip" and i == 1:
                time.sleep(60)
                return
            self.wfile.write(b"x" * CHUNK)
            self.wfile.flush()
            time.sleep(2)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


FETCH = r"""
import sys, urllib.error, urllib.request
url = sys.argv[1]
if len(sys.argv) > 2:
    print("GET", url, flush=True)
try:
    with urllib.request.urlopen(url, timeout=120) as r:
        data = r.read()
except urllib.error.HTTPError as e:
    sys.exit(f"HTTP {e.code}: {e.read().decode(errors='replace').strip()}")
open("/opt/bot/got", "w").write(str(len(data)))
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[NetnsDaemon]:
    tag = uuid.uuid4().hex[:6]
    host, inet = f"clawpen-t-{tag}-h", f"clawpen-t-{tag}-i"
    spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-bs-", dir="/tmp"))
    spec_dir.chmod(0o755)
    server: Server | None = None
    dns: FakeDNS | None = None
    d: NetnsDaemon | None = None
    fd = -1
    try:
        for ns in (host, inet):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", host, "link", "add", "h0", "type", "veth", "peer", "name", "o0", "netns", inet)
        ip("-n", host, "addr", "add", "45.79.2.1/24", "dev", "h0")
        ip("-n", host, "link", "set", "h0", "up")
        ip("-n", host, "route", "add", "default", "via", "45.79.2.2")
        for addr in ("45.79.2.2", "45.79.2.53", "45.79.2.10"):
            ip("-n", inet, "addr", "add", f"{addr}/24", "dev", "o0")
        ip("-n", inet, "link", "set", "o0", "up")
        fd = os.open(f"/run/netns/{inet}", os.O_RDONLY | os.O_CLOEXEC)
        server = netns_thread_call(fd, lambda: Server(("45.79.2.10", 80), Drip))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        udp = socket_in(fd, socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("45.79.2.53", 53))
        dns = FakeDNS(udp, zone={"www.drip.test": ["45.79.2.10"]})
        # the state under a 0755 folder: <state>-build must be reachable by the bot uids
        d = NetnsDaemon(spec_dir / "state", spec_dir, host, session_uid_base())
        d.start()
        yield d
    finally:
        if d is not None:
            d.shutdown()
        if server is not None:
            server.shutdown()
            server.server_close()
        if dns is not None:
            dns.close()
        if fd >= 0:
            os.close(fd)
        for ns in (host, inet):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(spec_dir)], check=False)


def _spec(path: str, announce: bool) -> str:
    argv = ["/usr/bin/python3", "-c", FETCH, f"http://www.drip.test{path}", *(["say"] if announce else [])]
    return f"""
        [gateway]
        dns_upstream = ["45.79.2.53"]

        [bots.app]
        command = ["sleep", "600"]
        [bots.app.build]
        steps = [{json.dumps(argv)}]
        egress = ["www.drip.test:80"]
        timeout = "90s"
        stall = "10s"
        """


def test_a_silent_step_that_receives_bytes_runs_on_and_one_that_stops_is_killed(world: NetnsDaemon) -> None:
    d = world
    # positive control: no output at all for 16 s, but bytes every 2 s: not a stall
    d.write(_spec("/drip", announce=False))
    t0 = time.monotonic()
    up = d.cli("up", timeout=120)
    assert time.monotonic() - t0 > 14, up.stderr  # the download really took its time
    assert "stalled" not in up.stderr and "start app" in up.stdout, up.stderr
    assert " kB received" in up.stderr, up.stderr  # the progress items counted the link's bytes
    # the download stops receiving: killed after 10 s of silence, naming the URL
    d.write(_spec("/hang", announce=True))
    t0 = time.monotonic()
    failed = d.cli("up", check=False, timeout=120)
    assert failed.returncode != 0, failed.stdout
    assert time.monotonic() - t0 < 60
    err = failed.stderr
    assert "stalled: no output and no network bytes for 1" in err, err
    assert "last URL: http://www.drip.test/hang" in err, err
