"""The splice relay over real loopback TCP: bytes, counts, half-close, prefixes, gates, workers."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from clawpen.net.relay import Counts, Refused, Workers, relay


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    return a, b


@pytest.fixture
def chain() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """client <-> (x  relay  y) <-> server."""
    client, x = tcp_pair()
    y, server = tcp_pair()
    yield client, x, y, server
    for s in (client, x, y, server):
        s.close()


def run_relay(x: socket.socket, y: socket.socket, **kw: object) -> tuple[threading.Thread, list[Counts]]:
    out: list[Counts] = []
    t = threading.Thread(target=lambda: out.append(relay(x, y, **kw)))  # type: ignore[arg-type]
    t.start()
    return t, out


def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(1 << 20):
        data += chunk
    return data


def test_bulk_both_ways_with_half_close(chain: tuple[socket.socket, ...]) -> None:
    client, x, y, server = chain
    up = os.urandom(8 << 20)
    t, out = run_relay(x, y)
    sender = threading.Thread(target=lambda: (client.sendall(up), client.shutdown(socket.SHUT_WR)))
    sender.start()
    got = read_all(server)  # EOF arrives: the client's half-close went through
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
    server.sendall(b"reply after the client's EOF")  # the other half still works
    server.shutdown(socket.SHUT_WR)
    assert read_all(client) == b"reply after the client's EOF"
    sender.join()
    t.join(5)
    assert out == [Counts(len(up), len(b"reply after the client's EOF"), None)]


def test_prefixes_go_first(chain: tuple[socket.socket, ...]) -> None:
    client, x, y, server = chain
    t, out = run_relay(x, y, a_prefix=b"sniffed-", b_prefix=b"hello-")
    client.sendall(b"rest")
    client.shutdown(socket.SHUT_WR)
    assert read_all(server) == b"sniffed-rest"
    server.shutdown(socket.SHUT_WR)
    assert read_all(client) == b"hello-"
    t.join(5)
    assert out[0].a_to_b == len(b"sniffed-rest")


@pytest.mark.parametrize("gate_first", [False, True])
def test_gate_refusal_tears_down_both(chain: tuple[socket.socket, ...], gate_first: bool) -> None:
    client, x, y, server = chain

    def gate() -> bytes:
        first = x.recv(100)
        if first != b"good":
            raise Refused(f"bad first bytes {first!r}")
        return first

    t, out = run_relay(x, y, a_gate=gate, gate_first=gate_first)
    client.sendall(b"evil")
    t.join(5)
    assert out[0].refused == "bad first bytes b'evil'"
    assert read_all(server) == b""  # nothing of it reached the server
    assert client.recv(10) == b""


def test_gate_passes_first_bytes(chain: tuple[socket.socket, ...]) -> None:
    client, x, y, server = chain
    t, out = run_relay(x, y, a_gate=lambda: x.recv(4), gate_first=True)
    client.sendall(b"good and more")
    client.shutdown(socket.SHUT_WR)
    assert read_all(server) == b"good and more"
    server.close()
    t.join(5)
    assert out[0].refused is None


def test_reset_ends_the_relay(chain: tuple[socket.socket, ...]) -> None:
    client, x, y, server = chain
    t, _ = run_relay(x, y)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # RST
    t.join(5)
    assert not t.is_alive()
    assert read_all(server) == b""


def test_workers_reuse_threads_and_run_init_once() -> None:
    inits: list[int] = []
    w = Workers(init=lambda: inits.append(threading.get_ident()), idle_exit=5)
    seen: set[int] = set()
    for _ in range(20):
        done = threading.Event()

        def task(done: threading.Event = done) -> None:
            seen.add(threading.get_ident())
            done.set()

        w.submit(task)
        assert done.wait(5)
    assert len(seen) <= 2 and len(inits) == len(seen)
    # Tasks that block each get a thread of their own (no upper bound).
    gate = threading.Event()
    started = threading.Semaphore(0)
    blockers: list[Callable[[], None]] = [lambda: (started.release(), gate.wait(5)) for _ in range(5)]  # type: ignore[misc]
    for b in blockers:
        w.submit(b)
    for _ in range(5):
        assert started.acquire(timeout=5)
    gate.set()


def test_both_directions_at_once(chain: tuple[socket.socket, ...]) -> None:
    """Full buffers both ways at the same time: neither direction starves the other."""
    client, x, y, server = chain
    up, down = os.urandom(16 << 20), os.urandom(16 << 20)
    t, out = run_relay(x, y)
    got: dict[str, bytes] = {}
    workers = [
        threading.Thread(target=lambda: (client.sendall(up), client.shutdown(socket.SHUT_WR))),
        threading.Thread(target=lambda: (server.sendall(down), server.shutdown(socket.SHUT_WR))),
        threading.Thread(target=lambda: got.__setitem__("server", read_all(server))),
        threading.Thread(target=lambda: got.__setitem__("client", read_all(client))),
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    t.join(10)
    assert got["server"] == up and got["client"] == down
    assert out == [Counts(len(up), len(down), None)]


def test_a_failing_task_is_logged_with_its_traceback_and_the_worker_goes_on(caplog) -> None:
    w = Workers(idle_exit=5)
    done = threading.Event()

    def broken() -> None:
        raise KeyError("a bug in a task")

    with caplog.at_level("ERROR", logger="clawpen.net.relay"):
        w.submit(broken)
        w.submit(done.set)
        assert done.wait(5)  # the same pool still runs the next task
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "gateway worker task failed" in record.getMessage()
