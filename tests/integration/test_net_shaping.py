"""Bandwidth shaping of a bot's link, measured for real (a Python sender over the veth pair).

The receiver sits in the gateway namespace on the proxy port (the only TCP port the gateway
namespace accepts from a link); the sender in the bot's namespace. Throughput is measured after
the first 0.5 s (the bucket's burst) over a 2 s window, and must be within +/-10% of the set
rate (TCP payload is ~96% of what tc counts, as headers are counted too).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from clawpen import netns
from clawpen.net.links import LinkManager
from clawpen.net.types import PROXY_PORT
from clawpen.spec.policy import BotPolicy

pytestmark = [pytest.mark.root, pytest.mark.netns]
RATE = 24_000_000  # bits/s
WARMUP, WINDOW = 0.5, 2.0


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkManager]:
    lm = LinkManager(tmp_path_factory.mktemp("net-shape"))
    try:
        yield lm
    finally:
        lm.destroy()


def measure(manager: LinkManager, bot: str, upload: bool) -> float:
    """Payload bits per second from bot to gateway (``upload``) or back, in the steady state."""
    link = manager.link(bot, 0)
    assert link is not None
    srv = netns.socket_in(manager.gateway_netns_fd)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((link.gw_addr, PROXY_PORT))
    srv.listen(1)
    fd = netns.open_netns(link.netns)
    try:
        cli = netns.socket_in(fd)
    finally:
        os.close(fd)
    stop = time.monotonic() + WARMUP + WINDOW + 0.3
    chunk = b"x" * 65536
    marks: list[tuple[float, int]] = []

    def send(s: socket.socket) -> None:
        try:
            while time.monotonic() < stop:
                s.sendall(chunk)
        except OSError:
            pass
        finally:
            s.close()

    def receive(s: socket.socket) -> None:
        total = 0
        start = time.monotonic()
        while True:
            n = len(s.recv(1 << 20))
            if not n:
                break
            total += n
            now = time.monotonic()
            if now - start >= WARMUP:
                marks.append((now, total))
        s.close()

    try:
        cli.connect((link.gw_addr, PROXY_PORT))
        conn, _ = srv.accept()
        sender, receiver = (cli, conn) if upload else (conn, cli)
        t = threading.Thread(target=send, args=(sender,))
        t.start()
        receive(receiver)
        t.join()
    finally:
        srv.close()
    (t0, b0), (t1, b1) = marks[0], marks[-1]
    return (b1 - b0) * 8 / (t1 - t0)


def test_rate_each_way_within_ten_percent(manager: LinkManager) -> None:
    manager.attach("slow", 0, BotPolicy(name="slow", command=("true",), egress="open", bandwidth=RATE))
    try:
        up = measure(manager, "slow", upload=True)
        down = measure(manager, "slow", upload=False)
        print(f"shaped to {RATE / 1e6:g} Mbit/s: up {up / 1e6:.2f}, down {down / 1e6:.2f} Mbit/s")
        assert abs(up - RATE) / RATE <= 0.10, up
        assert abs(down - RATE) / RATE <= 0.10, down
        # a new policy on the live link replaces the rate (restart with another bandwidth)
        manager.attach(
            "slow", 0, BotPolicy(name="slow", command=("true",), egress="open", bandwidth=RATE // 2)
        )
        half = measure(manager, "slow", upload=True)
        assert abs(half - RATE / 2) / (RATE / 2) <= 0.10, half
    finally:
        manager.detach("slow", 0)


def test_unshaped_link_is_much_faster(manager: LinkManager) -> None:
    """Positive control: the same measurement without a limit goes far beyond the rate."""
    manager.attach("fast", 0, BotPolicy(name="fast", command=("true",), egress="open"))
    try:
        assert measure(manager, "fast", upload=True) > 5 * RATE
    finally:
        manager.detach("fast", 0)
