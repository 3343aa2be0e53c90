"""Egress of a container bot, with real Docker: the engine gives the container no network
(``none``), clawpen wires the bot's link into the container's namespace, and the bot reaches only
its allowlist through the daemon's gateway, never the host's loopback nor another bot.

The world is tests/integration/test_gateway_daemon.py's: the daemon runs in a namespace of the
test's (its "host"), whose upstream is a fake internet (DNS 45.79.1.53, www.allowed.test
45.79.1.10, other.test 45.79.1.11). Containers are labelled with the daemon's state dir and
removed afterwards.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_env import BASE_IMAGE, ensure_base_image
from gateway_env import FakeDNS
from helpers import peer_recorder, socket_in_ns, wait_for
from test_gateway_daemon import Daemon, world  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.netns, pytest.mark.bwrap]

# sockets by hand, a repr out: nothing beyond the interpreter's core is assumed of the image
BOX = r"""
import os, socket, sys
def talk(addr, port, request, name=None):
    try:
        if name is not None:
            addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        s = socket.create_connection((addr, int(port)), timeout=8)
    except OSError as e:
        return "error:" + (e.strerror or str(e))
    try:
        if request:
            s.sendall(request.encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")
    except OSError as e:
        return "error:" + (e.strerror or str(e))
    finally:
        s.close()
def req(target, host):
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
gw = os.environ["HTTP_PROXY"].split("//")[1].split(":")[0]
host_port, peer = sys.argv[1], sys.argv[2]
out = {
    "ifs": sorted(n for _, n in socket.if_nameindex()),
    "proxied": talk(gw, 3128, req("http://www.allowed.test/p", "www.allowed.test")),
    "direct": talk(None, 80, req("/d", "www.allowed.test"), name="www.allowed.test"),
    "denied": talk(gw, 3128, req("http://other.test/", "other.test")),
    "denied_direct": talk(None, 80, req("/x", "other.test"), name="other.test"),
    "host_loopback": talk("127.0.0.1", host_port, ""),
    "peer": talk(peer, 8000, req("/", peer)),
    "resolv": open("/etc/resolv.conf").read().split(),
}
print("BOX " + repr(out), flush=True)
import time; time.sleep(300)
"""

PEER = r"""
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000))
s.listen(8)
def self_check():
    c = socket.create_connection(("127.0.0.1", 8000), timeout=3)
    c.close()
threading.Thread(target=self_check).start()
while True:
    c, peer = s.accept()
    print("peer got a connection from", peer[0], flush=True)
    c.close()
"""


def _containers(home: Path) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=clawpen.state={home}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


@pytest.fixture
def box_world(world: tuple[Daemon, FakeDNS]) -> Iterator[tuple[Daemon, FakeDNS]]:  # noqa: F811
    ensure_base_image()
    d = world[0]
    try:
        yield world
    finally:
        left = _containers(d.home)
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)


@pytest.fixture
def host_loopback(box_world: tuple[Daemon, FakeDNS]) -> Iterator[tuple[int, list[str]]]:
    """A TCP service on the loopback of the daemon's host namespace, recording its peers."""
    s = socket_in_ns(box_world[0].ns)
    s.bind(("127.0.0.1", 0))
    with peer_recorder(s) as served:
        yield served


def _bot_addr(home: Path, key: str) -> str:
    index = json.loads((home / "net-links.json").read_text())["links"][key]
    return str(ipaddress.ip_address("10.213.0.0") + 4 * index + 2)


def _ns(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_a_container_bot_reaches_only_its_allowlist_through_the_gateway(
    box_world: tuple[Daemon, FakeDNS], host_loopback: tuple[int, list[str]]
) -> None:
    d, dns = box_world
    port, host_peers = host_loopback
    head = f"""
        [gateway]
        dns_upstream = ["45.79.1.53"]

        [bots.peer]
        command = ["/usr/bin/python3", "-c", {json.dumps(PEER)}]
        network = {{ egress = ["www.allowed.test:80"] }}
        """
    d.write(head)
    d.cli("up")
    d.wait_state("peer", "running")
    assert wait_for(lambda: "from 127.0.0.1" in d.cli("logs", "peer").stdout, 10)  # its listener works
    peer = _bot_addr(d.home, "peer.0")

    argv = ["python3", "-c", BOX, str(port), peer]
    d.write(
        head
        + f"""
        [bots.box]
        tier = "container"
        image = "{BASE_IMAGE}"
        command = {json.dumps(argv)}
        network = {{ egress = ["www.allowed.test:80"] }}
        """
    )
    d.cli("up")
    row = d.wait_state("box", "running", timeout=60)
    assert wait_for(lambda: "BOX {" in d.cli("logs", "box").stdout, 40, interval=0.2)
    line = next(ln for ln in d.cli("logs", "box").stdout.splitlines() if "BOX {" in ln)
    out = ast.literal_eval(line[line.index("BOX {") + 4 :])
    box = _bot_addr(d.home, "box.0")

    # the engine gave it no network; clawpen's link is its only way out
    (cid,) = _containers(d.home)
    info = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True).stdout)[0]
    assert info["HostConfig"]["NetworkMode"] == "none"
    pid = int(info["State"]["Pid"])
    assert row["pid"] and _ns(str(d.home / "netns" / "box.0")) == _ns(f"/proc/{pid}/ns/net")
    assert out["ifs"] == ["eth0", "lo"], out
    assert out["resolv"][-2:] == ["nameserver", str(ipaddress.ip_address(box) - 1)], out

    # allowed, through the proxy and transparently (its DNS answered by the gateway)
    assert "hello from 45.79.1.10:80 host=www.allowed.test path=/p" in out["proxied"], out
    assert "hello from 45.79.1.10:80 host=www.allowed.test path=/d" in out["direct"], out
    # another domain: denied, both ways
    assert out["denied"].startswith("HTTP/1.1 403"), out
    assert "clawpen gateway: host other.test:80 is not in the egress" in out["denied"], out
    assert "hello from" not in out["denied_direct"], out
    assert "www.allowed.test" in dns.asked
    # the host's loopback is not reachable (the container's 127.0.0.1 is its own); the positive
    # control: the service answers in the host namespace
    assert out["host_loopback"] == "error:Connection refused", out
    c = socket_in_ns(d.ns)
    with c:
        c.settimeout(3)
        c.connect(("127.0.0.1", port))
        assert c.recv(8) == b"host\n"
    assert host_peers == ["127.0.0.1"]
    # another bot's address: the connection ends at the gateway, never at the other bot
    assert "hello from" not in out["peer"], out
    peer_log = d.cli("logs", "peer").stdout
    assert f"from {box}" not in peer_log and peer_log.count("peer got a connection") == 1, peer_log

    rows = [json.loads(ln) for ln in d.cli("net", "log", "box", "--json").stdout.splitlines()]
    kinds = {(r["kind"], r["host"], r["verdict"]) for r in rows}
    assert ("proxy", "www.allowed.test", "allowed") in kinds, rows
    assert ("transparent", "www.allowed.test", "allowed") in kinds, rows
    assert ("proxy", "other.test", "denied") in kinds, rows
    assert any(r["verdict"] == "denied" and peer in json.dumps(r) for r in rows), rows

    # a restart is a new container, so a new namespace: wired again, same address
    d.cli("restart", "box")

    def second_run() -> bool:
        return d.cli("logs", "box").stdout.count("BOX {") == 2

    assert wait_for(second_run, 60, interval=0.3)
    line = [ln for ln in d.cli("logs", "box").stdout.splitlines() if "BOX {" in ln][-1]
    again = ast.literal_eval(line[line.index("BOX {") + 4 :])
    assert "host=www.allowed.test path=/p" in again["proxied"], again
    (cid2,) = _containers(d.home)
    info2 = json.loads(subprocess.run(["docker", "inspect", cid2], capture_output=True, text=True).stdout)[0]
    pid2 = int(info2["State"]["Pid"])
    assert cid2 != cid and pid2 != pid
    assert _ns(str(d.home / "netns" / "box.0")) == _ns(f"/proc/{pid2}/ns/net")
    assert _bot_addr(d.home, "box.0") == box

    # down: the container, its link and the bind of its namespace are gone
    d.cli("down")
    assert wait_for(lambda: not _containers(d.home), 30)
    assert not (d.home / "netns" / "box.0").exists()
    links = subprocess.run(["ip", "-n", d.ns, "-o", "link"], capture_output=True, text=True).stdout
    assert ": cb" not in links


SERVE = r"""
import os, socket, sys
token = os.urandom(4).hex()
ifs = ",".join(sorted(n for _, n in socket.if_nameindex()))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8000))
s.listen(8)
print("serving", token, flush=True)
while True:
    c, _ = s.accept()
    c.sendall(f"{token} {ifs}\n".encode())
    c.close()
"""


def _free_port(ns: str) -> int:
    s = socket_in_ns(ns)
    with s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch(ns: str, port: int) -> str:
    """What a published port on the loopback of the daemon's host namespace answers ("": none)."""
    s = socket_in_ns(ns)
    with s:
        s.settimeout(3)
        try:
            s.connect(("127.0.0.1", port))
            return s.recv(128).decode().strip()
        except OSError:
            return ""


def test_published_ports_reach_container_bots_with_and_without_a_link(
    box_world: tuple[Daemon, FakeDNS],
) -> None:
    d, _dns = box_world
    p_linked, p_plain = _free_port(d.ns), _free_port(d.ns)
    argv = json.dumps(["python3", "-c", SERVE])
    d.write(f"""
        [bots.linked]
        tier = "container"
        image = "{BASE_IMAGE}"
        command = {argv}
        network = {{ egress = ["www.allowed.test:80"], publish = ["127.0.0.1:{p_linked}:8000"] }}

        [bots.plain]
        tier = "container"
        image = "{BASE_IMAGE}"
        command = {argv}
        network = {{ publish = ["127.0.0.1:{p_plain}:8000"] }}
        """)
    d.cli("up")
    for bot in ("linked", "plain"):
        d.wait_state(bot, "running", timeout=60)
    assert wait_for(lambda: _fetch(d.ns, p_linked) != "" and _fetch(d.ns, p_plain) != "", 30, interval=0.2)
    first = _fetch(d.ns, p_linked)
    # the relay reaches each bot's own loopback in the namespace the engine made: through the
    # link's path for the linked bot, through /proc/<pid>/ns/net for the other
    assert first.endswith(" eth0,lo"), first
    assert _fetch(d.ns, p_plain).endswith(" lo"), _fetch(d.ns, p_plain)
    # a restart is a new container: the relay follows it
    d.cli("restart", "linked")
    assert wait_for(lambda: _fetch(d.ns, p_linked) not in ("", first), 60, interval=0.3)
    assert _fetch(d.ns, p_linked).endswith(" eth0,lo")
    d.cli("down")
    assert wait_for(lambda: not _containers(d.home), 30)
    assert _fetch(d.ns, p_linked) == "" and _fetch(d.ns, p_plain) == ""
