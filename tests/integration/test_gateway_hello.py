"""The ClientHello after a CONNECT's ``200`` is read by the head stage, not a thread (issue 13).

Two bots on the fake internet (``TwoBots`` of test_gateway_fairness.py): ``alpha`` sends
``CONNECT www.allowed.test:443``, gets ``200``, and then sends nothing, or only the first bytes
of a TLS record. Those connections hold no worker thread, count against alpha's unfinished
heads (over the cap a CONNECT is refused at once), are cut at the deadlines (nothing sent: the
first-byte deadline; a partial hello: the complete-head deadline), and leave no descriptor
behind (the upstream socket is closed too). Meanwhile ``beta`` fetches quickly. Positive
controls: a normal CONNECT + TLS fetch, a hello sent together with the CONNECT head; an SNI
that is not the CONNECT host is still refused.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from gateway_env import GW_ADDR
from test_gateway_fairness import (
    FAST,
    FIRST_BYTE,
    TwoBots,
    _baseline,
    _closed,
    _names,
    _victim_fetches,
)

from clawpen.net.fair import MAX_HEADS

pytestmark = [pytest.mark.netns, pytest.mark.root, pytest.mark.slow]

CONNECT = b"CONNECT www.allowed.test:443 HTTP/1.1\r\nHost: www.allowed.test:443\r\n\r\n"
HELLO_DEADLINE = 6.0  # seconds for a complete ClientHello after the 200 (first byte: FIRST_BYTE)
PARTIAL = b"\x16\x03\x01\x02\x00\x01"  # a TLS record header and one byte of a ClientHello


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoBots]:
    e = TwoBots(tmp_path_factory.mktemp("gwhello"))
    try:
        e.build_two()
        assert e.gateway is not None
        e.gateway.hello.deadline = HELLO_DEADLINE
        yield e
    finally:
        e.close()


def _hello(name: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _mismatches(env: TwoBots) -> int:
    rows = env.rows(bot="alpha", denied=True)
    return sum(r["count"] for r in rows if "does not match CONNECT host" in r["reason"])


def _sockets(names: list[str] | None = None) -> int:
    return sum(n.startswith("socket:") for n in (_names() if names is None else names))


def _open_now(sock: socket.socket) -> bool:
    """Still open (nothing to read, no EOF, no reset), without waiting."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(8)
    return False


def _connected(env: TwoBots) -> socket.socket:
    """alpha: a CONNECT answered 200, nothing sent after it yet."""
    s = env.sock(env.bot)
    s.connect((GW_ADDR, 3128))
    s.sendall(CONNECT)
    answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return s


def test_slow_hellos_after_connect_hold_no_thread(env: TwoBots) -> None:
    gw = env.gateway
    assert gw is not None
    assert max(_victim_fetches(env)) < FAST  # positive control, warms the worker threads
    _baseline(env)
    names0 = _names()
    timeouts0 = gw.stats().get("alpha", {}).get("head_timeouts", 0)
    busy0 = gw.workers.busy()
    held: list[socket.socket] = []
    over: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        for i in range(MAX_HEADS):
            s = _connected(env)
            if i % 2:
                s.sendall(PARTIAL)
            held.append(s)
        t1 = time.monotonic()  # every hello wait started between t0 and t1
        assert t1 - t0 < HELLO_DEADLINE - FIRST_BYTE - 1
        time.sleep(0.2)
        assert gw.fair.active(("alpha", 0)) == (MAX_HEADS, MAX_HEADS)  # all waiting for a hello
        assert gw.workers.busy() <= busy0  # ... and not one thread is held by them
        # Over the cap: the next CONNECT heads of alpha are refused at once (429).
        for _ in range(4):
            s = env.sock(env.bot)
            over.append(s)
            s.connect((GW_ADDR, 3128))
            s.sendall(CONNECT)
        assert all((_closed(s) or b"").startswith(b"HTTP/1.1 429") for s in over)
        attacked = _victim_fetches(env)
        assert max(attacked) < FAST, attacked
        assert time.monotonic() - t1 < FIRST_BYTE  # the victim ran while they were held
        # Cut at the deadlines: nothing sent at FIRST_BYTE, a partial hello at HELLO_DEADLINE.
        time.sleep(max(0.0, t1 + FIRST_BYTE + 0.5 - time.monotonic()))
        silent, partial = held[0::2], held[1::2]
        assert all(_closed(s) is not None for s in silent), "a silent CONNECT outlived the deadline"
        assert all(_open_now(s) for s in partial), "a partial hello was cut before its deadline"
        time.sleep(max(0.0, t1 + HELLO_DEADLINE + 0.5 - time.monotonic()))
        assert all(_closed(s) is not None for s in partial), "a partial hello outlived the deadline"
        assert gw.fair.active(("alpha", 0)) == (0, 0)
        assert gw.stats()["alpha"]["head_timeouts"] - timeouts0 == MAX_HEADS
    finally:
        for s in held + over:
            s.close()
    assert env.wait_row(lambda r: r["kind"] == "connect" and r["reason"] == "no TLS ClientHello in time")
    # Every socket of theirs is closed, the upstream ones too (the relay's spare pipes, kept
    # per worker thread for its next connection, are not counted).
    deadline = time.monotonic() + 5
    while _sockets() > _sockets(names0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sockets() <= _sockets(names0), Counter(_names()) - Counter(names0)
    assert max(_victim_fetches(env)) < FAST


def test_connect_tls_still_checked_after_the_move(env: TwoBots) -> None:
    ctx = ssl.create_default_context(cafile=str(env.cert))
    # Positive control: CONNECT, 200, TLS with the CONNECT host's name, a request.
    with _connected(env) as s, ctx.wrap_socket(s, server_hostname="www.allowed.test") as tls:
        tls.sendall(b"GET /hello HTTP/1.1\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := tls.recv(4096):
            body += chunk
    assert b"path=/hello" in body
    # A hello that comes later than the worker's grace is read by the head stage: same checks.
    with _connected(env) as s:
        time.sleep(0.05)
        with ctx.wrap_socket(s, server_hostname="www.allowed.test") as tls:
            tls.sendall(b"GET /late HTTP/1.1\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := tls.recv(4096):
                body += chunk
    assert b"path=/late" in body
    with _connected(env) as s, pytest.raises((ssl.SSLError, OSError)):
        time.sleep(0.05)
        ctx.wrap_socket(s, server_hostname="other.test").do_handshake()
    # The hello in the same packet as the CONNECT head (no wait for the 200) also goes through.
    with env.sock(env.bot) as s:
        s.connect((GW_ADDR, 3128))
        s.sendall(CONNECT + _hello("www.allowed.test"))
        s.settimeout(3)
        got = b""
        while b"\r\n\r\n" not in got or len(got) == got.index(b"\r\n\r\n") + 4:
            chunk = s.recv(4096)  # the 200 and the ServerHello may arrive in one read, or two
            assert chunk, got
            got += chunk
        answer, _, after = got.partition(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert after[:1] == b"\x16"  # the origin's ServerHello came back
    # An SNI other than the CONNECT host: closed, nothing relayed, logged.
    with _connected(env) as s, pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(s, server_hostname="other.test").do_handshake()
    deadline = time.monotonic() + 5
    while _mismatches(env) < 2 and time.monotonic() < deadline:  # the late one and the quick one
        time.sleep(0.05)
    assert _mismatches(env) == 2
    # Not TLS at all: closed, logged.
    with _connected(env) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.allowed.test\r\n\r\n")
        assert _closed(s) == b""
    assert env.wait_row(lambda r: "without a TLS ClientHello" in r["reason"], denied=True)
    assert env.gateway is not None
    assert env.gateway.fair.active(("alpha", 0)) == (0, 0)
