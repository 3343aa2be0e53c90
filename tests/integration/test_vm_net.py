"""The VM tier's network with the daemon's real gateway: QEMU's user-mode network stack runs in
the bot's network namespace, so every connection of the guest is a socket of QEMU's there and
meets the gateway (allowlist, DNS, connection log) like a sandbox bot's; published ports and
health checks reach the guest through QEMU's forwards.

The world is tests/integration/test_gateway_daemon.py's: the daemon runs in a namespace of the
test's (its "host"), whose upstream is a fake internet (DNS 45.79.1.53, www.allowed.test
45.79.1.10, other.test 45.79.1.11). The guest's root is the host's (read-only), so its python3
is the host's and the container test's BOX script runs unchanged.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import time
from collections.abc import Iterator

import pytest
from gateway_env import FakeDNS
from helpers import peer_recorder, socket_in_ns, wait_for
from test_container_net import BOX, PEER, _bot_addr, _fetch, _free_port
from test_gateway_daemon import Daemon, world  # noqa: F401 (the fixture)
from vm_env import guest_kernel

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.bwrap, pytest.mark.vm]
BOOT = 90  # seconds a boot may take under TCG on a loaded 2-core machine
GATEWAY = '[gateway]\ndns_upstream = ["45.79.1.53"]\n'


def vm_table() -> str:
    return f'tier = "vm"\nvm = {{ kernel = "{guest_kernel()}", memory = "256M" }}\n'


def _report(d: Daemon, bot: str, tag: str) -> dict[str, object]:
    """The repr a bot printed after ``tag`` in its log (waits for the guest's boot)."""

    def line() -> str | None:
        return next((ln for ln in d.cli("logs", bot).stdout.splitlines() if f"{tag} {{" in ln), None)

    assert wait_for(lambda: line() is not None, BOOT, interval=0.3), d.cli("logs", bot).stdout
    found = line()
    assert found is not None
    out = ast.literal_eval(found[found.index(f"{tag} {{") + len(tag) + 1 :])
    assert isinstance(out, dict)
    return out


@pytest.fixture
def host_loopback(world: tuple[Daemon, FakeDNS]) -> Iterator[tuple[int, list[str]]]:  # noqa: F811
    """A TCP service on the loopback of the daemon's host namespace, recording its peers."""
    s = socket_in_ns(world[0].ns)
    s.bind(("127.0.0.1", 0))
    with peer_recorder(s) as served:
        yield served


# a DNS query sent straight to the fake internet's resolver over UDP (QEMU relays the guest's
# datagrams as its own sockets in the bot's namespace)
UDP = r"""
def udp_dns(addr, name):
    import struct
    q = struct.pack(">6H", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(q, (addr, 53))
        return "answer:" + s.recv(512)[:2].hex()
    except OSError as e:
        return "error:" + (e.strerror or str(e))
    finally:
        s.close()
"""
# the guest's view of QEMU's user-mode stack: 10.0.2.2 is an alias of the loopback of the
# namespace QEMU runs in (the bot's own, never the daemon's host's)
SLIRP = BOX.replace("def req(", UDP + "def req(").replace(
    '"host_loopback": talk("127.0.0.1", host_port, ""),',
    '"host_loopback": talk("127.0.0.1", host_port, ""),\n'
    '    "slirp_host": talk("10.0.2.2", host_port, ""),\n'
    '    "denied_ip": talk("45.79.1.11", 80, req("/i", "other.test")),\n'
    '    "udp_direct": udp_dns("45.79.1.53", "udp-direct.test"),\n'
    '    "udp_gateway": udp_dns(gw, "www.allowed.test"),',
)


def test_a_vm_bot_reaches_only_its_allowlist_through_the_gateway(
    world: tuple[Daemon, FakeDNS],  # noqa: F811
    host_loopback: tuple[int, list[str]],
) -> None:
    d, dns = world
    port, host_peers = host_loopback
    peer_bot = f"""
        [bots.peer]
        command = ["/usr/bin/python3", "-c", {json.dumps(PEER)}]
        network = {{ egress = ["www.allowed.test:80"] }}
        """
    d.write(GATEWAY + peer_bot)
    d.cli("up")
    d.wait_state("peer", "running")
    assert wait_for(lambda: "from 127.0.0.1" in d.cli("logs", "peer").stdout, 10)  # its listener works
    peer = _bot_addr(d.home, "peer.0")

    assert "slirp_host" in SLIRP and "udp_direct" in SLIRP
    argv = ["/usr/bin/python3", "-c", SLIRP, str(port), peer]
    d.write(
        GATEWAY
        + peer_bot
        + f"""
        [bots.box]
        {vm_table()}
        command = {json.dumps(argv)}
        network = {{ egress = ["www.allowed.test:80"] }}
        """
    )
    d.cli("up", timeout=120)
    d.wait_state("box", "running", timeout=30)
    out = _report(d, "box", "BOX")
    box = _bot_addr(d.home, "box.0")

    # the guest's NIC is QEMU's; its resolver is the gateway (the bot's link, seen through slirp)
    assert out["ifs"] == ["eth0", "lo"], out
    assert out["resolv"][-2:] == ["nameserver", str(ipaddress.ip_address(box) - 1)], out  # type: ignore[index]
    # allowed, through the proxy and transparently (its DNS answered by the gateway)
    assert "hello from 45.79.1.10:80 host=www.allowed.test path=/p" in str(out["proxied"]), out
    assert "hello from 45.79.1.10:80 host=www.allowed.test path=/d" in str(out["direct"]), out
    # another domain: denied, both ways
    assert str(out["denied"]).startswith("HTTP/1.1 403"), out
    assert "clawpen gateway: host other.test:80 is not in the egress" in str(out["denied"]), out
    assert "hello from" not in str(out["denied_direct"]), out
    assert "hello from" not in str(out["denied_ip"]), out  # by address, past the gateway's DNS
    assert "www.allowed.test" in dns.asked
    # the gateway answered its DNS and forwarded only allowed names; a datagram straight to the
    # resolver never got there (the gateway forwards no packet)
    assert out["udp_direct"] == "error:timed out", out
    assert out["udp_gateway"] == "answer:4242", out  # the positive control: the same query works
    assert "udp-direct.test" not in dns.asked and "other.test" not in dns.asked, dns.asked
    # the daemon host's loopback: neither the guest's 127.0.0.1 nor slirp's host alias (the bot's
    # namespace's loopback) is it; the positive control: the service answers in the host namespace
    assert out["host_loopback"] == "error:Connection refused", out
    assert str(out["slirp_host"]).startswith("error:"), out
    c = socket_in_ns(d.ns)
    with c:
        c.settimeout(3)
        c.connect(("127.0.0.1", port))
        assert c.recv(8) == b"host\n"
    assert host_peers == ["127.0.0.1"]
    # another bot's address: the connection ends at the gateway, never at the other bot
    assert "hello from" not in str(out["peer"]), out
    peer_log = d.cli("logs", "peer").stdout
    assert f"from {box}" not in peer_log and peer_log.count("peer got a connection") == 1, peer_log

    # the gateway's connection log has the VM bot's connections under its name
    rows = [json.loads(ln) for ln in d.cli("net", "log", "box", "--json").stdout.splitlines()]
    kinds = {(r["kind"], r["host"], r["verdict"]) for r in rows}
    assert ("proxy", "www.allowed.test", "allowed") in kinds, rows
    assert ("transparent", "www.allowed.test", "allowed") in kinds, rows
    assert ("proxy", "other.test", "denied") in kinds, rows
    assert ("transparent", "other.test", "denied") in kinds, rows
    assert ("dns", "other.test", "denied") in kinds, rows
    assert any(r["verdict"] == "denied" and peer in json.dumps(r) for r in rows), rows
    assert all(r["bot"] == "box" for r in rows), rows
    assert any(e["kind"] == "egress-denied" for e in d.events("box"))
    d.cli("down", timeout=60)


OFFLINE = r"""
import os, socket, threading
def try_(f):
    try:
        return "ok:" + str(f())
    except OSError as e:
        return "error:" + (e.strerror or str(e))
s = socket.socket()
s.bind(("127.0.0.1", 8001))
s.listen(1)
def serve():
    c, _ = s.accept()
    c.sendall(b"loop\n")
    c.close()
threading.Thread(target=serve, daemon=True).start()
def loop():
    with socket.create_connection(("127.0.0.1", 8001), timeout=5) as c:
        return c.recv(8).decode().strip()
out = {
    "ifs": sorted(n for _, n in socket.if_nameindex()),
    "loopback": try_(loop),
    "direct": try_(lambda: socket.create_connection(("45.79.1.10", 80), timeout=5).close()),
    "slirp_gw": try_(lambda: socket.create_connection(("10.0.2.2", 80), timeout=5).close()),
    "dns": try_(lambda: socket.getaddrinfo("www.allowed.test", 80, socket.AF_INET)),
}
print("OFF " + repr(out), flush=True)
import time; time.sleep(300)
"""

FETCH = r"""
import urllib.request
print("CTL " + repr({"got": urllib.request.urlopen("http://www.allowed.test/c", timeout=8).read().decode()}),
      flush=True)
import time; time.sleep(300)
"""


def test_a_vm_bot_without_egress_has_only_its_loopback(world: tuple[Daemon, FakeDNS]) -> None:  # noqa: F811
    d, _dns = world
    d.write(
        GATEWAY
        + f"""
        [bots.offline]
        {vm_table()}
        command = ["/usr/bin/python3", "-c", {json.dumps(OFFLINE)}]

        [bots.control]
        command = ["/usr/bin/python3", "-c", {json.dumps(FETCH)}]
        network = {{ egress = ["www.allowed.test:80"] }}
        """
    )
    d.cli("up", timeout=120)
    # the positive control: in the same world, a bot with egress reaches the allowed site
    ctl = _report(d, "control", "CTL")
    assert "hello from 45.79.1.10:80 host=www.allowed.test path=/c" in str(ctl["got"]), ctl
    out = _report(d, "offline", "OFF")
    # no NIC at all (QEMU got no network device): only loopback
    assert out["ifs"] == ["lo"], out
    assert out["loopback"] == "ok:loop", out
    assert out["direct"] == "error:Network is unreachable", out
    assert out["slirp_gw"] == "error:Network is unreachable", out
    assert str(out["dns"]).startswith("error:"), out
    assert d.cli("net", "log", "offline", "--json").stdout.strip() == ""  # not one connection
    d.cli("down", timeout=60)


def _server(bind: str) -> str:
    return f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("vm-web " + self.path + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("{bind}", 8000), H)
print("serving", flush=True)
def probe():  # no egress: QEMU's network is there for the forwards only
    import socket
    def try_(addr, port):
        try:
            socket.create_connection((addr, port), timeout=5).close()
            return "connected"
        except OSError as e:
            return "error:" + (e.strerror or str(e))
    out = {{"internet": try_("45.79.1.10", 80), "host": try_("45.79.1.1", 80), "slirp": try_("10.0.2.2", 9)}}
    print("EGRESS " + repr(out), flush=True)
import threading
threading.Thread(target=probe, daemon=True).start()
server.serve_forever()
"""


def _http_get(ns: str, port: int) -> str:
    """The body a GET / on ``127.0.0.1:port`` of the daemon's host namespace answers ("": none)."""
    s = socket_in_ns(ns)
    with s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /hi HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            return ""
    return data.decode(errors="replace")


def _published_web(d: Daemon, bind: str) -> None:
    port = _free_port(d.ns)
    assert _fetch(d.ns, port) == ""  # nothing there before
    d.write(f"""
        [bots.web]
        {vm_table()}
        command = ["/usr/bin/python3", "-c", {json.dumps(_server(bind))}]
        network = {{ publish = ["127.0.0.1:{port}:8000"] }}
        [bots.web.health]
        http = "http://127.0.0.1:8000/healthz"
        interval = "1s"
        timeout = "3s"
        start_period = "90s"
        """)
    d.cli("up", "--detach")
    d.wait_state("web", "running", timeout=30)
    assert wait_for(lambda: "serving" in d.cli("logs", "web").stdout, BOOT, interval=0.3)  # the guest is up
    healthy = wait_for(lambda: d.ps()["web"].get("health") == "healthy", 20, interval=0.3)
    assert healthy, (d.ps()["web"], d.cli("logs", "web").stdout)
    got = _http_get(d.ns, port)
    assert got.startswith("HTTP/1.0 200") and got.endswith("vm-web /hi\n"), got
    # a NIC for the forwards, but no egress: nothing outside the guest answers it
    out = _report(d, "web", "EGRESS")
    assert all(str(v).startswith("error:") for v in out.values()), out
    d.cli("down", timeout=60)
    assert _http_get(d.ns, port) == ""


def test_a_vm_bot_serving_on_all_addresses_is_published_and_healthy(
    world: tuple[Daemon, FakeDNS],  # noqa: F811
) -> None:
    _published_web(world[0], "0.0.0.0")  # the guest's own addresses


def test_a_vm_bot_serving_on_its_loopback_is_published_and_healthy(
    world: tuple[Daemon, FakeDNS],  # noqa: F811
) -> None:
    _published_web(world[0], "127.0.0.1")


LISTEN = (
    "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen(8); "
    "print('up', flush=True); time.sleep(600)"
)


def test_a_tcp_health_check_of_a_vm_bot_needs_a_listener_in_the_guest(
    world: tuple[Daemon, FakeDNS],  # noqa: F811
) -> None:
    """QEMU accepts on a forwarded port in the bot's namespace whatever the guest does, then asks
    the guest: the check must see the guest's refusal, not QEMU's accept."""
    d = world[0]
    health = (
        '[bots.{}.health]\ntcp = "127.0.0.1:8000"\ninterval = "1s"\ntimeout = "3s"\nstart_period = "90s"\n'
    )
    d.write(
        f"""
        [bots.mute]
        {vm_table()}
        command = ["/bin/sh", "-c", "echo up; exec sleep 600"]
        """
        + health.format("mute")
        + f"""
        [bots.open]
        {vm_table()}
        command = ["/usr/bin/python3", "-c", "{LISTEN}"]
        """
        + health.format("open")
    )
    d.cli("up", "--detach")
    for bot in ("mute", "open"):
        assert wait_for(lambda b=bot: "up" in d.cli("logs", b).stdout, BOOT, interval=0.3)
    # the positive control: a guest listener makes the check pass
    assert wait_for(lambda: d.ps()["open"].get("health") == "healthy", 20, interval=0.3), d.ps()["open"]
    # nothing listens in the other guest: its checks keep failing (QEMU's accept is not enough)
    assert wait_for(lambda: "closed at once" in str(d.ps()["mute"].get("health_detail")), 20, interval=0.3), (
        d.ps()["mute"]
    )
    for _ in range(4):
        time.sleep(1)
        assert d.ps()["mute"].get("health") == "starting", d.ps()["mute"]
    d.cli("down", timeout=60)
