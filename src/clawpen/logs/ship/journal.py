"""systemd-journal-remote's upload: ``POST <url>/upload`` with a body in journal export format.

One entry per record, a blank line between entries::

    __REALTIME_TIMESTAMP=<record time in microseconds, at least 1>
    _HOSTNAME=<host>
    SYSLOG_IDENTIFIER=clawpen
    PRIORITY=6 (out) | 3 (err) | 5 (other streams)
    CLAWPEN_LOG= CLAWPEN_BOT= CLAWPEN_REPLICA= CLAWPEN_STREAM= CLAWPEN_RELEASE= (when known)
    MESSAGE=<text>

A value with a newline or bytes that are not valid UTF-8 goes in the binary-safe form
(``KEY\\n<little-endian 64-bit length><bytes>\\n``), so the text arrives byte for byte. The
receiver's 2xx answer acknowledges the whole batch: ``acked`` is true after a ``send`` that
returned; any other answer or a broken connection is a :class:`ShipError`.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Sequence
from pathlib import Path

import httpx

from clawpen.errors import ConfigError
from clawpen.logs.ship.model import ShipError, ShipMeta, ShipRecord, client_context

CONTENT_TYPE = "application/vnd.fdo.journal"
PRIORITY = {"out": 6, "err": 3}
PRIORITY_OTHER = 5


def export_field(key: str, value: bytes) -> bytes:
    """One field in export format (binary-safe when the value needs it)."""
    try:
        value.decode("utf-8")
        text_safe = b"\n" not in value
    except UnicodeDecodeError:
        text_safe = False
    if text_safe:
        return key.encode() + b"=" + value + b"\n"
    return key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"


def export_entry(record: ShipRecord, meta: ShipMeta) -> bytes:
    """One journal entry (ending with the blank line)."""
    fields: list[tuple[str, bytes]] = [
        # journal-remote aborts the whole upload on a time of 0 or less: such a record (a log
        # without a usable time) would block its target for ever, so it gets 1 µs instead
        ("__REALTIME_TIMESTAMP", str(max(1, round(record.at * 1_000_000))).encode()),
        ("_HOSTNAME", meta.host.encode()),
        ("SYSLOG_IDENTIFIER", b"clawpen"),
        ("PRIORITY", str(PRIORITY.get(record.stream, PRIORITY_OTHER)).encode()),
        ("CLAWPEN_LOG", record.log.encode()),
        ("CLAWPEN_BOT", record.bot.encode()),
        ("CLAWPEN_REPLICA", str(record.replica).encode()),
        ("CLAWPEN_STREAM", record.stream.encode()),
    ]
    if meta.release is not None:
        fields.append(("CLAWPEN_RELEASE", str(meta.release).encode()))
    fields.append(("MESSAGE", record.text))
    return b"".join(export_field(k, v) for k, v in fields) + b"\n"


def export_batch(records: Sequence[ShipRecord], meta: ShipMeta) -> bytes:
    return b"".join(export_entry(r, meta) for r in records)


class JournalRemoteTransport:
    """One systemd-journal-remote receiver (``http://`` or ``https://``); see the module doc."""

    def __init__(self, url: str, *, ca: Path | None, cert: Path | None, key: Path | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                "a journal-remote target needs an http:// or https:// URL",
                where=url,
                hint="for example https://logs.example:19532",
            )
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise ConfigError(
                "a journal-remote URL must not carry credentials",
                where="journal-remote URL",
                hint="authenticate with a client certificate (cert and key) instead",
            )
        if (cert is None) != (key is None):
            raise ConfigError(
                "a client certificate needs its key and a key its certificate",
                where=url,
                hint="give both cert and key, or neither",
            )
        self.name = f"journal-remote {url}"
        self._url = url.rstrip("/") + "/upload"
        self._ca, self._cert, self._key = ca, cert, key
        self._client: httpx.Client | None = None
        self._acked = True

    def _verify(self) -> ssl.SSLContext:
        return client_context(self.name, self._ca, self._cert, self._key)

    def open(self, timeout: float) -> None:
        self.close()
        verify = self._verify() if self._url.startswith("https://") else True
        self._client = httpx.Client(verify=verify, timeout=timeout, trust_env=False)
        self._acked = True

    def send(self, records: Sequence[ShipRecord], meta: ShipMeta) -> None:
        if self._client is None:
            raise ShipError("the connection is not open", where=self.name)
        if not records:
            return
        self._acked = False
        try:
            resp = self._client.post(
                self._url, content=export_batch(records, meta), headers={"Content-Type": CONTENT_TYPE}
            )
        except httpx.HTTPError as exc:
            self.close()
            raise ShipError(f"the upload failed: {exc.__class__.__name__}: {exc}", where=self.name) from None
        if not 200 <= resp.status_code < 300:
            detail = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
            self.close()
            raise ShipError(
                f"the receiver refused the upload: HTTP {resp.status_code} {detail}".rstrip(),
                where=self.name,
            )
        self._acked = True

    def acked(self, timeout: float) -> bool:
        return self._acked

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
