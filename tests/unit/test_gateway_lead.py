"""The gateway's head stage with leader/follower and a parked loop, over real loopback TCP.

The thread that finds a head complete serves it and, while it waits, only lends the stage's
epoll descriptor to its own poll (:class:`clawpen.net.lead.Lead`). These tests hold that thread
in such a wait (as a relay would) and check that the stage still accepts, reads and times out
other connections; a positive control serves without watching the loop and shows the stall the
tests would catch.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from clawpen.net import sniff
from clawpen.net.fair import Fairness
from clawpen.net.heads import Head, HeadStage
from clawpen.net.lead import NO_LEAD, Lead
from clawpen.net.listen import listeners
from clawpen.net.relay import Workers, relay
from clawpen.net.sockwait import connect_nonblocking, wait_for
from clawpen.net.types import BotLink

LINK = BotLink("bot", 0, "127.0.0.1", "127.0.0.1", "open")
REQUEST = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"


class Registry:
    def by_source(self, addr: str) -> BotLink | None:
        return LINK if addr == "127.0.0.1" else None


class Stage:
    """A HeadStage on a loopback listener; ``serve(head)`` runs for each complete head."""

    def __init__(self, serve: Callable[[Head], None], first_byte: float = 5.0) -> None:
        self.listener = listeners(None, "127.0.0.1", None, 0)[0]
        self.port = self.listener.getsockname()[1]
        self.served: list[tuple[bytes, int]] = []  # (head bytes, serving thread)
        self.failed: list[str] = []
        self.workers = Workers(idle_exit=5)
        self.serve = serve

        def ready(head: Head) -> None:
            self.served.append((head.data, threading.get_ident()))
            try:
                self.serve(head)
            finally:
                head.sock.close()

        def plan(head: Head) -> bool:
            head.parse = sniff.http_request
            return True

        self.stage = HeadStage(
            Registry(),
            Fairness(),
            plan=plan,
            ready=ready,
            failed=lambda head, why, detail: self.failed.append(why),
            refused=lambda head, why: head.sock.close(),
            first_byte=first_byte,
            spawn=self.workers.submit,
        )
        self.stage.add_listener(self.listener, "proxy")
        self.stage.start()

    def close(self) -> None:
        self.stage.stop()
        self.listener.close()


def until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def parked(head: Head) -> None:
    """Wait for the client's next bytes as a relay would: watching the stage's loop."""
    wait_for(head.sock.fileno(), select.POLLIN, 10.0, head.handoff.watch())


def blind(head: Head) -> None:
    """The positive control: wait without watching the loop (and without handing it on)."""
    head.sock.setblocking(True)
    head.sock.settimeout(10.0)
    head.sock.recv(10)


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def connect(port: int, made: list[socket.socket], data: bytes = REQUEST) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    made.append(s)
    if data:
        s.sendall(data)
    return s


def test_a_parked_loop_still_serves_the_next_connection(clients: list[socket.socket]) -> None:
    env = Stage(parked)
    try:
        first = connect(env.port, clients)
        assert until(lambda: len(env.served) == 1)
        connect(env.port, clients, REQUEST.replace(b"example", b"second"))
        assert until(lambda: len(env.served) == 2, 3.0), "the parked loop did not hand on"
        assert env.served[0][1] != env.served[1][1]  # the second one has a thread of its own
        first.sendall(b"x")  # the first connection's wait ends normally
    finally:
        env.close()


def test_positive_control_a_blind_wait_stalls_the_loop(clients: list[socket.socket]) -> None:
    env = Stage(blind)
    try:
        first = connect(env.port, clients)
        assert until(lambda: len(env.served) == 1)
        second = connect(env.port, clients)
        assert not until(lambda: len(env.served) == 2, 1.0)  # stalled: nobody leads
        first.sendall(b"x")  # the blind wait ends; the same thread leads on
        assert until(lambda: len(env.served) == 2)
        second.sendall(b"x")
    finally:
        env.close()


def test_the_loop_keeps_its_deadlines_while_a_connection_is_served(clients: list[socket.socket]) -> None:
    env = Stage(parked, first_byte=0.5)
    try:
        connect(env.port, clients, b"")  # silent: a pending head with a deadline
        time.sleep(0.1)
        first = connect(env.port, clients)  # served while the silent one waits
        assert until(lambda: len(env.served) == 1)
        assert until(lambda: env.failed == ["timeout"], 3.0)
        first.sendall(b"x")
    finally:
        env.close()


def test_a_thread_that_never_waits_leads_on_without_a_wake_up(clients: list[socket.socket]) -> None:
    env = Stage(lambda head: None)  # e.g. a denial: answered and closed without waiting
    try:
        for n in range(1, 6):  # one after another (heads done in one turn may be spread)
            connect(env.port, clients)
            assert until(lambda n=n: len(env.served) == n)  # type: ignore[misc]
        assert len({thread for _, thread in env.served}) == 1
    finally:
        env.close()


class FakeStage:
    def __init__(self, fd: int | None, spawn_fails: bool = False) -> None:
        self.fd, self.spawn_fails, self.spawned = fd, spawn_fails, 0

    def lead_on(self) -> None:
        if self.spawn_fails:
            raise RuntimeError("can't start new thread")
        self.spawned += 1

    def parkable(self) -> int | None:
        return self.fd


def test_lead_hands_on_once_parks_when_idle_and_fails_loudly() -> None:
    idle = FakeStage(7)
    lead = Lead(idle)
    assert lead.park() == 7 and idle.spawned == 0  # lent, not handed on
    lead()
    lead()
    assert idle.spawned == 1 and lead.park() is None and lead.watch() is None
    busy = FakeStage(None)  # timers to keep: parking hands on at once
    assert Lead(busy).park() is None and busy.spawned == 1
    broken = Lead(FakeStage(None, spawn_fails=True))
    with pytest.raises(OSError, match="no thread"):
        broken()
    assert broken.failed
    NO_LEAD()  # a thread that holds no loop: nothing happens
    assert NO_LEAD.park() is None


def test_relay_calls_the_watch_once_and_goes_on() -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        client = socket.create_connection(ls.getsockname())
        x, _ = ls.accept()
        y = socket.create_connection(ls.getsockname())
        server, _ = ls.accept()
    wr, ww = socket.socketpair()
    calls: list[int] = []
    try:
        t = threading.Thread(target=lambda: relay(x, y, watch=(wr.fileno(), lambda: calls.append(1))))
        t.start()
        client.sendall(b"before")
        assert server.recv(100) == b"before"
        ww.send(b"!")  # the watched descriptor becomes readable (and stays so)
        assert until(lambda: calls == [1])
        client.sendall(b"after")
        assert server.recv(100) == b"after"
        client.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)
        t.join(5)
        assert not t.is_alive() and calls == [1]
    finally:
        for s in (client, x, y, server, wr, ww):
            s.close()


def test_listener_sockets_hand_tcp_nodelay_to_accepted_ones() -> None:
    (ls,) = listeners(None, "127.0.0.1", None, 0)
    with ls, socket.create_connection(ls.getsockname()) as c:
        conn, _ = ls.accept()
        with conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # control: not a default


def test_connect_nonblocking_connects_and_reports_refusal() -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        port = ls.getsockname()[1]
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        with up:
            connect_nonblocking(up, ("127.0.0.1", port), 5.0)
            conn, _ = ls.accept()
            conn.close()
    refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    with refused, pytest.raises(ConnectionRefusedError):
        connect_nonblocking(refused, ("127.0.0.1", port), 5.0)


def test_a_pinned_thread_skips_the_namespace_lookup_an_unpinned_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clawpen.net.hostaddr import PerNamespace

    book = PerNamespace()
    results: dict[str, object] = {}
    pinned = threading.Event()
    looked_up = threading.Event()

    def pinned_thread() -> None:
        book.pin_thread()
        pinned.set()
        looked_up.wait(5)
        try:
            results["pinned"] = book.get()
        except RuntimeError as err:
            results["pinned"] = err

    t = threading.Thread(target=pinned_thread)
    t.start()
    assert pinned.wait(5)
    expected = book.get()  # this thread is not pinned: it looks the namespace up

    def no_lookup() -> tuple[int, int]:
        raise RuntimeError("looked the namespace up")

    monkeypatch.setattr(PerNamespace, "_thread_ns", staticmethod(no_lookup))
    looked_up.set()
    t.join(5)
    try:
        assert results["pinned"] == expected  # the same cached set, with no lookup
        with pytest.raises(RuntimeError, match="looked"):  # control: unpinned threads look up
            book.get()
    finally:
        book.close()


def test_address_verdicts_follow_the_host_address_set() -> None:
    import ipaddress

    from clawpen.net.addrcheck import AddressVerdicts
    from clawpen.spec import egress

    verdicts = AddressVerdicts(size=2)
    before: frozenset[egress.IPAddress] = frozenset({ipaddress.ip_address("45.79.0.1")})
    assert verdicts.problem("45.79.0.10", (), before) is None  # public, not the host's
    assert verdicts.problem("45.79.0.10", (), before) is None  # remembered
    after = frozenset({*before, ipaddress.ip_address("45.79.0.10")})  # the host gained it
    refused = verdicts.problem("45.79.0.10", (), after)
    assert refused is not None and "address of this host" in refused
    assert refused == egress.address_problem("45.79.0.10", (), host=after)  # control: the source
    assert verdicts.problem("10.0.0.5", (), after) is not None  # private, not allowed
    assert verdicts.problem("10.0.0.5", ("10.0.0.0/8",), after) is None  # allowed for this bot
    assert verdicts.problem("10.0.0.5", (), after) is not None  # not for another (own key)
