"""The host's own addresses, read for real over netlink in namespaces this test creates, and
refused by the gateway for an ``egress = "open"`` bot (a host service bound to 0.0.0.0 on the
host's public address must not be one gateway hop away)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_env import GW_ADDR, UP_ADDR, WWW_ADDR, Env, HttpHandler, HttpServer, fake_internet

from clawpen import netns
from clawpen.net.hostaddr import HostAddresses, PerNamespace, read_once
from clawpen.spec import egress

pytestmark = [pytest.mark.netns, pytest.mark.root]

NEW_V4 = ipaddress.ip_address("45.79.3.77")  # public-looking, but only inside the test's namespace
NEW_V6 = ipaddress.ip_address("2a01:4f8::77")


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[tuple[str, int]]:
    path = str(tmp_path / "netns")
    fd = netns.create_persistent(path, netns.loopback_up)
    try:
        yield path, fd
    finally:
        os.close(fd)
        netns.remove_persistent(path)


def ip_in(path: str, *args: str) -> None:
    subprocess.run(["nsenter", f"--net={path}", "ip", *args], check=True, capture_output=True, text=True)


def test_reader_sees_an_address_come_and_go(ns: tuple[str, int]) -> None:
    path, fd = ns
    # max_age of an hour: only the kernel's change announcement can make the reader re-read
    hosts = HostAddresses(fd, max_age=3600)
    try:
        before = hosts.get()
        assert ipaddress.ip_address("127.0.0.1") in before and NEW_V4 not in before
        assert egress.address_problem(str(NEW_V4), host=hosts) is None  # positive control
        ip_in(path, "link", "add", "d0", "type", "veth", "peer", "name", "d1")  # no dummy driver everywhere
        ip_in(path, "link", "set", "d0", "up")
        ip_in(path, "addr", "add", f"{NEW_V4}/32", "dev", "d0")
        ip_in(path, "addr", "add", f"{NEW_V6}/128", "dev", "d0", "nodad")
        seen = hosts.get()
        assert NEW_V4 in seen and NEW_V6 in seen, seen
        assert egress.address_problem(str(NEW_V4), host=hosts) == f"{NEW_V4} is an address of this host"
        assert egress.address_problem(str(NEW_V6), host=hosts) == f"{NEW_V6} is an address of this host"
        assert egress.address_problem("45.79.3.78", host=hosts) is None  # the neighbour is not the host
        # read_once reads the calling thread's namespace: inside the test namespace it sees
        # the address, outside it does not
        assert (
            netns.netns_thread_call(fd, lambda: egress.address_problem(str(NEW_V4), host=read_once))
            is not None
        )
        assert egress.address_problem(str(NEW_V4), host=read_once) is None
        ip_in(path, "addr", "del", f"{NEW_V4}/32", "dev", "d0")
        ip_in(path, "link", "del", "d0")
        gone = hosts.get()
        assert NEW_V4 not in gone and NEW_V6 not in gone, gone
        assert egress.address_problem(str(NEW_V4), host=hosts) is None
        assert (
            netns.netns_thread_call(fd, lambda: egress.address_problem(str(NEW_V4), host=read_once)) is None
        )
    finally:
        hosts.close()


def test_reader_refreshes_after_max_age_without_announcements(ns: tuple[str, int]) -> None:
    path, fd = ns
    hosts = HostAddresses(fd, max_age=0.2, watch=False)  # no announcements: only age re-reads
    try:
        assert NEW_V4 not in hosts.get()
        ip_in(path, "link", "add", "d0", "type", "veth", "peer", "name", "d1")  # no dummy driver everywhere
        ip_in(path, "addr", "add", f"{NEW_V4}/32", "dev", "d0")
        time.sleep(0.25)
        assert NEW_V4 in hosts.get()
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with fake_internet(tmp_path_factory.mktemp("hostaddr"), egress="open") as e:
        yield e


def test_open_bot_cannot_reach_the_gateway_host_by_its_address(env: Env) -> None:
    # A host service bound to 0.0.0.0 in the gateway's upstream namespace ("the host").
    server = netns.netns_thread_call(env.fds[env.up], lambda: HttpServer(("0.0.0.0", 8080), HttpHandler))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        outside = env.curl(f"http://{UP_ADDR}:8080/", ns=env.up)
        assert outside.returncode == 0 and "hello" in outside.stdout  # it answers on the host address
        for url in (f"http://{UP_ADDR}:8080/", "http://[::ffff:45.79.0.1]:8080/"):
            got = env.curl(
                "-x", f"http://{GW_ADDR}:3128", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url
            )
            assert got.stdout == "403", (url, got.stdout, got.stderr)
        with env.sock(env.bot) as s:
            s.connect((GW_ADDR, 3128))
            s.sendall(f"CONNECT {UP_ADDR}:8080 HTTP/1.1\r\n\r\n".encode())
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 403") and b"address of this host" in reply, reply
        direct = env.curl("--noproxy", "*", f"http://{UP_ADDR}:8080/")
        assert direct.returncode != 0 and "hello" not in direct.stdout
        # positive control: an open bot reaches a public address that is not the host's
        public = env.curl("-x", env.proxy(), f"http://{WWW_ADDR}/")
        assert public.returncode == 0 and f"hello from {WWW_ADDR}:80" in public.stdout, public.stderr
        assert env.wait_row(lambda r: "address of this host" in r["reason"], denied=True)
    finally:
        server.shutdown()
        server.server_close()


def test_per_namespace_keeps_namespaces_apart(ns: tuple[str, int]) -> None:
    path, fd = ns
    ip_in(path, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ip_in(path, "addr", "add", f"{NEW_V4}/32", "dev", "d0")
    book = PerNamespace(size=1)  # one cached namespace: each switch evicts (and closes) the other
    try:
        for _ in range(3):
            assert NEW_V4 in netns.netns_thread_call(fd, book.get)
            assert NEW_V4 not in book.get()  # the test's own namespace
    finally:
        book.close()
