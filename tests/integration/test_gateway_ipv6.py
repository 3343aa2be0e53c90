"""IPv6 egress of ``network.ipv6`` bots, under the same checks as IPv4 (issue 13, item 4).

Real links from a :class:`LinkManager` (its own gateway namespace with the clawpen ruleset),
the real gateway, and the fake internet of gateway_env.py with IPv6 (:meth:`Env.add_ipv6`):

* ``six``: ``network.ipv6``, an allowlist; ``open6``: ``network.ipv6``, ``egress = "open"``;
* ``four``: no IPv6, the same allowlist as ``six``.

Every refused attempt runs for real from a bot's namespace; a positive control shows the same
destination answers when asked from the upstream namespace, or when allowed.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from gateway_env import (
    DNS_ADDR,
    NAT64_PRIVATE,
    OTHER6,
    ULA6,
    UP6,
    WWW6,
    WWW_ADDR,
    Env,
)
from helpers import PY, session_uid_base

from clawpen import netns
from clawpen.net import nft
from clawpen.net.gateway import Gateway
from clawpen.net.links import Link, LinkManager
from clawpen.net.resolve import Resolver
from clawpen.net.types import ipv6_of
from clawpen.plan.build import HostFacts, build_plan
from clawpen.sandbox.namespace import NamespaceTier
from clawpen.sandbox.seccomp import default_policy
from clawpen.sandbox.tier import Stdio
from clawpen.sandbox.users import identity_for
from clawpen.spec.policy import BotPolicy

pytestmark = [pytest.mark.netns, pytest.mark.root]

EGRESS6 = (
    "www.allowed.test:443",
    "www.allowed.test:8443",
    "www.allowed.test:80",
    "ula.allowed.test:443",
    "nat64.allowed.test:443",
)


class V6Env(Env):
    """The fake internet with IPv6, and three bots on real LinkManager links."""

    def build_v6(self) -> None:
        self.build()
        self.add_ipv6()
        assert self.gateway is not None and self.log is not None
        self.gateway.stop()  # replaced by one on the LinkManager's gateway namespace
        self.manager = LinkManager(self.tmp / "state")
        self.links: dict[str, Link] = {}
        for name, egress, ipv6 in (("six", EGRESS6, True), ("open6", "open", True), ("four", EGRESS6, False)):
            policy = BotPolicy(name=name, command=("true",), egress=egress, ipv6=ipv6)
            self.links[name] = self.manager.attach(name, 0, policy)
            self.fds[name] = netns.open_netns(self.links[name].netns)
        self.gateway = Gateway(
            self.manager,
            self.log,
            Resolver([DNS_ADDR]),
            netns_fd=self.manager.gateway_netns_fd,
            upstream_netns_fd=self.fds[self.up],
        )
        self.gateway.start()

    def close(self) -> None:
        for name in ("six", "open6", "four"):
            fd = self.fds.pop(name, None)
            if fd is not None:
                os.close(fd)
        try:
            super().close()
        finally:
            if hasattr(self, "manager"):
                self.manager.destroy()

    # ------------------------------------------------------------ from a bot's namespace
    def in_bot(self, bot: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as root in the bot's namespace (more than a bot may do)."""
        return subprocess.run(
            ["nsenter", f"--net={self.links[bot].netns}", *argv], capture_output=True, text=True, check=False
        )

    def ask(
        self, bot: str, name: str, rdtype: str = "A", server: str | None = None, timeout: float = 3
    ) -> dns.message.Message:
        s = netns.socket_in(self.fds[bot], socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        with s:
            q = dns.message.make_query(name, rdtype)
            return dns.query.udp(q, server or self.links[bot].gw_addr, timeout=timeout, sock=s)

    def connect(self, bot: str, addr: str, port: int, source: str = "", timeout: float = 3) -> socket.socket:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = netns.socket_in(self.fds[bot], family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            if source:
                s.bind((source, 0))
            s.connect((addr, port))
        except BaseException:
            s.close()
            raise
        return s

    def https(self, bot: str, addr: str, port: int, sni: str = "www.allowed.test") -> str:
        """A GET over TLS from the bot's namespace straight to ``addr`` (no proxy): the body,
        or "refused: ..." when the gateway closed or reset the connection."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        raw = netns.socket_in(
            self.fds[bot], socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM
        )
        raw.settimeout(3)
        try:
            # wrapped before it connects: CPython's wrap_socket of a connected socket the peer has
            # already reset raises from its "not connected?" probe and leaks the TLS socket it
            # made (a CI run saw the ResourceWarning after a quick refusal by the gateway)
            with ctx.wrap_socket(raw, server_hostname=sni, do_handshake_on_connect=False) as tls:
                tls.connect((addr, port))
                tls.do_handshake()
                tls.sendall(f"GET /v6 HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
            return data.decode(errors="replace")
        except (OSError, ssl.SSLError) as err:
            return f"refused: {err}"
        finally:
            raw.close()  # detached by the wrap (a no-op then), unless the wrap itself failed

    def row(self, bot: str, **match: object) -> dict[str, object] | None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for r in reversed(self.rows(bot=bot)):
                if all(str(v) in str(r[k]) for k, v in match.items()):
                    return r
            time.sleep(0.05)
        return None

    def guard_drops(self) -> list[int]:
        """The packet counts of the guard's two counted drop rules (spoofed; foreign local)."""
        text = nft.listing(self.manager.gateway_netns_fd)
        guard = text[text.index("chain guard") : text.index("chain intercept")]
        return [int(line.split("packets ")[1].split()[0]) for line in guard.splitlines() if "packets" in line]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V6Env]:
    e = V6Env(tmp_path_factory.mktemp("gw6"))
    try:
        e.build_v6()
        yield e
    finally:
        e.close()


def aaaa(reply: dns.message.Message) -> list[str]:
    return [rd.address for rr in reply.answer if rr.rdtype == dns.rdatatype.AAAA for rd in rr]


def a(reply: dns.message.Message) -> list[str]:
    return [rd.address for rr in reply.answer if rr.rdtype == dns.rdatatype.A for rd in rr]


def test_links_of_ipv6_bots_have_ipv6_and_the_others_none(env: V6Env) -> None:
    six, four = env.links["six"], env.links["four"]
    assert six.bot_addr6 == ipv6_of(six.bot_addr) and six.gw_addr6 == ipv6_of(six.gw_addr)
    addrs = env.in_bot("six", "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    line = next(ln for ln in addrs.splitlines() if f"{six.bot_addr6}/126" in ln)
    assert "nodad" in line and "tentative" not in line  # usable at once
    assert f"default via {six.gw_addr6}" in env.in_bot("six", "ip", "-6", "route").stdout
    sysctl = "/proc/sys/net/ipv6/conf/eth0/"
    got = env.in_bot("six", "cat", *(sysctl + k for k in ("accept_ra", "autoconf", "accept_dad"))).stdout
    assert got.split() == ["0", "0", "0"]
    gw = f"--net={env.manager.gw_path}"
    gw_addrs = subprocess.run(["nsenter", gw, "ip", "-6", "-o", "addr"], capture_output=True, text=True)
    assert f"{six.gw_addr6}/126" in gw_addrs.stdout and four.ifname not in gw_addrs.stdout
    forwarding = subprocess.run(
        [
            "nsenter",
            gw,
            "cat",
            "/proc/sys/net/ipv6/conf/all/forwarding",
            f"/proc/sys/net/ipv6/conf/{six.ifname}/forwarding",
        ],
        capture_output=True,
        text=True,
    )
    assert forwarding.stdout.split() == ["0", "0"]
    assert env.in_bot("four", "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6").stdout.strip() == "1"
    assert env.manager.by_source(six.bot_addr6) == env.manager.by_source(six.bot_addr)
    # a restarted daemon finds both addresses again (derived from the block and the cb end)
    again = LinkManager(env.tmp / "state")
    try:
        adopted = again.adopt("six", 0, BotPolicy(name="six", command=("true",), egress=EGRESS6, ipv6=True))
        assert adopted == six
        found = again.by_source(six.bot_addr6.upper())
        assert found is not None and found.bot == "six" and found.gw_addr6 == six.gw_addr6
        plain = again.adopt("four", 0, BotPolicy(name="four", command=("true",), egress=EGRESS6))
        assert plain == four and not plain.ipv6 and again.by_source(ipv6_of(four.bot_addr)) is None
    finally:
        again.close()


def test_ipv6_bot_reaches_an_allowed_name_over_ipv6(env: V6Env) -> None:
    assert aaaa(env.ask("six", "www.allowed.test", "AAAA")) == [WWW6]
    assert a(env.ask("six", "www.allowed.test")) == [WWW_ADDR]
    server = env.server(WWW6, 443)
    before = len(getattr(server, "peers", []))
    body = env.https("six", WWW6, 443)
    assert f"hello from {WWW6}:443 host=www.allowed.test path=/v6" in body, body
    assert server.peers[before:] == [UP6]  # the upstream saw an IPv6 connection from the gateway
    # port 8443 carries no name the gateway reads: the address the DNS gave (AAAA) lets it pass
    body = env.https("six", WWW6, 8443)
    assert f"hello from {WWW6}:8443" in body, body
    assert env.row("six", kind="transparent", host="www.allowed.test", port=8443, verdict="allowed")


def test_ipv6_bot_is_refused_what_the_allowlist_or_address_checks_refuse(env: V6Env) -> None:
    outside = env.curl("-6", "--noproxy", "*", "-k", f"https://[{OTHER6}]/", ns=env.up)
    assert outside.returncode == 0 and f"hello from {OTHER6}:443" in outside.stdout  # positive control
    assert env.ask("six", "other.test", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert env.https("six", OTHER6, 443, sni="other.test").startswith("refused")
    assert env.row("six", host="other.test", verdict="denied", reason="not in the egress allowlist")
    assert env.https("six", OTHER6, 8443).startswith("refused")  # never resolved through the DNS
    assert env.row("six", host=OTHER6, port=8443, reason="was not resolved")
    # allowlisted names whose only AAAA is a ULA or a NAT64 address carrying 10.0.0.5
    for name in ("ula.allowed.test", "nat64.allowed.test"):
        reply = env.ask("six", name, "AAAA")
        assert reply.rcode() == dns.rcode.NOERROR and aaaa(reply) == [], name
        with env.connect("six", env.links["six"].gw_addr6, 3128) as s:
            s.sendall(f"CONNECT {name}:443 HTTP/1.1\r\n\r\n".encode())
            reply_head = s.recv(4096)
        assert reply_head.startswith(b"HTTP/1.1 403") and b"refused address" in reply_head, reply_head
    assert env.row("six", host="nat64.allowed.test", reason="NAT64")
    assert env.row("six", host="ula.allowed.test", reason="unique-local")


def test_open_ipv6_bot_is_refused_private_host_and_nat64_literals(env: V6Env) -> None:
    assert f"hello from {WWW6}:8443" in env.https("open6", WWW6, 8443)  # positive control (open)
    for addr in (ULA6, UP6):  # both answer from the upstream namespace...
        outside = env.curl("-6", "-k", f"https://[{addr}]:8443/", ns=env.up)
        assert outside.returncode == 0 and "hello" in outside.stdout, addr
    for addr, why in ((ULA6, "unique-local"), (UP6, "address of this host"), (NAT64_PRIVATE, "NAT64")):
        got = env.https("open6", addr, 8443)  # ...but not from the bot
        assert got.startswith("refused"), (addr, got)
        assert env.row("open6", host=addr, verdict="denied", reason=why), addr
    assert env.row("open6", reason="carries 10.0.0.5")


def test_bot_without_ipv6_gets_no_aaaa_and_sends_no_ipv6(env: V6Env) -> None:
    four = env.links["four"]
    assert a(env.ask("four", "www.allowed.test")) == [WWW_ADDR]  # positive control
    reply = env.ask("four", "www.allowed.test", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    with pytest.raises(OSError):
        env.connect("four", WWW6, 443)  # no IPv6 in its namespace
    # root in the bot's namespace turns IPv6 on and gives itself the address an IPv6 link would
    # have: nothing gets through (the cb end has no IPv6, and the guard drops what has no route)
    me, gw6 = ipv6_of(four.bot_addr), ipv6_of(four.gw_addr)
    env.in_bot("four", "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
    try:
        for argv in (
            ["ip", "-6", "addr", "add", f"{me}/126", "dev", "eth0", "nodad"],
            ["ip", "-6", "route", "add", "default", "via", gw6],
        ):
            done = env.in_bot("four", *argv)
            assert done.returncode == 0, done.stderr
        for addr, port in ((WWW6, 443), (gw6, 3128), (env.links["six"].gw_addr6, 3128)):
            with pytest.raises(OSError):  # TimeoutError, or unreachable: never a connection
                env.connect("four", addr, port, timeout=0.5).close()
    finally:
        env.in_bot("four", "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    assert not any(":" in str(r["host"]) for r in env.rows(bot="four"))


def test_spoofed_ipv6_source_is_dropped(env: V6Env) -> None:
    six = env.links["six"]
    with env.connect("six", six.gw_addr6, 3128) as s:  # positive control: its own address
        s.sendall(b"CONNECT www.allowed.test:443 HTTP/1.1\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    spoofed = ("fd63:6c61:7770::9:9", env.links["open6"].bot_addr6, WWW6)
    for addr in spoofed:
        done = env.in_bot("six", "ip", "-6", "addr", "add", f"{addr}/128", "dev", "eth0", "nodad")
        assert done.returncode == 0, done.stderr
    try:
        for addr in spoofed:
            before = env.guard_drops()[0]
            with pytest.raises(TimeoutError):
                env.connect("six", six.gw_addr6, 3128, source=addr, timeout=0.5).close()
            assert env.guard_drops()[0] > before, addr  # dropped by the guard's source check
    finally:
        for addr in spoofed:
            env.in_bot("six", "ip", "-6", "addr", "del", f"{addr}/128", "dev", "eth0")


def test_a_bot_talks_only_to_its_own_gateway_address(env: V6Env) -> None:
    four, six, open6 = env.links["four"], env.links["six"], env.links["open6"]
    assert a(env.ask("four", "www.allowed.test")) == [WWW_ADDR]  # positive control: its own
    before = env.guard_drops()[1]
    with pytest.raises((dns.exception.Timeout, TimeoutError)):
        env.ask("four", "www.allowed.test", server=six.gw_addr, timeout=0.5)
    assert env.guard_drops()[1] > before
    for bot, own, other in ((four, four.gw_addr, six.gw_addr), (six, six.gw_addr6, open6.gw_addr6)):
        with env.connect(bot.bot, own, 3128) as s:  # positive control: the proxy on its own link
            s.sendall(b"CONNECT www.allowed.test:443 HTTP/1.1\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200"), bot
        before = env.guard_drops()[1]
        with pytest.raises(TimeoutError):
            env.connect(bot.bot, other, 3128, timeout=0.5).close()
        assert env.guard_drops()[1] > before, bot


def test_turning_ipv6_on_or_off_makes_the_link_again(env: V6Env) -> None:
    """A live link follows a changed ``network.ipv6`` at the bot's next start (same block)."""
    policy = BotPolicy(name="flip", command=("true",), egress=EGRESS6)
    try:
        plain = env.manager.attach("flip", 0, policy)
        assert not plain.ipv6 and env.manager.attach("flip", 0, policy) is plain  # unchanged: kept
        six = env.manager.attach("flip", 0, policy._replace(ipv6=True))
        assert six.ipv6 and six.block == plain.block
        assert env.manager.by_source(six.bot_addr6) is not None
        shown = ["nsenter", f"--net={six.netns}", "ip", "-6", "-o", "addr", "show", "dev", "eth0"]
        assert f"{six.bot_addr6}/126" in subprocess.run(shown, capture_output=True, text=True).stdout
        back = env.manager.attach("flip", 0, policy)
        assert not back.ipv6 and env.manager.by_source(six.bot_addr6) is None
        assert env.manager.by_source(back.bot_addr) is not None
        path = "/proc/sys/net/ipv6/conf/all/disable_ipv6"
        done = subprocess.run(["nsenter", f"--net={back.netns}", "cat", path], capture_output=True, text=True)
        assert done.stdout.strip() == "1"
    finally:
        env.manager.detach("flip", 0)


FETCH6 = r"""
import json, socket
out = {}
for family, key in ((socket.AF_INET6, "v6"), (socket.AF_INET, "v4")):
    try:
        infos = socket.getaddrinfo("www.allowed.test", 80, family, socket.SOCK_STREAM)
        addr = infos[0][4]
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(addr)
        s.sendall(b"GET /sandboxed HTTP/1.1\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        out[key] = [addr[0], data.decode(errors="replace").splitlines()[-1]]
    except OSError as e:
        out[key] = ["error", str(e)]
print(json.dumps(out))
"""


@pytest.mark.bwrap
def test_sandboxed_ipv6_bot_fetches_over_ipv6(env: V6Env) -> None:
    """A real sandbox (bubblewrap, the bot's own uid) in the ``six`` link's namespace: its
    resolver (the gateway's DNS) gives it the AAAA, and the IPv6 connection goes through."""
    state = env.manager.dir.parent
    os.environ["CLAWPEN_UID_BASE"] = str(session_uid_base())
    policy = BotPolicy(name="six", command=(PY, "-c", FETCH6), egress=EGRESS6, ipv6=True)
    link = env.manager.attach("six", 0, policy)
    plan = build_plan(
        policy, identity_for("six", state), HostFacts.probe(), default_policy(), link=link.for_plan(EGRESS6)
    )
    r, w = os.pipe()
    sandbox = NamespaceTier(state).start(
        plan, cgroup_name=f"six-t{uuid.uuid4().hex[:6]}", stdio=Stdio(stdout=w)
    )
    os.close(w)
    try:
        result = sandbox.wait(30)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
    finally:
        sandbox.teardown()
        os.close(r)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert result.exit_code == 0 and lines, f"bot failed: {result} {out!r}"
    got = json.loads(lines[-1])
    assert got["v6"] == [WWW6, f"hello from {WWW6}:80 host=www.allowed.test path=/sandboxed"], got
    assert got["v4"] == [WWW_ADDR, f"hello from {WWW_ADDR}:80 host=www.allowed.test path=/sandboxed"], got
    assert env.server(WWW6, 80).peers[-1] == UP6
