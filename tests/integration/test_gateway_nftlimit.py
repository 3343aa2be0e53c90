"""Per-source flood limits in the gateway namespace's kernel (clawpen.net.nftlimit, issue 13).

Two bots on the fake internet (``TwoBots`` of test_gateway_fairness.py), the gateway's nft
ruleset plus ``table inet clawpen_limit`` with small limits. ``alpha`` floods: a burst of SYNs
to the proxy port, a burst of DNS datagrams, more open connections than allowed. What is over
the limits is dropped in the kernel (counted by the table's counters; the gateway never sees
it), while ``beta``'s fetches and queries go through (positive control), and alpha itself gets
through again once it slows down.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from gateway_env import GW_ADDR
from test_gateway_fairness import FAST, VICTIM_GW, TwoBots, _victim_fetches

from clawpen.net import nft, nftlimit

pytestmark = [pytest.mark.netns, pytest.mark.root, pytest.mark.slow]

SYN_RATE, SYN_BURST, DNS_RATE, DNS_BURST = 10, 20, 10, 20


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoBots]:
    e = TwoBots(tmp_path_factory.mktemp("gwlimit"))
    try:
        e.build_two()
        yield e
    finally:
        e.close()


def _load(env: TwoBots, **kw: int) -> None:
    limits = {"syn_rate": SYN_RATE, "syn_burst": SYN_BURST, "dns_rate": DNS_RATE, "dns_burst": DNS_BURST}
    nft.apply(env.fds[env.gw], nftlimit.ruleset(**{**limits, **kw}))


def _drops(env: TwoBots) -> dict[str, int]:
    return nftlimit.drops(env.fds[env.gw])


def _connected_within(socks: list[socket.socket], seconds: float) -> int:
    """How many of these non-blocking connects completed (SYN answered) within ``seconds``."""
    deadline = time.monotonic() + seconds
    done: set[int] = set()
    while time.monotonic() < deadline and len(done) < len(socks):
        for i, s in enumerate(socks):
            if i not in done and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                with contextlib.suppress(OSError):
                    s.getpeername()  # raises while the SYN is still unanswered
                    done.add(i)
        time.sleep(0.02)
    return len(done)


def _query(ident: int, name: str) -> bytes:
    head = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return head + labels + b"\x00\x00\x01\x00\x01"


def test_syn_flood_is_dropped_in_the_kernel(env: TwoBots) -> None:
    _load(env)
    assert max(_victim_fetches(env)) < FAST  # positive control: beta's connections pass
    drops0 = _drops(env)
    socks = []
    try:
        for _ in range(100):  # 100 SYNs at once from alpha
            s = env.sock(env.bot)
            s.setblocking(False)
            assert s.connect_ex((GW_ADDR, 3128)) in (0, errno.EINPROGRESS)
            socks.append(s)
        got = _connected_within(socks, 0.5)
        attacked = _victim_fetches(env)  # beta, while alpha's SYNs wait for their retransmit
    finally:
        for s in socks:
            s.close()
    assert SYN_BURST <= got <= SYN_BURST + SYN_RATE + 5, got  # the burst, then the rate
    assert _drops(env)["syn_rate"] - drops0["syn_rate"] >= 100 - got
    assert max(attacked) < FAST, attacked
    # Slowed down, alpha gets through again (its bucket refills at SYN_RATE a second).
    time.sleep(1.0)
    with env.sock(env.bot) as s:
        s.settimeout(1.0)
        s.connect((GW_ADDR, 3128))
        s.sendall(b"CONNECT www.allowed.test:443 HTTP/1.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_dns_flood_is_dropped_in_the_kernel(env: TwoBots) -> None:
    _load(env)
    drops0 = _drops(env)
    with env.sock(env.bot, socket.SOCK_DGRAM) as s:
        s.connect((GW_ADDR, 53))
        for i in range(100):
            s.send(_query(i, "www.allowed.test"))
        answered = 0
        s.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while s.recv(4096):
                answered += 1
    assert DNS_BURST - 2 <= answered <= DNS_BURST + DNS_RATE, answered
    assert _drops(env)["dns_rate"] - drops0["dns_rate"] >= 100 - answered
    with env.sock(env.victim, socket.SOCK_DGRAM) as s:  # beta's query, right after
        s.settimeout(2)
        s.sendto(_query(7, "www.allowed.test"), (VICTIM_GW, 53))
        reply = s.recv(4096)
        assert reply[:2] == b"\x00\x07" and reply[3] & 0x0F == 0  # answered, NOERROR


def test_open_connections_are_capped_in_the_kernel(env: TwoBots) -> None:
    cap = 6  # below the gateway's own head limit, so the gateway holds all of them
    _load(env, syn_rate=1000, syn_burst=1000, max_open=cap)
    drops0 = _drops(env)
    held = []
    try:
        for _ in range(cap):
            s = env.sock(env.bot)
            s.connect((GW_ADDR, 3128))
            s.sendall(b"CONNECT www.allowed.test:443 HTTP/1.1\r\n")  # a slow head: held
            held.append(s)
        with env.sock(env.bot) as extra:
            extra.settimeout(0.5)
            with pytest.raises(TimeoutError):
                extra.connect((GW_ADDR, 3128))
        assert _drops(env)["open"] - drops0["open"] >= 1
        assert max(_victim_fetches(env)) < FAST  # beta is not capped by alpha's count
        held.pop().close()
        time.sleep(0.3)  # the closed one leaves the count
        with env.sock(env.bot) as again:
            again.settimeout(2)
            again.connect((GW_ADDR, 3128))
    finally:
        for s in held:
            s.close()
