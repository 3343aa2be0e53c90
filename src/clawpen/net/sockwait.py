"""Waits of the gateway's serving thread that also watch the head stage's loop.

:func:`connect_nonblocking` connects a non-blocking socket and :func:`wait_for` polls one
descriptor, both with a :data:`clawpen.net.relay.Watch` beside it: a descriptor (the head
stage's epoll, lent by :meth:`clawpen.net.lead.Lead.park`) whose callable runs once when it
becomes readable.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from clawpen.net.relay import Watch


def connect_nonblocking(
    sock: socket.socket, addr: tuple[str, int], timeout: float, watch: Watch | None = None
) -> None:
    """Connect the non-blocking ``sock`` within ``timeout`` seconds, waiting on ``watch`` too.
    Raises OSError (``ETIMEDOUT``, or the connection's own error)."""
    err = sock.connect_ex(addr)
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, os.strerror(err))
    if err == errno.EINPROGRESS:
        wait_for(sock.fileno(), select.POLLOUT, timeout, watch)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))


def wait_for(fd: int, events: int, timeout: float, watch: Watch | None = None) -> bool:
    """Poll ``fd`` for ``events`` up to ``timeout`` seconds, calling ``watch``'s callable (once)
    if its descriptor becomes readable meanwhile. Raises ``ETIMEDOUT`` at the end; True."""
    poller = select.poll()
    poller.register(fd, events)
    if watch is not None:
        poller.register(watch[0], select.POLLIN)
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise OSError(errno.ETIMEDOUT, "timed out")
        got = dict(poller.poll(max(1, int(left * 1000))))
        if watch is not None and watch[0] in got:
            poller.unregister(watch[0])
            watch[1]()
            watch = None
        if got.get(fd, 0):
            return True
