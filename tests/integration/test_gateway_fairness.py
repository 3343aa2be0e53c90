"""One bot cannot starve another bot's connections through the gateway (issue 13, items 1-2).

Two bots on the fake internet of gateway_env.py: ``alpha`` (the attacker, the env's own bot)
and ``beta`` (the victim, a second namespace and link made here). While alpha holds slow
heads (a CONNECT line and then nothing; the first 6 bytes of a TLS record to :443) or opens
connections as fast as it can, beta's fetches through the proxy and transparently still take
well under a second; alpha's slow heads are closed after the deadline, over-limit connections
are refused and counted, and afterwards the gateway holds no more descriptors than before.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from gateway_env import EGRESS, GW_ADDR, WWW_ADDR, Env, Registry

from clawpen.net.fair import MAX_HEADS
from clawpen.net.gateway import Gateway
from clawpen.net.resolve import Resolver
from clawpen.net.types import BotLink
from clawpen.netns import socket_in

pytestmark = [pytest.mark.netns, pytest.mark.root, pytest.mark.slow]

VICTIM_ADDR, VICTIM_GW = "10.213.0.6", "10.213.0.5"
FIRST_BYTE, DEADLINE = 3.0, 4.0  # the gateway's head deadlines in this test (defaults 5 / 10)
FAST = 1.0  # seconds: the victim's fetch must take less than this under attack


class TwoBots(Env):
    def build_two(self) -> None:
        self.build()
        assert self.gateway is not None
        self.gateway.stop()  # replaced by one that knows both bots and has short deadlines
        self.victim = f"clawpen-t-{self.tag}-vic"
        self.add_netns(self.victim)
        self.wire_bot(self.victim, f"cb{self.tag}v", VICTIM_GW, VICTIM_ADDR)
        links = [
            BotLink("alpha", 0, "10.213.0.2", GW_ADDR, EGRESS),
            BotLink("beta", 0, VICTIM_ADDR, VICTIM_GW, EGRESS),
        ]
        assert self.log is not None
        self.gateway = Gateway(
            Registry(links),
            self.log,
            Resolver(["45.79.0.53"]),
            netns_fd=self.fds[self.gw],
            upstream_netns_fd=self.fds[self.up],
            first_byte=FIRST_BYTE,
            head_deadline=DEADLINE,
        )
        self.gateway.start()

    def close(self) -> None:
        super().close()
        subprocess.run(["ip", "netns", "del", f"clawpen-t-{self.tag}-vic"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoBots]:
    e = TwoBots(tmp_path_factory.mktemp("gwfair"))
    try:
        e.build_two()
        yield e
    finally:
        e.close()


def _victim_fetches(env: TwoBots) -> list[float]:
    """Two fetches through the proxy, two transparent ones; each one's time (curl's own)."""
    times = []
    for args in (
        ["-x", f"http://{VICTIM_GW}:3128", "https://www.allowed.test/v"],
        ["--noproxy", "*", "--resolve", f"www.allowed.test:443:{WWW_ADDR}", "https://www.allowed.test/t"],
    ) * 2:
        got = env.curl("-w", "\n%{time_total}", *args, ns=env.victim)
        assert got.returncode == 0, got.stderr
        assert f"hello from {WWW_ADDR}:443 host=www.allowed.test" in got.stdout
        times.append(float(got.stdout.rsplit("\n", 1)[1]))
    return times


def _baseline(env: TwoBots) -> int:
    env.rows(bot="alpha")  # the log reader's own descriptors are open once
    return _fds()


def _names() -> list[str]:
    out = []
    for n in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{n}"))
    return sorted(out)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _closed(sock: socket.socket) -> bytes | None:
    """What the gateway sent before it closed ``sock`` (None: still open after 0.2 s)."""
    sock.settimeout(0.2)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def _settle_fds(limit: int) -> int:
    deadline = time.monotonic() + 5
    while _fds() > limit and time.monotonic() < deadline:
        time.sleep(0.1)
    return _fds()


def test_slow_heads_do_not_stall_another_bot(env: TwoBots) -> None:
    assert env.gateway is not None
    quiet = _victim_fetches(env)  # positive control, and warms the worker threads
    assert max(quiet) < FAST, quiet
    baseline = _baseline(env)
    before = env.gateway.stats().get("alpha", {}).get("refused_heads", 0)
    slow: list[socket.socket] = []
    t0 = time.monotonic()
    try:
        # Half the cap of slow CONNECT heads, half of slow TLS records (held), then as many
        # again of both (over the cap: refused at once).
        for _ in range(2):
            for target, first in (
                ((GW_ADDR, 3128), b"CONNECT www.allowed.test:443 HTTP/1.1\r\n"),
                ((WWW_ADDR, 443), b"\x16\x03\x01\x02\x00\x01"),  # redirected to the transparent port
            ):
                for _ in range(MAX_HEADS // 2):
                    s = env.sock(env.bot)
                    slow.append(s)
                    with contextlib.suppress(ConnectionResetError):  # the reset may meet connect()
                        s.connect(target)
                        s.sendall(first)
        _slow_heads(env, slow, t0, baseline, before)
    finally:
        for s in slow:
            s.close()


def _slow_heads(env: TwoBots, slow: list[socket.socket], t0: float, baseline: int, before: int) -> None:
    assert env.gateway is not None
    time.sleep(0.2)
    assert env.gateway.fair.active(("alpha", 0))[1] == MAX_HEADS  # the cap holds them
    attacked = _victim_fetches(env)
    assert max(attacked) < FAST, attacked
    assert time.monotonic() - t0 < FIRST_BYTE  # the victim ran while the attack was on
    assert env.gateway.fair.active(("alpha", 0))[1] == MAX_HEADS
    # Over the cap: the second half were refused at once (429 or reset), and counted.
    refused = env.gateway.stats()["alpha"]["refused_heads"] - before
    assert refused == MAX_HEADS
    half = MAX_HEADS // 2
    over = [_closed(s) for s in slow[MAX_HEADS:]]
    assert all(a is not None for a in over), "a connection over the cap is still open"
    assert all(a == b"" or (a or b"").startswith(b"HTTP/1.1 429") for a in over), over
    assert all(a == b"" for a in over[half:])  # TLS: reset
    # The held slow heads are closed after the deadline: 408 for the proxy, a reset for TLS.
    held = slow[:MAX_HEADS]
    assert all(_closed(s) is None for s in held)
    time.sleep(max(0.0, t0 + DEADLINE + 0.5 - time.monotonic()))
    answers = [_closed(s) for s in held]
    assert all(a is not None for a in answers), "a slow head is still open after the deadline"
    assert all((a or b"").startswith(b"HTTP/1.1 408") for a in answers[:half]), answers
    assert all(a == b"" for a in answers[half:])
    assert env.gateway.fair.active(("alpha", 0)) == (0, 0)
    assert env.gateway.stats()["alpha"]["head_timeouts"] >= MAX_HEADS
    for s in slow:
        s.close()
    assert env.wait_row(lambda r: r["kind"] == "transparent" and "no TLS SNI" in r["reason"], denied=True)
    assert env.wait_row(lambda r: r["kind"] == "proxy" and "request head" in r["reason"], denied=True)
    assert _settle_fds(baseline) <= baseline, _names()
    assert max(_victim_fetches(env)) < FAST  # and the gateway still serves


def test_connection_flood_is_rate_limited(env: TwoBots) -> None:
    assert env.gateway is not None
    _victim_fetches(env)
    baseline = _baseline(env)
    stop = threading.Event()
    opened = [0]

    def flood() -> None:
        while not stop.is_set():
            s = socket_in(env.fds[env.bot], socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            try:
                s.connect((GW_ADDR, 3128))
                opened[0] += 1
            except OSError:
                pass
            finally:
                s.close()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        attacked = _victim_fetches(env)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert max(attacked) < FAST, attacked
    stats = env.gateway.stats()
    assert opened[0] > 300  # the flood really ran far above the rate
    assert stats["alpha"]["refused_rate"] > 0
    assert stats.get("beta", {}).get("refused_rate", 0) == 0
    assert _settle_fds(baseline) <= baseline, _names()
