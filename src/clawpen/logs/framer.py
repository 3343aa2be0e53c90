"""Splitting a bot's byte stream into lines, in bounded memory (used by :mod:`clawpen.logs.writer`).

A line longer than ``max_line`` is cut into pieces of at most ``max_line`` bytes, each but the
last ending with :data:`MARKER`, at a UTF-8 character boundary when there is one nearby. The
checks are bytes operations done in C over whole chunks (see the writer's module doc).
"""

from __future__ import annotations

from clawpen.errors import UsageError

MARKER = " …[cont]".encode()
DEFAULT_MAX_LINE = 16 << 10
_MIN_LINE = 64


def _cut(data: bytes, limit: int) -> int:
    """Where to cut ``data`` (longer than ``limit``): at ``limit``, moved back to a UTF-8 boundary."""
    pos = limit
    while pos > limit - 3 and data[pos] & 0xC0 == 0x80:
        pos -= 1
    return limit if data[pos] & 0xC0 == 0x80 else pos


class LineFramer:
    """Splits a byte stream into lines on ``b"\\n"``, keeping an unfinished last line buffered.

    Bytes other than ``\\n`` are untouched (a ``\\r`` of CRLF stays in the line). A line longer
    than ``max_line`` is emitted in pieces, each but the last ending with :data:`MARKER`, so the
    buffer never holds more than ``max_line`` bytes.
    """

    __slots__ = ("_max", "_pending")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < _MIN_LINE:
            raise UsageError(f"max_line {max_line} is too small", hint=f"use {_MIN_LINE} bytes or more")
        self._max = max_line
        self._pending = b""

    @property
    def pending(self) -> int:
        """Bytes of the unfinished line held back."""
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines completed by ``chunk``, without their newline."""
        block = self.feed_block(chunk)
        return block.split(b"\n")[:-1] if block else []

    def flush(self) -> list[bytes]:
        """At end of stream: the unfinished last line, if any."""
        block = self.flush_block()
        return [block[:-1]] if block else []

    def feed_block(self, chunk: bytes) -> bytes:
        """Like :meth:`feed`, as one bytes object: the lines, each ending in ``\\n``, or ``b""``."""
        data = self._pending + chunk if self._pending else chunk
        limit = self._max
        end = data.rfind(b"\n") + 1
        if end == len(data):
            block, rest = data, b""
        else:
            block, rest = data[:end], data[end:]
        if end > limit + 1 and self._has_long(block):
            block = self._split_long(block)
        if len(rest) > limit:
            pieces = []
            while len(rest) > limit:
                pos = _cut(rest, limit)
                pieces.append(rest[:pos] + MARKER + b"\n")
                rest = rest[pos:]
            block += b"".join(pieces)
        self._pending = rest
        return block

    def flush_block(self) -> bytes:
        """Like :meth:`flush`, as one bytes object ending in ``\\n``, or ``b""``."""
        rest, self._pending = self._pending, b""
        return rest + b"\n" if rest else b""

    def _has_long(self, block: bytes) -> bool:
        # One rfind per ``limit`` bytes: the last newline within limit + 1 bytes of a line start
        # ends a line of at most ``limit`` bytes; none there means a longer line.
        limit = self._max
        start, size = 0, len(block)
        while size - start > limit + 1:
            newline = block.rfind(b"\n", start, start + limit + 1)
            if newline < 0:
                return True
            start = newline + 1
        return False

    def _split_long(self, block: bytes) -> bytes:
        limit = self._max
        lines: list[bytes] = []
        for whole in block.split(b"\n")[:-1]:
            rest = whole
            while len(rest) > limit:
                pos = _cut(rest, limit)
                lines.append(rest[:pos] + MARKER)
                rest = rest[pos:]
            lines.append(rest)
        lines.append(b"")
        return b"\n".join(lines)
