"""Bot-controlled text made safe for a terminal: control characters shown, never obeyed.

A bot's log line, a DNS name it looked up, a health check's output or an event reason can hold
escape sequences: ``ESC ] 0 ; TEXT BEL`` sets the terminal's title, OSC 52 writes the clipboard
on some terminals, ``ESC [ 2 J`` clears the screen, a C1 ``CSI`` (U+009B) does the same without
an ``ESC``, and the bidi overrides (U+202A-U+202E, U+2066-U+2069) make text read differently
than it is. :func:`escape` shows each such character as text, as journalctl does:

- C0 controls but the tab (``\\x00``-``\\x1f``, newline and carriage return included: a newline
  inside a field could fake a whole line) and DEL become ``\\xNN``;
- C1 controls (U+0080-U+009F) and the bidi controls become ``\\uNNNN``;
- bytes that were not valid UTF-8 (decoded with ``surrogateescape``) become ``\\xNN``.

Everything else, valid UTF-8 text in any script included, is left as it is. A backslash is not
doubled: the escaping is for reading, not for parsing (``--json`` is for parsing).

The CLI escapes when it writes to a terminal and writes the exact text otherwise (a pipe or a
file); ``--raw`` writes the exact text to a terminal too (see docs/cli.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TextIO

# C0 but tab, DEL, C1, the bidi embeddings/overrides/isolates, lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _show(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character shown as an escape (see the module's doc)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_show, text)


def escape_bytes(data: bytes) -> str:
    """Bytes as safe text: UTF-8 where valid, ``\\xNN`` for what is not, controls escaped."""
    return escape(data.decode("utf-8", "surrogateescape"))


def exact(text: str) -> str:
    return text


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` writes to a terminal (False for pipes, files and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def for_stream(stream: TextIO, *, raw: bool = False) -> Callable[[str], str]:
    """The filter for text written to ``stream``: :func:`escape` on a terminal unless ``raw``,
    the text as it is otherwise."""
    return escape if not raw and is_terminal(stream) else exact


def clean(data: Any, fn: Callable[[str], str] = escape) -> Any:
    """``data`` (a reply of the daemon: dicts, lists, strings, numbers) with ``fn`` applied to
    every string in it, keys included; other values are left as they are."""
    if isinstance(data, str):
        return fn(data)
    if isinstance(data, dict):
        return {clean(k, fn): clean(v, fn) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [clean(v, fn) for v in data]
    return data


def clean_for(stream: TextIO, data: Any, *, raw: bool = False) -> Any:
    """``data`` ready to render to ``stream``: escaped on a terminal (unless ``raw``)."""
    fn = for_stream(stream, raw=raw)
    return data if fn is exact else clean(data, fn)
