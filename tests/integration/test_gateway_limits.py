"""Each bot's own ``network.limits`` hold at the real gateway, next to a bot with the defaults.

Two bots on the fake internet of gateway_env.py: ``alpha`` (the env's own bot) has small limits
in its link record (``connections = 4``, 3 DNS queries and then next to none, one DNS-over-TCP
connection), ``beta`` (a second namespace and link made here) has none, so the defaults. The
same actions are refused for alpha and work for beta (the positive control), and alpha's link
registered again with the defaults gets them at once.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

import dns.message
import dns.rdatatype
import pytest
from gateway_env import BOT_ADDR, EGRESS, GW_ADDR, WWW_ADDR, Env, Registry

from clawpen.net.gateway import Gateway
from clawpen.net.resolve import Resolver
from clawpen.net.types import BotLink
from clawpen.spec.quotas import DEFAULT_NET_LIMITS

pytestmark = [pytest.mark.netns, pytest.mark.root]

BETA_ADDR, BETA_GW = "10.213.0.6", "10.213.0.5"
SMALL = DEFAULT_NET_LIMITS._replace(connections=4, dns_per_s=0.01, dns_burst=3, dns_tcp_connections=1)


class LimitsEnv(Env):
    def build_two(self) -> None:
        self.build()
        assert self.gateway is not None and self.log is not None
        self.gateway.stop()  # replaced by one that knows both bots
        self.beta = f"clawpen-t-{self.tag}-beta"
        self.add_netns(self.beta)
        self.wire_bot(self.beta, f"cb{self.tag}b", BETA_GW, BETA_ADDR)
        self.alpha_link = BotLink("alpha", 0, BOT_ADDR, GW_ADDR, EGRESS, (), SMALL)
        self.registry = Registry([self.alpha_link, BotLink("beta", 0, BETA_ADDR, BETA_GW, EGRESS)])
        self.gateway = Gateway(
            self.registry,
            self.log,
            Resolver(["45.79.0.53"]),
            netns_fd=self.fds[self.gw],
            upstream_netns_fd=self.fds[self.up],
            first_byte=20.0,  # idle connections stay for the whole test
            head_deadline=25.0,
        )
        self.gateway.start()

    def close(self) -> None:
        super().close()
        subprocess.run(["ip", "netns", "del", f"clawpen-t-{self.tag}-beta"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitsEnv]:
    e = LimitsEnv(tmp_path_factory.mktemp("gwlimits"))
    try:
        e.build_two()
        yield e
    finally:
        e.close()


def _fetch(env: LimitsEnv, ns: str, gw: str) -> subprocess.CompletedProcess[str]:
    return env.curl("-x", f"http://{gw}:3128", "https://www.allowed.test/x", ns=ns)


def _fetched(got: subprocess.CompletedProcess[str]) -> bool:
    return got.returncode == 0 and f"hello from {WWW_ADDR}:443 host=www.allowed.test" in got.stdout


def _idle(env: LimitsEnv, ns: str, gw: str, port: int = 3128) -> socket.socket:
    s = env.sock(ns)
    s.connect((gw, port))
    return s


def _answer(sock: socket.socket) -> bytes | None:
    """What the gateway sent before closing ``sock``; None: still open after 0.3 s."""
    sock.settimeout(0.3)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def _settled(env: LimitsEnv, key: tuple[str, int]) -> bool:
    assert env.gateway is not None
    deadline = time.monotonic() + 5
    while env.gateway.fair.active(key) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return env.gateway.fair.active(key) == (0, 0)


def test_a_bot_with_connections_4_is_refused_its_5th_and_a_bot_with_defaults_is_not(env: LimitsEnv) -> None:
    assert env.gateway is not None
    assert _fetched(_fetch(env, env.bot, GW_ADDR))  # alpha works below its limit
    assert _settled(env, ("alpha", 0))
    held: list[socket.socket] = []
    try:
        held += [_idle(env, env.bot, GW_ADDR) for _ in range(4)]
        assert all(_answer(s) is None for s in held), "a connection within the limit was closed"
        assert env.gateway.fair.active(("alpha", 0))[0] == 4
        fifth = _idle(env, env.bot, GW_ADDR)
        held.append(fifth)
        refusal = _answer(fifth)
        assert refusal is not None and refusal.startswith(b"HTTP/1.1 429"), refusal
        assert b"more than 4 open connections" in refusal
        got = _fetch(env, env.bot, GW_ADDR)  # a real fetch is refused too
        assert not _fetched(got) and "429" in got.stderr, got.stderr
        assert env.gateway.stats()["alpha"]["refused_busy"] >= 2
        # beta, with the defaults, holds more than alpha may and still fetches
        beta = [_idle(env, env.beta, BETA_GW) for _ in range(8)]
        held += beta
        assert all(_answer(s) is None for s in beta), "beta was refused below the default limit"
        assert _fetched(_fetch(env, env.beta, BETA_GW))
        assert env.gateway.stats().get("beta", {}).get("refused_busy", 0) == 0
        # alpha's link registered again with the defaults: its next connection is admitted
        env.registry.links[BOT_ADDR] = env.alpha_link._replace(limits=DEFAULT_NET_LIMITS)
        sixth = _idle(env, env.bot, GW_ADDR)
        held.append(sixth)
        assert _answer(sixth) is None
        assert _fetched(_fetch(env, env.bot, GW_ADDR))
    finally:
        env.registry.links[BOT_ADDR] = env.alpha_link
        for s in held:
            s.close()
    assert _settled(env, ("alpha", 0)) and _settled(env, ("beta", 0))


def _queries(env: LimitsEnv, ns: str, gw: str, count: int) -> int:
    """How many of ``count`` UDP queries sent at once from ``ns`` get an answer."""
    s = env.sock(ns, socket.SOCK_DGRAM)
    try:
        ids = set()
        for _ in range(count):
            q = dns.message.make_query("www.allowed.test", dns.rdatatype.A)
            ids.add(q.id)
            s.sendto(q.to_wire(), (gw, 53))
        s.settimeout(3.0)  # a loaded host answers late; a refused query never answers
        answered = set()
        with contextlib.suppress(TimeoutError):
            while len(answered) < count:
                reply = dns.message.from_wire(s.recv(4096))
                answered.add(reply.id)
        return len(answered & ids)
    finally:
        s.close()


def test_dns_queries_are_limited_by_each_bots_own_rate(env: LimitsEnv) -> None:
    assert _queries(env, env.beta, BETA_GW, 8) == 8  # defaults: a burst of 200
    assert _queries(env, env.bot, GW_ADDR, 8) == 3  # alpha: a burst of 3, then 0.01 a second
    assert _queries(env, env.beta, BETA_GW, 8) == 8  # alpha's flood left beta alone
    assert env.wait_row(lambda r: "query rate limit exceeded" in r["reason"], denied=True)


def test_dns_over_tcp_connections_are_capped_per_bot(env: LimitsEnv) -> None:
    held: list[socket.socket] = []
    try:
        first = _idle(env, env.bot, GW_ADDR, 53)
        held.append(first)
        assert _answer(first) is None  # alpha's one connection is kept
        second = _idle(env, env.bot, GW_ADDR, 53)
        held.append(second)
        assert _answer(second) == b""  # over its one: closed at once
        beta = [_idle(env, env.beta, BETA_GW, 53) for _ in range(3)]
        held += beta
        assert all(_answer(s) is None for s in beta)  # defaults: 8
        q = dns.message.make_query("www.allowed.test", dns.rdatatype.A).to_wire()
        beta[-1].settimeout(5)
        beta[-1].sendall(len(q).to_bytes(2, "big") + q)
        size = int.from_bytes(beta[-1].recv(2), "big")
        reply = dns.message.from_wire(beta[-1].recv(size))
        assert [str(r) for rr in reply.answer for r in rr] == [WWW_ADDR]
    finally:
        for s in held:
            s.close()
