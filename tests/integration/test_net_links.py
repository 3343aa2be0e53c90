"""Per-bot network namespaces and links, enforced by the kernel (real namespaces, real sandboxes).

A :class:`LinkManager` with a private state dir makes its own gateway namespace and bot
namespaces (nothing in the machine's namespace is touched). Bots run under the real namespace
tier (bubblewrap as their own uid) inside their link's namespace. A fake gateway listens in the
gateway namespace on the transparent and DNS ports and records what reaches it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PY, peer_recorder, session_uid_base

from clawpen import netns
from clawpen.errors import UsageError
from clawpen.net.links import LinkManager
from clawpen.net.types import DNS_PORT, PROXY_PORT, TRANSPARENT_PORT
from clawpen.plan.build import HostFacts, build_plan
from clawpen.sandbox.namespace import NamespaceTier
from clawpen.sandbox.seccomp import default_policy
from clawpen.sandbox.tier import Stdio
from clawpen.sandbox.users import identity_for
from clawpen.spec.policy import BotPolicy

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.netns]
SO_ORIGINAL_DST = 80


class FakeGateway:
    """Listens in the gateway namespace: TCP on the transparent and proxy ports (records the
    original destination of each connection) and UDP on the DNS port (records datagrams)."""

    def __init__(self, gw_fd: int) -> None:
        self.seen: list[tuple[str, str, int]] = []  # (peer, original dst ip, port)
        self.udp: list[tuple[str, bytes]] = []
        self.socks: list[socket.socket] = []
        for port in (TRANSPARENT_PORT, PROXY_PORT):
            s = netns.socket_in(gw_fd)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(16)
            self.socks.append(s)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        u = netns.socket_in(gw_fd, socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", DNS_PORT))
        self.socks.append(u)
        threading.Thread(target=self._udp, args=(u,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                conn, peer = s.accept()
            except OSError:
                return
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, ip = struct.unpack("!2xH4s8x", raw)
            self.seen.append((peer[0], socket.inet_ntoa(ip), port))
            conn.sendall(b"gateway\n")
            conn.close()

    def _udp(self, u: socket.socket) -> None:
        while True:
            try:
                data, peer = u.recvfrom(2048)
            except OSError:
                return
            self.udp.append((peer[0], data))

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkManager]:
    state = tmp_path_factory.mktemp("net-links")
    lm = LinkManager(state)
    try:
        yield lm
    finally:
        lm.destroy()


@pytest.fixture(scope="module")
def gateway(manager: LinkManager) -> Iterator[FakeGateway]:
    gw = FakeGateway(manager.gateway_netns_fd)
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="module")
def host_server() -> Iterator[tuple[int, list[str]]]:
    """A TCP server on the host's loopback (the test's own namespace) recording its peers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    with peer_recorder(s) as served:
        yield served


def run_bot(
    manager: LinkManager, name: str, script: str, *args: str, replica: int = 0, timeout: float = 30
) -> dict:
    """Run ``python3 -c script args`` as bot ``name`` in its link's namespace; its JSON line."""
    state = manager.dir.parent
    os.environ["CLAWPEN_UID_BASE"] = str(session_uid_base())
    policy = BotPolicy(name=name, command=(PY, "-c", script, *args), egress=("example.com:443",))
    link = manager.attach(name, replica, policy)
    plan = build_plan(
        policy,
        identity_for(name, state),
        HostFacts.probe(),
        default_policy(),
        link=link.for_plan(policy.egress),
    )
    r, w = os.pipe()
    tier = NamespaceTier(state)
    sandbox = tier.start(plan, cgroup_name=f"{name}-t{uuid.uuid4().hex[:6]}", stdio=Stdio(stdout=w))
    os.close(w)
    try:
        result = sandbox.wait(timeout)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
    finally:
        sandbox.teardown()
        os.close(r)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert result.exit_code == 0 and lines, f"bot failed: {result} {out!r}"
    return json.loads(lines[-1])


PROBE = r"""
import json, os, socket, subprocess, sys
def tcp(host, port, timeout=1.5):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, int(port)))
        data = s.recv(64).decode().strip()
        return "open:" + data
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error:" + (e.strerror or str(e))
    finally:
        s.close()
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"udp-probe-" + str(port).encode(), (host, int(port)))
        return "sent"
    except OSError as e:
        return "error:" + (e.strerror or str(e))
def sock(*a):
    try:
        socket.socket(*a).close()
        return "ok"
    except OSError as e:
        return "error:" + (e.strerror or str(e))
def cmd(*argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    return [p.returncode, (p.stderr or p.stdout).strip()[:200]]
gw, host_port, other = sys.argv[1], sys.argv[2], sys.argv[3]
out = {
    "host_loopback": tcp("127.0.0.1", host_port),
    "metadata": tcp("169.254.169.254", 80),
    "public": tcp("192.0.2.77", 443),
    "gw_other_port": tcp(gw, 22),
    "proxy": tcp(gw, 3128),
    "other_bot": tcp(other, 8000),
    "udp_dns": udp(gw, 53),
    "udp_other": udp(gw, 9999),
    "udp_out": udp("192.0.2.77", 53),
    "udp_other_bot": udp(other, 8000),
    "raw": sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "icmp_dgram": sock(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    "ipv6": open("/proc/sys/net/ipv6/conf/all/disable_ipv6").read().strip(),
    "routes": open("/proc/net/route").read().count("\n") - 1,
    "ip_addr_add": cmd("/usr/sbin/ip", "addr", "add", "10.9.9.9/32", "dev", "eth0"),
    "ip_route_add": cmd("/usr/sbin/ip", "route", "add", "192.0.2.0/24", "dev", "eth0"),
    "ip_link_down": cmd("/usr/sbin/ip", "link", "set", "eth0", "down"),
    "nft": cmd("/usr/sbin/nft", "add", "table", "inet", "x"),
    "tc": cmd("/usr/sbin/tc", "qdisc", "del", "dev", "eth0", "root"),
}
print(json.dumps(out))
"""


def test_bot_reaches_only_the_gateway(
    manager: LinkManager, gateway: FakeGateway, host_server: tuple[int, list[str]]
) -> None:
    port, host_peers = host_server
    other = manager.attach("other", 0, BotPolicy(name="other", command=("true",), egress="open"))
    # bot B listens on its own address: reachable from inside its namespace, not from bot A
    listener_b = netns.socket_in(netns.open_netns(other.netns))
    listener_b.bind(("0.0.0.0", 8000))
    listener_b.listen(4)
    udp_b = netns.socket_in(netns.open_netns(other.netns), socket.AF_INET, socket.SOCK_DGRAM)
    udp_b.bind(("0.0.0.0", 8000))
    udp_b.settimeout(0.5)
    udp_other = netns.socket_in(manager.gateway_netns_fd, socket.AF_INET, socket.SOCK_DGRAM)
    udp_other.bind(("0.0.0.0", 9999))
    udp_other.settimeout(0.5)
    try:
        link = manager.attach("probe", 0, BotPolicy(name="probe", command=("true",), egress="open"))
        seen_before = len(gateway.seen)
        out = run_bot(manager, "probe", PROBE, link.gw_addr, str(port), other.bot_addr)
        new = gateway.seen[seen_before:]

        # positive control: the host's loopback service works from the host
        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
            assert c.recv(16) == b"host\n"
        assert host_peers == ["127.0.0.1"]  # only the control ever reached it

        # the bot's 127.0.0.1 is its own: the host's service is not there
        assert out["host_loopback"].startswith("error:Connection refused"), out
        # every other TCP connection ends at the gateway, which sees the original destination
        for key in ("metadata", "public", "gw_other_port", "other_bot"):
            assert out[key] == "open:gateway", (key, out)
        assert (link.bot_addr, "169.254.169.254", 80) in new
        assert (link.bot_addr, "192.0.2.77", 443) in new
        assert (link.bot_addr, other.bot_addr, 8000) in new  # intercepted, never delivered to B
        assert out["proxy"] == "open:gateway"
        with pytest.raises(BlockingIOError):
            listener_b.setblocking(False)
            listener_b.accept()
        # UDP: only DNS to the gateway arrives; the rest is dropped
        deadline = time.monotonic() + 2
        while not any(d == b"udp-probe-53" for _, d in gateway.udp) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (link.bot_addr, b"udp-probe-53") in gateway.udp
        with pytest.raises(TimeoutError):
            udp_other.recvfrom(100)
        with pytest.raises(TimeoutError):
            udp_b.recvfrom(100)
        # no raw or ICMP sockets for the bot; IPv6 off; one default route + the link's subnet
        assert out["raw"].startswith("error:"), out
        assert out["icmp_dgram"].startswith("error:"), out
        assert out["ipv6"] == "1"
        assert out["routes"] == 2
        # the bot cannot change its address, routes, link, firewall or shaping
        for key in ("ip_addr_add", "ip_route_add", "ip_link_down", "nft", "tc"):
            rc, msg = out[key]
            assert rc != 0 and ("not permitted" in msg.lower() or "permission" in msg.lower()), (key, out)
    finally:
        for s in (listener_b, udp_b, udp_other):
            s.close()
        manager.detach("other", 0)
        manager.detach("probe", 0)


def test_positive_control_root_may_change_a_scratch_namespace() -> None:
    """The commands the bot was refused work as root in a namespace of our own."""
    name = f"clawpen-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", "10.9.9.9/32", "dev", "lo"],
            ["ip", "route", "add", "192.0.2.0/24", "dev", "lo"],
            ["nft", "add", "table", "inet", "x"],
        ):
            done = subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True)
            assert done.returncode == 0, (argv, done.stderr)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def _ping(fd: int, addr: str) -> bool:
    """One ICMP echo as root from namespace ``fd`` (a raw socket); True if answered within 1 s."""
    s = netns.socket_in(fd, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        body = struct.pack("!BBHHH", 8, 0, 0, 0x4321, 1) + b"clawpen"
        total = sum(struct.unpack(f"!{len(body) // 2}H", body[: len(body) // 2 * 2]))
        total += body[-1] << 8 if len(body) % 2 else 0
        total = (total >> 16) + (total & 0xFFFF)
        csum = ~(total + (total >> 16)) & 0xFFFF
        s.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (addr, 0))
        s.settimeout(1.0)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                return False
            ihl = (data[0] & 0x0F) * 4
            if peer[0] == addr and data[ihl] == 0:  # echo reply
                return True
        return False
    finally:
        s.close()


def test_icmp_from_a_bot_is_dropped_even_for_root(manager: LinkManager) -> None:
    link = manager.attach("icmp", 0, BotPolicy(name="icmp", command=("true",), egress="open"))
    bot_fd = netns.open_netns(link.netns)
    try:
        # root inside the bot's namespace (more than a bot can do) still gets no answer
        assert not _ping(bot_fd, link.gw_addr)
        # positive control: the link itself carries ICMP (gateway -> bot, reply is established)
        assert _ping(manager.gateway_netns_fd, link.bot_addr)
    finally:
        os.close(bot_fd)
        manager.detach("icmp", 0)


def test_forwarding_is_off_and_rules_are_loaded(manager: LinkManager) -> None:
    gw = manager.gateway_netns_fd
    forward = netns.netns_thread_call(gw, lambda: Path("/proc/sys/net/ipv4/ip_forward").read_text().strip())
    assert forward == "0"
    rules = subprocess.run(
        ["nsenter", f"--net=/proc/{os.getpid()}/fd/{gw}", "nft", "list", "table", "inet", "clawpen"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "policy drop" in rules and "redirect to :3129" in rules


def test_allocation_survives_a_new_manager_and_detach_cleans_up(manager: LinkManager) -> None:
    policy = BotPolicy(name="keep", command=("true",), egress="open")
    link = manager.attach("keep", 3, policy)
    again = LinkManager(manager.dir.parent)  # a restarted daemon
    try:
        adopted = again.adopt("keep", 3, policy)
        assert adopted is not None and adopted.bot_addr == link.bot_addr and adopted.netns == link.netns
        assert again.by_source(link.bot_addr) is not None
        assert again.by_source(link.bot_addr).bot == "keep"  # type: ignore[union-attr]
        again.detach("keep", 3)
        assert again.by_source(link.bot_addr) is None
        assert not os.path.exists(link.netns)
        names = netns.netns_thread_call(
            manager.gateway_netns_fd, lambda: [n for _, n in socket.if_nameindex()]
        )
        assert link.ifname not in names
        assert again.adopt("keep", 3, policy) is None
    finally:
        again.close()
        manager.detach("keep", 3)


def test_bwrap_does_not_get_a_network_namespace_of_its_own(manager: LinkManager) -> None:
    script = "import json,socket; print(json.dumps({'ifs': [n for _, n in socket.if_nameindex()]}))"
    out = run_bot(manager, "ifs", script)
    manager.detach("ifs", 0)
    assert out["ifs"] == ["lo", "eth0"]


def test_a_plan_with_a_preview_link_is_refused_by_the_tier(tmp_path: Path) -> None:
    """`clawpen run` of a bot with egress (no daemon, so no link): refused, nothing left."""
    os.environ["CLAWPEN_UID_BASE"] = str(session_uid_base())
    policy = BotPolicy(name="nolink", command=("true",), egress="open")
    plan = build_plan(policy, identity_for("nolink", tmp_path), HostFacts.probe(), default_policy())
    assert plan.link is not None and plan.link.preview
    with pytest.raises(UsageError) as err:
        NamespaceTier(tmp_path).start(plan, cgroup_name=f"nolink-t{uuid.uuid4().hex[:6]}")
    assert "egress" in err.value.what and err.value.hint == "run it under the daemon: clawpen up"


def _limit_table(gw: int) -> str:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{os.getpid()}/fd/{gw}", "nft", "list", "table", "inet", "clawpen_limit"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_kernel_flood_limits_are_loaded_and_rise_with_a_bots_quotas(manager: LinkManager) -> None:
    from clawpen.spec.quotas import NetLimits

    gw = manager.gateway_netns_fd
    assert "limit rate over 100/second burst 200 packets" in _limit_table(gw)  # the defaults
    fast = BotPolicy(
        name="fast", command=("true",), egress="open", net_limits=NetLimits(connections_per_s=400.0)
    )
    manager.attach("fast", 0, fast)
    try:
        table = _limit_table(gw)
        # the kernel would otherwise drop SYNs the gateway admits to this bot
        assert "limit rate over 800/second" in table and "100/second" not in table
        manager.detach("fast", 0)
        plain = BotPolicy(name="plain", command=("true",), egress="open")
        manager.attach("plain", 0, plain)
        assert "limit rate over 800/second" in _limit_table(gw)  # never lowered while running
        manager.detach("plain", 0)
    finally:
        manager.detach("fast", 0)
