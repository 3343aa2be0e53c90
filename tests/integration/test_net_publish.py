"""Published ports and per-bot links under the real daemon, which runs inside a test namespace.

Namespaces of the test (never the machine's): ``host`` (where the daemon runs and binds its
published ports; it plays the machine) and ``outside`` (another machine on a veth: 10.99.0.2 and
10.99.0.3 -> host 10.99.0.1). The daemon makes its own gateway and bot namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NetnsDaemon, alive, wait_for

from clawpen import netns
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.netns]

SERVER = (
    "import http.server,socketserver,os\\n"
    "class H(http.server.BaseHTTPRequestHandler):\\n"
    "    def do_GET(self):\\n"
    "        body=(os.environ['CLAWPEN_BOT']+' '+open('/etc/resolv.conf').read().split()[-1]).encode()\\n"
    "        self.send_response(200)\\n"
    "        self.send_header('Content-Length', str(len(body))); self.end_headers()\\n"
    "        self.wfile.write(body)\\n"
    "    def log_message(self, *a): pass\\n"
    "socketserver.TCPServer.allow_reuse_address=True\\n"
    "http.server.HTTPServer(('127.0.0.1', 8000), H).serve_forever()\\n"
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class NetDaemon(NetnsDaemon):
    def __init__(self, home: Path, spec_dir: Path, ns: str) -> None:
        super().__init__(home, spec_dir, ns, UID_BASE)

    def kill(self) -> None:
        """SIGKILL the daemon (a crash): its bots keep running."""
        pid = self.pid()
        assert pid and alive(pid)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 10)
        if self.proc is not None:
            self.proc.wait(5)
        with contextlib.suppress(FileNotFoundError):
            (self.home / "daemon.pid").unlink()


class Net:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.host = f"clawpen-t-{tag}-h"
        self.outside = f"clawpen-t-{tag}-o"
        ip("netns", "add", self.host)
        ip("netns", "add", self.outside)
        ip("-n", self.host, "link", "set", "lo", "up")
        ip("-n", self.outside, "link", "set", "lo", "up")
        ip("-n", self.host, "link", "add", "h0", "type", "veth", "peer", "name", "o0", "netns", self.outside)
        ip("-n", self.host, "addr", "add", "10.99.0.1/24", "dev", "h0")
        ip("-n", self.host, "link", "set", "h0", "up")
        for addr in ("10.99.0.2/24", "10.99.0.3/24"):
            ip("-n", self.outside, "addr", "add", addr, "dev", "o0")
        ip("-n", self.outside, "link", "set", "o0", "up")

    def fd(self, name: str) -> int:
        return netns.open_netns(f"/run/netns/{name}")

    def get(self, ns: str, addr: str, port: int, source: str | None = None) -> str:
        """An HTTP GET from namespace ``ns``: the body, or "refused"/"closed"/"timeout"."""
        fd = self.fd(ns)
        try:
            s = netns.socket_in(fd)
        finally:
            os.close(fd)
        s.settimeout(3)
        try:
            if source:
                s.bind((source, 0))
            s.connect((addr, port))
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:
            return "closed"
        except TimeoutError:
            return "timeout"
        finally:
            s.close()
        if not data:
            return "closed"
        head, _, body = data.partition(b"\r\n\r\n")
        return body.decode() if head.startswith(b"HTTP/1.0 200") else head.decode()

    def close(self) -> None:
        for name in (self.host, self.outside):
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def netd(tmp_path: Path, net: Net) -> Iterator[NetDaemon]:
    spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-np-", dir="/tmp"))
    spec_dir.chmod(0o755)
    d = NetDaemon(tmp_path / "state", spec_dir, net.host)
    d.start()
    try:
        yield d
        # the daemon made its gateway and bot namespaces of its own: nothing of them in the
        # namespace it runs in, nor in the machine's
        for ns in (["-n", net.host], []):
            links = subprocess.run(["ip", *ns, "-o", "link"], capture_output=True, text=True).stdout
            routes = subprocess.run(["ip", *ns, "route"], capture_output=True, text=True).stdout
            assert ": cb" not in links and "10.213." not in routes, (ns, links, routes)
    finally:
        d.shutdown()
        subprocess.run(["rm", "-rf", str(spec_dir)], check=False)
    # a clean daemon exit with no bot left removes the gateway namespace too
    assert not (d.home / "netns" / "gw").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_body(net: Net, ns: str, addr: str, port: int, want: str, timeout: float = 20) -> str:
    last = ""

    def ok() -> bool:
        nonlocal last
        last = net.get(ns, addr, port)
        return last.startswith(want)

    wait_for(ok, timeout, interval=0.2)
    return last


def outside_reaches_host(net: Net) -> bool:
    """Positive control: a connection from ``outside`` to a listener on the host's 10.99.0.1."""
    hfd, ofd = net.fd(net.host), net.fd(net.outside)
    try:
        srv, cli = netns.socket_in(hfd), netns.socket_in(ofd)
    finally:
        os.close(hfd)
        os.close(ofd)
    try:
        srv.bind(("10.99.0.1", 0))
        srv.listen(1)
        cli.settimeout(3)
        cli.connect(("10.99.0.1", srv.getsockname()[1]))
        return True
    except OSError:
        return False
    finally:
        srv.close()
        cli.close()


def test_published_ports_reach_loopback_bots_with_and_without_a_link(netd: NetDaemon, net: Net) -> None:
    p_plain, p_linked = free_port(), free_port()
    netd.write(f"""
        [bots.plain]
        command = ["python3", "-c", "{SERVER}"]
        network.publish = ["127.0.0.1:{p_plain}:8000"]

        [bots.linked]
        command = ["python3", "-c", "{SERVER}"]
        network.egress = ["example.com:443"]
        network.publish = ["{p_linked}:8000"]
        """)
    netd.cli("up")
    # the bots bind only their own 127.0.0.1; the daemon relays from the host's loopback
    assert wait_body(net, net.host, "127.0.0.1", p_plain, "plain") == "plain none)"  # no network
    body = wait_body(net, net.host, "127.0.0.1", p_linked, "linked")
    assert body.startswith("linked 10.213.")  # its resolv.conf names the gateway on its link
    # loopback publishing: not reachable from another machine through the host's address
    assert outside_reaches_host(net)  # positive control: the path itself works
    assert net.get(net.outside, "10.99.0.1", p_plain) == "refused"
    assert net.get(net.outside, "10.99.0.1", p_linked) == "refused"
    # the test's own namespace (the real machine) does not have them either
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", p_plain))

    # a daemon crash: the bots keep running; a new daemon adopts them and binds the ports again
    pid = netd.ps()["linked"]["pid"]
    netd.kill()
    assert alive(pid)
    assert net.get(net.host, "127.0.0.1", p_linked) == body  # the port relay outlives the daemon
    netd.start()
    assert wait_body(net, net.host, "127.0.0.1", p_linked, "linked") == body
    assert netd.ps()["linked"]["pid"] == pid
    # a clean stop removes the link and the bot's namespace
    netd.cli("down")
    state = netd.home
    assert wait_for(lambda: not (state / "netns" / "linked.0").exists(), 10)


def test_exposed_port_with_a_source_allowlist(netd: NetDaemon, net: Net) -> None:
    port = free_port()
    netd.write(f"""
        [bots.web]
        command = ["python3", "-c", "{SERVER}"]
        network.publish = ["0.0.0.0:{port}:8000"]
        network.expose = true
        network.from = ["10.99.0.3/32"]
        """)
    netd.cli("up")
    assert wait_body(net, net.host, "10.99.0.1", port, "web", timeout=20) != ""
    # the listed source gets through, another one is closed at once and recorded
    got = ""
    for _ in range(50):
        got = net.get(net.outside, "10.99.0.1", port, source="10.99.0.3")
        if got.startswith("web"):
            break
        time.sleep(0.2)
    assert got.startswith("web"), got
    assert net.get(net.outside, "10.99.0.1", port, source="10.99.0.2") == "closed"
    # the relay reports it; the daemon turns the report into an event within a second or so
    why = "refused a connection from 10.99.0.2"
    assert wait_for(lambda: any(why in e.get("reason", "") for e in netd.events("web")), 10, interval=0.2)


def test_up_refuses_a_host_port_published_twice(netd: NetDaemon) -> None:
    netd.write("""
        [bots.a]
        command = ["sleep", "60"]
        network.publish = ["8080:80"]
        [bots.b]
        command = ["sleep", "60"]
        network.publish = ["127.0.0.1:8080:81"]
        """)
    done = netd.cli("up", check=False)
    assert done.returncode == 2, done
    assert "host port 8080 is published by both a and b" in done.stderr
    assert "Traceback" not in done.stderr
    assert netd.ps() == {}
