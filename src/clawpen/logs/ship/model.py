"""What the shipping parts share: a record to ship, the transport protocol, the error.

A :class:`Transport` carries records to one receiver. ``send`` writes a batch (it may block for
flow control but never for an acknowledgement); ``acked`` tells whether everything sent so far
has been acknowledged by the receiver (syslog over TCP/TLS: the kernel's send queue is empty,
``SIOCOUTQ`` = 0, so the receiver's TCP took every byte; journal-remote: the upload's HTTP 2xx).
The shipper moves a target's cursor only past acknowledged records, so a receiver that goes
away loses nothing: the records after the cursor are sent again (duplicates only at that
boundary). Every failure is a :class:`ShipError`; the shipper closes the transport, waits with
backoff and opens it again.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from clawpen.errors import HostError


class ShipError(HostError):
    """A receiver cannot be reached, refused a record, or broke the connection."""


def client_context(name: str, ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A TLS client context for target ``name``: the receiver verified against ``ca`` (the system's
    CAs without one), ``cert``/``key`` presented when both are given, TLS 1.2 at least."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert is not None and key is not None:
            ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ShipError(
            f"cannot load the TLS files: {exc.strerror or exc.__class__.__name__}",
            where=name,
            hint="check the ca, cert and key paths of the target (PEM files, readable)",
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True)
class ShipRecord:
    """One log record of a bot, as its log file holds it (already redacted by the writer).
    ``log`` is the log's name (the bot, or ``bot-r2`` for replica 2); ``at`` the record's UTC
    time (epoch seconds); ``text`` the line without its newline."""

    log: str
    bot: str
    replica: int
    stream: str  # "out" | "err" (clawpen's own markers come on "err")
    at: float
    text: bytes


@dataclass(frozen=True)
class ShipMeta:
    """What every record of a batch carries besides its own fields."""

    host: str
    release: int | None


class Transport(Protocol):
    """One receiver (see the module doc)."""

    name: str

    def open(self, timeout: float) -> None: ...

    def send(self, records: Sequence[ShipRecord], meta: ShipMeta) -> None: ...

    def acked(self, timeout: float) -> bool: ...

    def close(self) -> None: ...
