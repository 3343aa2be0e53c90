"""A ``tcp`` check through a forwarder that accepts first (QEMU's user-mode network of a VM bot):
a connection the forwarder closes at once is a refusal behind it, not a healthy server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pytest

from clawpen.daemon.health import check
from clawpen.spec.models import Health

if TYPE_CHECKING:
    from clawpen.plan.model import Plan


class Forwarded:
    """A target on this namespace's loopback; ``accepts_first`` as a VM bot's."""

    def __init__(self, accepts_first: bool) -> None:
        self.accepts_first = accepts_first

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]:
        s = socket.socket()
        s.setblocking(False)
        return s, host

    def enter(self, plan: Plan, command: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        raise AssertionError("not a cmd check")


def _server(close_at_once: bool) -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            if close_at_once:
                c.close()  # what QEMU does when the guest refuses
            else:
                held.append(c)  # a silent server that took the connection

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()
        for c in held:
            c.close()


@pytest.fixture
def closing() -> Iterator[int]:
    yield from _server(close_at_once=True)


@pytest.fixture
def silent() -> Iterator[int]:
    yield from _server(close_at_once=False)


def _check(port: int, accepts_first: bool) -> tuple[bool, str]:
    spec = Health(tcp=f"127.0.0.1:{port}", timeout=3)
    result = asyncio.run(check(spec, Forwarded(accepts_first)))
    return result.ok, result.detail


def test_a_forward_closed_at_once_is_unhealthy(closing: int) -> None:
    assert _check(closing, accepts_first=True) == (
        False,
        "connection closed at once (nothing listens behind the forward)",
    )
    # the control: a target without a forwarder counts the accept, as before
    assert _check(closing, accepts_first=False) == (True, "connected")


def test_a_forward_held_open_is_healthy(silent: int) -> None:
    assert _check(silent, accepts_first=True) == (True, "connected")
