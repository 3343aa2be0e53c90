"""A bot link wired into a network namespace someone else made (a container engine's), given by a
host pid: :meth:`LinkManager.reserve` / :meth:`LinkManager.wire` (real namespaces).

``unshare --net sleep 60`` stands in for a container's init: a process in a namespace of its
own with only ``lo``, made without clawpen. A fake gateway (tests/integration/test_net_links.py)
listens in the gateway namespace and records what reaches it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import peer_recorder, wait_for
from test_net_links import FakeGateway

from clawpen import netns
from clawpen.errors import HostError
from clawpen.net.links import Link, LinkManager
from clawpen.net.types import PROXY_PORT
from clawpen.spec.policy import BotPolicy

pytestmark = [pytest.mark.root, pytest.mark.netns]


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def unshared() -> Iterator[subprocess.Popen[bytes]]:
    """A process in a new network namespace of its own (``unshare --net``), as a container's
    init is; killed afterwards."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        own = _ns_id("/proc/self/ns/net")
        assert wait_for(lambda: _ns_id(f"/proc/{proc.pid}/ns/net") != own, 5, interval=0.005)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkManager]:
    lm = LinkManager(tmp_path_factory.mktemp("net-wire"))
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


def connect_from(pid: int, addr: str, port: int, family: int = socket.AF_INET) -> str:
    """A TCP connection made in ``pid``'s network namespace: what the peer says, or the error."""
    fd = netns.open_netns(f"/proc/{pid}/ns/net")
    try:
        s = netns.socket_in(fd, family)
    finally:
        os.close(fd)
    s.settimeout(2)
    try:
        s.connect((addr, port))
        return "open:" + s.recv(64).decode().strip()
    except OSError as err:
        return "error:" + (err.strerror or str(err))
    finally:
        s.close()


def interfaces(pid_or_fd: int, *, fd: bool = False) -> list[str]:
    ns = pid_or_fd if fd else netns.open_netns(f"/proc/{pid_or_fd}/ns/net")
    try:
        return netns.netns_thread_call(ns, lambda: sorted(n for _, n in socket.if_nameindex()))
    finally:
        if not fd:
            os.close(ns)


def mounted(path: str) -> int:
    """How many mounts sit on ``path`` (from this process's mountinfo)."""
    return sum(1 for line in Path("/proc/self/mountinfo").read_text().splitlines() if line.split()[4] == path)


def sysctl_in(pid: int, name: str) -> str:
    fd = netns.open_netns(f"/proc/{pid}/ns/net")
    try:
        return netns.netns_thread_call(fd, lambda: Path(f"/proc/sys/{name}").read_text().strip())
    finally:
        os.close(fd)


def assert_gone(manager: LinkManager, link: Link) -> None:
    assert not os.path.exists(link.netns)
    assert mounted(link.netns) == 0
    assert link.ifname not in interfaces(manager.gateway_netns_fd, fd=True)
    assert manager.by_source(link.bot_addr) is None


@pytest.fixture(scope="module")
def host_server() -> Iterator[tuple[int, list[str]]]:
    """A TCP service on the host's loopback (the test's own namespace) recording its peers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    with peer_recorder(s) as served:
        yield served


def test_a_wired_namespace_reaches_only_the_gateway_and_an_unwired_one_nothing(
    manager: LinkManager, gateway: FakeGateway, host_server: tuple[int, list[str]]
) -> None:
    port, host_peers = host_server
    policy = BotPolicy(name="wired", command=("true",), egress="open")
    with unshared() as box, unshared() as bare:
        reserved = manager.reserve("wired", 0, policy)
        assert mounted(reserved.netns) == 0  # reserved: addresses only, nothing made yet
        assert connect_from(box.pid, reserved.gw_addr, PROXY_PORT).startswith("error:")
        link = manager.wire("wired", 0, policy, box.pid)
        try:
            assert (link.bot_addr, link.gw_addr, link.netns) == (
                reserved.bot_addr,
                reserved.gw_addr,
                reserved.netns,
            )
            # the link's usual path is the process's own namespace (adopt, detach, relay use it)
            assert _ns_id(link.netns) == _ns_id(f"/proc/{box.pid}/ns/net")
            assert interfaces(box.pid) == ["eth0", "lo"]
            assert sysctl_in(box.pid, "net/ipv4/ip_forward") == "0"
            assert sysctl_in(box.pid, "net/ipv6/conf/all/disable_ipv6") == "1"
            seen = len(gateway.seen)
            # positive: the wired namespace reaches the gateway, and every other TCP
            # connection is intercepted there with its original destination
            assert connect_from(box.pid, link.gw_addr, PROXY_PORT) == "open:gateway"
            assert connect_from(box.pid, "192.0.2.77", 443) == "open:gateway"
            assert (link.bot_addr, "192.0.2.77", 443) in gateway.seen[seen:]
            assert manager.by_source(link.bot_addr) is not None
            # negative: an unwired namespace has no route to the gateway
            assert connect_from(bare.pid, link.gw_addr, PROXY_PORT) == "error:Network is unreachable"
            # the host's loopback service is not reachable from the wired namespace (its
            # 127.0.0.1 is its own); positive control: it answers from the host
            assert connect_from(box.pid, "127.0.0.1", port) == "error:Connection refused"
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                assert c.recv(8) == b"host\n"
            assert host_peers == ["127.0.0.1"]
        finally:
            manager.detach("wired", 0)
        assert_gone(manager, link)
        # the namespace itself lives on with its process, without the link
        assert box.poll() is None and interfaces(box.pid) == ["lo"]


def test_a_new_container_is_wired_again_and_the_old_one_loses_its_link(
    manager: LinkManager, gateway: FakeGateway
) -> None:
    policy = BotPolicy(name="again", command=("true",), egress="open")
    manager.reserve("again", 1, policy)
    with unshared() as first:
        one = manager.wire("again", 1, policy, first.pid)
        assert connect_from(first.pid, one.gw_addr, PROXY_PORT) == "open:gateway"
        with unshared() as second:
            try:
                two = manager.wire("again", 1, policy, second.pid)
                assert (two.bot_addr, two.ifname, two.netns) == (one.bot_addr, one.ifname, one.netns)
                assert _ns_id(two.netns) == _ns_id(f"/proc/{second.pid}/ns/net")
                assert mounted(two.netns) == 1  # the old bind was replaced, not stacked
                assert interfaces(first.pid) == ["lo"]  # the old container lost its link
                assert connect_from(second.pid, two.gw_addr, PROXY_PORT) == "open:gateway"
                assert connect_from(first.pid, one.gw_addr, PROXY_PORT) == "error:Network is unreachable"
                gw_ifs = interfaces(manager.gateway_netns_fd, fd=True)
                assert [n for n in gw_ifs if n == two.ifname] == [two.ifname]
            finally:
                manager.detach("again", 1)
            assert_gone(manager, two)


def test_a_wired_link_is_adopted_by_a_restarted_daemon(manager: LinkManager, gateway: FakeGateway) -> None:
    policy = BotPolicy(name="kept", command=("true",), egress="open")
    with unshared() as box:
        link = manager.wire("kept", 2, policy, box.pid)
        again = LinkManager(manager.dir.parent)  # a restarted daemon: by path, as for a sandbox
        try:
            adopted = again.adopt("kept", 2, policy)
            assert adopted is not None
            assert (adopted.bot_addr, adopted.gw_addr, adopted.netns) == (
                link.bot_addr,
                link.gw_addr,
                link.netns,
            )
            assert again.by_source(link.bot_addr) is not None
            # the next container of that bot is wired by the new daemon, same addresses
            with unshared() as nxt:
                rewired = again.wire("kept", 2, policy, nxt.pid)
                assert rewired.bot_addr == link.bot_addr
                assert connect_from(nxt.pid, link.gw_addr, PROXY_PORT) == "open:gateway"
                assert interfaces(box.pid) == ["lo"]
            again.detach("kept", 2)
            assert_gone(again, link)
        finally:
            again.close()
            manager.detach("kept", 2)


def test_wiring_a_gone_process_or_the_daemons_own_namespace_fails_and_leaves_nothing(
    manager: LinkManager,
) -> None:
    policy = BotPolicy(name="gone", command=("true",), egress="open")
    with unshared() as box:
        dead = box.pid
    link = manager.reserve("gone", 0, policy)
    with pytest.raises(HostError) as err:
        manager.wire("gone", 0, policy, dead)
    assert "network namespace" in err.value.what
    assert_gone(manager, link)
    with pytest.raises(HostError) as err:
        manager.wire("gone", 0, policy, os.getpid())  # a tier that made no namespace
    assert "daemon's own" in err.value.what
    assert_gone(manager, link)
    # positive control: the same reservation wires a live process
    with unshared() as box:
        manager.wire("gone", 0, policy, box.pid)
        assert interfaces(box.pid) == ["eth0", "lo"]
        manager.detach("gone", 0)
        assert_gone(manager, link)


def test_an_ipv6_bot_gets_its_ipv6_pair_in_a_wired_namespace(
    manager: LinkManager, gateway: FakeGateway
) -> None:
    policy = BotPolicy(name="six", command=("true",), egress="open", ipv6=True)
    with unshared() as box, unshared() as bare:
        link = manager.wire("six", 0, policy, box.pid)
        listener = netns.socket_in(manager.gateway_netns_fd, socket.AF_INET6)
        try:
            assert sysctl_in(box.pid, "net/ipv6/conf/eth0/disable_ipv6") == "0"
            assert sysctl_in(box.pid, "net/ipv6/conf/eth0/accept_ra") == "0"
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((link.gw_addr6, PROXY_PORT))
            listener.listen(4)

            def answer() -> None:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"six\n")

            threading.Thread(target=answer, daemon=True).start()
            assert connect_from(box.pid, link.gw_addr6, PROXY_PORT, socket.AF_INET6) == "open:six"
            # negative: an unwired namespace has no IPv6 route there
            assert connect_from(bare.pid, link.gw_addr6, PROXY_PORT, socket.AF_INET6).startswith("error:")
        finally:
            listener.close()
            manager.detach("six", 0)
        assert_gone(manager, link)
