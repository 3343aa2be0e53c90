"""Syslog over TCP, with or without TLS: RFC 5424 messages in RFC 6587/5425 octet-counted framing.

One record is one message::

    LEN SP <PRI>1 TIMESTAMP HOSTNAME clawpen - STREAM [clawpen@32473 bot=".." replica=".."
    stream=".." release=".." host=".."] TEXT

- PRI = facility user (1) * 8 + severity: ``out`` is informational (6, PRI 14), ``err`` is error
  (3, PRI 11); any other stream is notice (5).
- TIMESTAMP is the record's own time (RFC 3339, microseconds, ``Z``); HOSTNAME the batch's host
  (printable US-ASCII, other bytes become ``-``); MSGID the stream.
- Structured data ``clawpen@32473`` (32473 is the documentation enterprise number, RFC 5612);
  values escape ``"``, ``\\`` and ``]`` (RFC 5424 6.3.3); ``release`` is left out when unknown.
- MSG is the text as UTF-8 without a BOM; bytes that are not valid UTF-8 are each replaced by
  U+FFFD (so a receiver always gets valid UTF-8). A message longer than ``max_message`` (8096
  bytes, what rsyslog keeps with its default ``maxMessageSize`` of 8k) is cut and marked
  ``[truncated from N bytes]``: rsyslog would otherwise cut it itself and take the rest for a
  second message without fields.

``acked`` is true once the kernel's send queue is empty (``SIOCOUTQ``, which counts bytes sent
but not yet acknowledged by the peer's TCP as well as unsent ones). ``send`` uses ``sendall``, so
with TLS nothing stays inside the SSL object: every record is in the kernel as TLS records when
it returns. The peer's TCP having a byte is not the peer having written it: a receiver that hangs
keeps it, but one that exits drops what its TCP took and it had not read (seen: 19 lines when
rsyslog 8.2302 was stopped with SIGTERM mid-stream in a CI run), and one that is SIGKILLed also
what it had read and not written (up to 1,744 lines in 3 of 20 kills). Syslog has no application
acknowledgement; RELP would. A peer that
closed or reset the connection is a :class:`ShipError` on the next ``send`` or ``acked``.
Every socket call has a timeout (CPython waits with ``poll()``, never ``select()``).
"""

from __future__ import annotations

import array
import errno
import fcntl
import select
import socket
import ssl
import termios
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from clawpen.errors import ConfigError
from clawpen.logs.ship.model import ShipError, ShipMeta, ShipRecord, client_context

FACILITY_USER = 1
SEVERITY = {"out": 6, "err": 3}  # informational, error
SEVERITY_OTHER = 5  # notice
SD_ID = "clawpen@32473"
# bytes: what rsyslog 8.2302 with its default maxMessageSize (8k) keeps of one message whole
# (measured: longer ones are cut at 8096 and the rest arrives as a message of its own)
MAX_MESSAGE = 8096
SETTLE = 0.3  # seconds a TLS receiver gets to refuse our client certificate (see _settle)
_PEER_GONE = select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL


def _printable(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (RFC 5424 PRINTUSASCII), at most
    ``limit`` characters, ``-`` when empty."""
    out = "".join(c if 33 <= ord(c) <= 126 else "-" for c in value)[:limit]
    return out or "-"


def sd_escape(value: str) -> str:
    """A PARAM-VALUE with ``"``, ``\\`` and ``]`` escaped (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def pri(stream: str) -> int:
    return FACILITY_USER * 8 + SEVERITY.get(stream, SEVERITY_OTHER)


def _seconds(sec: int) -> str:
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def timestamp(at: float) -> str:
    """RFC 3339 in UTC with microseconds (rounded to the nearest)."""
    sec, us = divmod(round(at * 1_000_000), 1_000_000)
    return f"{_seconds(sec)}.{us:06d}Z"


def structured_data(record: ShipRecord, meta: ShipMeta) -> str:
    params = [("bot", record.bot), ("replica", str(record.replica)), ("stream", record.stream)]
    if meta.release is not None:
        params.append(("release", str(meta.release)))
    params.append(("host", meta.host))
    return "[" + SD_ID + "".join(f' {k}="{sd_escape(v)}"' for k, v in params) + "]"


def _utf8(text: bytes) -> bytes:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return text.decode("utf-8", errors="replace").encode("utf-8")
    return text


class Formatter:
    """Formats messages; remembers the header parts a bot's records share (their structured
    data, the second of their time), so a batch costs little more than its texts."""

    _LIMIT = 4096  # remembered entries of each kind before starting over

    def __init__(self, app_name: str = "clawpen", max_size: int = MAX_MESSAGE) -> None:
        self._app = _printable(app_name, 48)
        self._max = max_size
        self._tail: dict[tuple[str, int, str, str, int | None], bytes] = {}
        self._second: dict[int, bytes] = {}

    def _header_tail(self, record: ShipRecord, meta: ShipMeta) -> bytes:
        key = (record.bot, record.replica, record.stream, meta.host, meta.release)
        tail = self._tail.get(key)
        if tail is None:
            if len(self._tail) >= self._LIMIT:
                self._tail.clear()
            tail = self._tail[key] = (
                f" {_printable(meta.host, 255)} {self._app} - {_printable(record.stream, 32)} "
                f"{structured_data(record, meta)}"
            ).encode()
        return tail

    def _time(self, at: float) -> bytes:
        sec, us = divmod(round(at * 1_000_000), 1_000_000)
        day = self._second.get(sec)
        if day is None:
            if len(self._second) >= self._LIMIT:
                self._second.clear()
            day = self._second[sec] = _seconds(sec).encode()
        return b"%s.%06dZ" % (day, us)

    def message(self, record: ShipRecord, meta: ShipMeta) -> bytes:
        """One RFC 5424 message (without framing), at most ``max_size`` bytes: a longer text is
        cut (at a character boundary) and ends with `` [truncated from N bytes]``."""
        head = b"<%d>1 %s%s" % (pri(record.stream), self._time(record.at), self._header_tail(record, meta))
        if not record.text:
            return head
        text = _utf8(record.text)
        if len(head) + 1 + len(text) > self._max:
            mark = f" [truncated from {len(record.text)} bytes]".encode()
            keep = max(0, self._max - len(head) - 1 - len(mark))
            text = text[:keep].decode("utf-8", errors="ignore").encode("utf-8") + mark
        return head + b" " + text


def format_message(
    record: ShipRecord, meta: ShipMeta, app_name: str = "clawpen", max_size: int = MAX_MESSAGE
) -> bytes:
    """One RFC 5424 message (see :meth:`Formatter.message`)."""
    return Formatter(app_name, max_size).message(record, meta)


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 6587 3.4.1, RFC 5425 4.3): ``LEN SP MSG``."""
    return b"%d %s" % (len(message), message)


class SyslogTransport:
    """One syslog receiver over TCP (TLS when ``tls``); see the module doc."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool,
        ca: Path | None,
        cert: Path | None,
        key: Path | None,
        server_name: str | None,
        app_name: str = "clawpen",
        max_message: int = MAX_MESSAGE,
    ) -> None:
        if (cert is None) != (key is None):
            raise ConfigError(
                "a client certificate needs its key and a key its certificate",
                where=f"syslog {host}:{port}",
                hint="give both cert and key, or neither",
            )
        self.name = f"syslog{'+tls' if tls else ''}://{host}:{port}"
        self._host, self._port = host, port
        self._tls, self._ca, self._cert, self._key = tls, ca, cert, key
        self._server_name = server_name or host
        self._format = Formatter(app_name, max_message)
        self._sock: socket.socket | None = None
        self._timeout = 10.0

    def _context(self) -> ssl.SSLContext:
        ctx = client_context(self.name, self._ca, self._cert, self._key)
        ctx.check_hostname = True
        return ctx

    def open(self, timeout: float) -> None:
        self.close()
        self._timeout = timeout
        try:
            sock = socket.create_connection((self._host, self._port), timeout=timeout)
        except OSError as exc:
            raise ShipError(
                f"cannot connect: {exc.strerror or exc}", where=self.name, hint="is the receiver up?"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls:
            try:
                ctx = self._context()
                sock = ctx.wrap_socket(sock, server_hostname=self._server_name)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise ShipError(
                    f"the receiver's certificate does not verify: {exc.verify_message}",
                    where=self.name,
                    hint="set the target's ca to the CA that signed the receiver's certificate "
                    "and server_name to a name in it",
                ) from None
            except (OSError, ShipError) as exc:
                sock.close()
                if isinstance(exc, ShipError):
                    raise
                raise ShipError(f"TLS handshake failed: {exc}", where=self.name) from None
        self._sock = sock
        if self._tls:
            self._settle(sock, min(timeout, SETTLE))

    def _settle(self, sock: socket.socket, seconds: float) -> None:
        """Give a receiver that checks client certificates time to refuse ours (or its absence):
        it does so after the handshake (TLS 1.3, and rsyslog's checks in any TLS version), and
        bytes sent before that would be acknowledged by its TCP and then dropped. Costs
        ``SETTLE`` per connection, not per record."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._check_peer(sock, max(1, int(left * 1000)))

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ShipError("the connection is not open", where=self.name)
        return self._sock

    def _check_peer(self, sock: socket.socket, wait_ms: int) -> None:
        """Raise when the peer closed or reset the connection (it never sends us data, so end
        of stream or an error is all a readable socket can mean; a TLS 1.3 session ticket only
        sets POLLIN and is ignored). Waits up to ``wait_ms`` for such an event."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        events = poller.poll(wait_ms)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.close()
            raise ShipError(f"the connection broke: {errno.errorcode.get(err, err)}", where=self.name)
        gone = any(ev & _PEER_GONE for _fd, ev in events)
        if not gone and any(ev & select.POLLIN for _fd, ev in events):
            gone = self._drain(sock)
        if gone:
            self.close()
            raise ShipError("the receiver closed the connection", where=self.name)

    def _drain(self, sock: socket.socket) -> bool:
        """Read what the peer sent without waiting (TLS: session tickets, a close_notify or an
        alert); True when that is the end of the stream."""
        sock.settimeout(0)
        try:
            while True:
                if not sock.recv(4096):
                    return True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except (OSError, ValueError):
            return True
        finally:
            sock.settimeout(self._timeout)

    def send(self, records: Sequence[ShipRecord], meta: ShipMeta) -> None:
        sock = self._socket()
        self._check_peer(sock, 0)
        data = b"".join(frame(self._format.message(r, meta)) for r in records)
        sock.settimeout(self._timeout)
        try:
            sock.sendall(data)
        except (OSError, ValueError) as exc:  # ValueError: an SSL socket closed under us
            self.close()
            raise ShipError(f"cannot send: {exc}", where=self.name) from None

    def unacked(self) -> int:
        """Bytes in the kernel's send queue (not sent, or sent but not acknowledged)."""
        buf = array.array("i", [0])
        fcntl.ioctl(self._socket().fileno(), termios.TIOCOUTQ, buf, True)
        return buf[0]

    def acked(self, timeout: float) -> bool:
        sock = self._socket()
        deadline = time.monotonic() + timeout
        wait = 0.0001  # loopback acknowledges in microseconds: start short, back off to 10 ms
        while True:
            if self.unacked() == 0:
                self._check_peer(sock, 0)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                self._check_peer(sock, 0)
                return False
            if wait < 0.001:
                self._check_peer(sock, 0)
                time.sleep(min(wait, left))
            else:
                self._check_peer(sock, max(1, int(min(wait, left) * 1000)))
            wait = min(wait * 2, 0.01)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
