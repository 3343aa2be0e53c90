"""Replace secret values in bot output with ``[REDACTED:NAME]``.

Each secret is searched in the forms it commonly leaks in: the raw bytes; standard and url-safe
base64, with and without ``=`` padding; base64 of the value inside a longer base64 string (e.g.
``Authorization: Basic base64(user:password)``, for values of at least 12 bytes, whose middle
characters do not depend on the neighbouring bytes); and URL-encoded forms
(:func:`urllib.parse.quote` with and without ``/`` kept, and :func:`~urllib.parse.quote_plus`).
All forms of all secrets go into one compiled ``bytes`` regex alternation, longest first, so one
pass over a chunk does the work.

Values shorter than :data:`MIN_LEN` (4) bytes are ignored: they would redact ordinary text.

A value split across two writes cannot be seen by :meth:`Redactor.redact` on each write. Either
redact complete lines (:meth:`Redactor.redact_lines`: the log writer frames lines first, so a
value without a newline is never split), or stream through :meth:`Redactor.stream`, which holds
back a tail of ``longest form - 1`` bytes until the next chunk or :meth:`RedactStream.flush`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

MIN_LEN = 4
MIN_LEN_EMBEDDED_B64 = 12


def _embedded_b64(value: bytes) -> list[bytes]:
    """The base64 characters of ``value`` that are fixed whatever bytes sit before and after it,
    for each of the three alignments it can have in a longer base64 string."""
    out = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + value + b"\0\0")
        start = -(-8 * shift // 6)  # first character made only of the value's bits
        end = 8 * (shift + len(value)) // 6  # one past the last such character
        middle = encoded[start:end]
        out += [middle, middle.replace(b"+", b"-").replace(b"/", b"_")]
    return out


def forms(value: bytes) -> set[bytes]:
    """Every searched form of ``value`` (empty for values shorter than :data:`MIN_LEN`)."""
    if len(value) < MIN_LEN:
        return set()
    std = base64.b64encode(value)
    url = base64.urlsafe_b64encode(value)
    found = {value, std, std.rstrip(b"="), url, url.rstrip(b"=")}
    found |= {quote(value).encode(), quote(value, safe="").encode(), quote_plus(value).encode()}
    if len(value) >= MIN_LEN_EMBEDDED_B64:
        found |= set(_embedded_b64(value))
    return {f for f in found if len(f) >= MIN_LEN}


class Redactor:
    """Redacts a fixed set of secrets. Stateless after construction; share it freely."""

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        by_form: dict[bytes, str] = {}
        for name in sorted(secrets):
            for form in forms(secrets[name]):
                by_form.setdefault(form, name)
        self._names = {form: f"[REDACTED:{name}]".encode() for form, name in by_form.items()}
        self.names = sorted(set(by_form.values()))
        ordered = sorted(by_form, key=lambda f: (-len(f), f))
        self._pattern = re.compile(b"|".join(re.escape(f) for f in ordered)) if ordered else None
        self.max_len = len(ordered[0]) if ordered else 0

    def __repr__(self) -> str:
        return f"Redactor(names={self.names})"

    def _sub(self, match: re.Match[bytes]) -> bytes:
        return self._names[match.group(0)]

    def redact(self, data: bytes) -> bytes:
        """``data`` with every form of every secret replaced by ``[REDACTED:NAME]``."""
        if self._pattern is None:
            return data
        return self._pattern.sub(self._sub, data)

    def redact_lines(self, block: bytes) -> bytes:
        """Redact a block of complete lines (what the log writer hands over). The same as
        :meth:`redact`; named so callers state that the block does not end mid-line."""
        return self.redact(block)

    def redact_text(self, text: str) -> str:
        """:meth:`redact` for ``str`` (UTF-8; undecodable bytes survive via surrogateescape)."""
        return self.redact(text.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def stream(self) -> RedactStream:
        """A redactor for one byte stream written in arbitrary chunks."""
        return RedactStream(self)


class RedactStream:
    """Redacts one stream chunk by chunk, holding back a tail of up to ``max_len - 1`` bytes so a
    value split across chunks is still caught. Call :meth:`flush` at the end of the stream."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """Redact ``chunk``; returns what is safe to write now (may be shorter than ``chunk``)."""
        pattern = self._redactor._pattern
        if pattern is None:
            return chunk
        buf = self._tail + chunk
        # A match starting before ``cutoff`` lies wholly inside ``buf`` whatever follows.
        cutoff = max(0, len(buf) - (self._redactor.max_len - 1))
        out: list[bytes] = []
        pos = 0
        for match in pattern.finditer(buf):
            if match.start() >= cutoff:
                break
            out += [buf[pos : match.start()], self._redactor._sub(match)]
            pos = match.end()
        keep = max(pos, cutoff)
        out.append(buf[pos:keep])
        self._tail = buf[keep:]
        return b"".join(out)

    def flush(self) -> bytes:
        """Redact and return whatever is held back."""
        tail, self._tail = self._tail, b""
        return self._redactor.redact(tail)
