"""The ClientHello after a ``CONNECT host:443`` is answered ``200``: its SNI must be ``host``.

The gateway's worker has checked the CONNECT target and connected upstream; then
:meth:`HelloStep.after_connect` takes an unfinished-head place for the bot (over its limit: ``429``
and nothing more), answers ``200`` and waits for the ClientHello:

* for at most :data:`GRACE` seconds in the worker itself (a normal client sends its hello one
  round trip after the ``200``; this saves two thread hand-offs per HTTPS connection);
* if it has not come complete by then, the connection goes back to the head stage
  (:meth:`clawpen.net.heads.HeadStage.resume`), which reads it without a thread, with the head
  deadlines (first byte, complete hello) and the same per-bot count of unfinished heads.
  So a slow client holds a thread for :data:`GRACE` at most, never until a deadline.

Complete: :meth:`verdict` checks the SNI (none at all only for a CONNECT to an IP literal), then
the relay starts, with the hello sent upstream first. Refused or late: logged, closed, and the
upstream socket closed with it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import socket
import time
from collections.abc import Callable

from clawpen.net import sniff
from clawpen.net.fair import Fairness
from clawpen.net.heads import FIRST_BYTE, HEAD_DEADLINE, Head, HeadStage
from clawpen.net.relay import Workers, close_quietly, relay, send_all
from clawpen.spec import egress

_log = logging.getLogger(__name__)

GRACE = 0.002  # seconds a worker waits for the ClientHello before handing it to the head stage

Record = Callable[..., None]  # Gateway._record(link, kind, host, port, verdict, reason, t0, up, down)


class HelloStep:
    """The CONNECT-to-443 hello check of one gateway (see the module text)."""

    def __init__(
        self,
        fair: Fairness,
        heads: HeadStage,
        workers: Workers,
        record: Record,
        *,
        first_byte: float = FIRST_BYTE,
        deadline: float = HEAD_DEADLINE,
        grace: float = GRACE,
    ) -> None:
        self.fair, self.heads, self.workers, self.record = fair, heads, workers, record
        self.first_byte = first_byte
        self.deadline = deadline
        self.grace = grace

    def after_connect(self, head: Head, up: socket.socket) -> bool:
        """In a worker, upstream connected, ``head.target`` = (name, port, allowed_by) and
        ``head.data`` = the bytes after the CONNECT head. True if the connection was handed
        on (relayed here, or given to the head stage); False if it was refused (the caller
        closes the client connection and does the fairness accounting)."""
        conn, link = head.sock, head.link
        name, port, _ = head.target
        why = self.fair.take_head(head.key)
        if why is not None:
            close_quietly(up)
            self.record(link, "connect", name, port, "denied", why, head.t0)
            respond_429(conn, why)
            return False
        try:
            send_all(conn, b"HTTP/1.1 200 Connection established\r\n\r\n")
        except OSError:
            self.fair.head_done(head.key)
            close_quietly(up)
            self.record(link, "connect", name, port, "denied", "closed before the TLS ClientHello", head.t0)
            return False
        head.up = up
        if self.grace > 0 and self._came_at_once(head):
            self.fair.head_done(head.key)
            if self.verdict(head):
                self.relay(head)
            return True
        self.heads.resume(head, sniff.connect_hello, first_byte=self.first_byte, deadline=self.deadline)
        return True

    def _came_at_once(self, head: Head) -> bool:
        """Read for at most ``grace`` seconds; True if a complete ClientHello is in ``head``
        (``head.result`` = its SNI). Anything else (more to come, closed, not TLS) is left
        for the head stage, which reads on from ``head.data`` and decides."""
        conn = head.sock
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        watch = head.handoff.park()  # the head stage's loop, if this thread still holds it
        if watch is not None:
            poller.register(watch, select.POLLIN)
        end = time.monotonic() + self.grace
        while True:
            try:
                got = sniff.connect_hello(head.data)
            except sniff.NotTLS:
                return False
            if got is not sniff.MORE:
                head.result = got
                return True
            left = end - time.monotonic()
            events = dict(poller.poll(left * 1000)) if left > 0 else {}
            if watch is not None and watch in events:
                poller.unregister(watch)
                watch = None
                head.handoff()
            if not events.get(conn.fileno(), 0):
                if left <= 0 or not events:
                    return False
                continue
            try:
                chunk = conn.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                return False
            if not chunk:
                return False  # EOF stays readable: the head stage sees it too
            head.data += chunk

    def ready(self, head: Head) -> None:
        """From the head stage, in a worker: the hello is complete; relay if the SNI is right."""
        if self.verdict(head):
            self.relay(head)

    def verdict(self, head: Head) -> bool:
        """The SNI must be the CONNECT host; if not, log, close both sides, False."""
        name, port, _ = head.target
        sni = head.result
        reason = None
        if sni is None and not is_ip(name):
            reason = f"TLS ClientHello without SNI for CONNECT {name}"
        elif sni is not None and safe_normal(str(sni)) != name:
            reason = f"TLS SNI {sni!r} does not match CONNECT host {name}"
        if reason is None:
            return True
        self.record(head.link, "connect", name, port, "denied", reason, head.t0)
        self.fair.conn_done(head.key)
        close_quietly(head.sock, head.up)
        return False

    def failed(self, head: Head, why: str, detail: str) -> None:
        """In the head stage: no complete hello (the stage closes both sockets)."""
        name, port, _ = head.target
        reason = {"timeout": "no TLS ClientHello in time", "closed": "closed before the TLS ClientHello"}
        self.record(head.link, "connect", name, port, "denied", reason.get(why, detail), head.t0)

    def relay(self, head: Head) -> None:
        conn, up, link = head.sock, head.up, head.link
        name, port, allowed_by = head.target
        assert up is not None
        try:
            watch = head.handoff.watch()  # the head stage's loop, if this thread holds it
            counts = relay(conn, up, a_prefix=head.data, spawn=self.workers.submit, watch=watch)
            self.record(
                link, "connect", name, port, "allowed", allowed_by, head.t0, counts.a_to_b, counts.b_to_a
            )
        except Exception as err:  # a broken connection must not take the gateway down
            self.record(link, "error", name, port, "denied", f"gateway error: {err!r}"[:300], head.t0)
            if not isinstance(err, OSError):  # not the network: a bug, with its traceback
                _log.exception("gateway tunnel failed")
        finally:
            self.fair.conn_done(head.key)
            close_quietly(conn, up)


@functools.lru_cache(maxsize=4096)  # pure; the same few names on every connection of a bot
def is_ip(host: str) -> bool:
    try:
        return egress.parse_ip_literal(host) is not None
    except ValueError:
        return True


@functools.lru_cache(maxsize=4096)
def safe_normal(host: str) -> str:
    try:
        return egress.normalize_host(host)
    except ValueError:
        return host.lower()


def respond(conn: socket.socket, status: int, text: str) -> None:
    """A one-line plain-text HTTP answer, then the caller closes."""
    reason = {
        400: "Bad Request",
        403: "Forbidden",
        408: "Request Timeout",
        429: "Too Many Requests",
        502: "Bad Gateway",
    }.get(status, "Error")
    body = (text.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(OSError):
        conn.sendall(head + body)  # a fresh socket has room; never waits in the head stage


def respond_429(conn: socket.socket, why: str) -> None:
    respond(conn, 429, f"clawpen gateway: {why}")
