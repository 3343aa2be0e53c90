"""Find the destination name in a connection's first bytes: TLS ClientHello SNI, HTTP Host.

Pure functions over ``bytes``. Each returns :data:`MORE` while the buffer is too short to decide,
so the caller reads again (up to a limit) and asks once more.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, NamedTuple


class _More(Enum):
    MORE = "more"


MORE: Final = _More.MORE  # read more bytes, then ask again
MAX_HELLO = 64 * 1024  # a ClientHello (with post-quantum key shares) is far below this
MAX_HEAD = 32 * 1024  # HTTP request line and headers


class NotTLS(ValueError):
    """The bytes are not (or no longer) a TLS handshake."""


def looks_like_tls(data: bytes) -> bool:
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03


def client_hello_sni(data: bytes) -> str | _More | None:
    """The server name of the ClientHello at the start of ``data``; None if the hello has
    none; :data:`MORE` if incomplete. Raises :class:`NotTLS` for anything else.

    The handshake message may span several TLS records; they are joined first."""
    hs = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return MORE
        if data[pos] != 0x16 or data[pos + 1] != 0x03:
            raise NotTLS("not a TLS handshake record")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            raise NotTLS("bad TLS record length")
        if len(data) < pos + 5 + length:
            return MORE
        hs += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(hs) >= 4:
            if hs[0] != 0x01:
                raise NotTLS("first handshake message is not a ClientHello")
            need = int.from_bytes(hs[1:4], "big")
            if need > MAX_HELLO:
                raise NotTLS("ClientHello too large")
            if len(hs) >= 4 + need:
                return _sni_from_hello(bytes(hs[4 : 4 + need]))
        if pos > MAX_HELLO:
            raise NotTLS("ClientHello too large")


def _sni_from_hello(body: bytes) -> str | None:
    try:
        p = 2 + 32  # version, random
        p += 1 + body[p]  # session id
        p += 2 + int.from_bytes(body[p : p + 2], "big")  # cipher suites
        p += 1 + body[p]  # compression methods
        if p == len(body):
            return None  # no extensions
        end = p + 2 + int.from_bytes(body[p : p + 2], "big")
        p += 2
        if end > len(body):
            raise NotTLS("truncated ClientHello extensions")
        while p + 4 <= end:
            kind = int.from_bytes(body[p : p + 2], "big")
            size = int.from_bytes(body[p + 2 : p + 4], "big")
            p += 4
            if kind == 0:  # server_name
                return _host_name(body[p : p + size])
            p += size
        return None
    except IndexError:
        raise NotTLS("truncated ClientHello") from None


def _host_name(ext: bytes) -> str | None:
    p = 2  # list length
    while p + 3 <= len(ext):
        kind = ext[p]
        size = int.from_bytes(ext[p + 1 : p + 3], "big")
        name = ext[p + 3 : p + 3 + size]
        if kind == 0:
            if len(name) != size or not name:
                raise NotTLS("bad server_name")
            try:
                return name.decode("ascii")
            except UnicodeDecodeError:
                raise NotTLS("server_name is not ASCII") from None
        p += 3 + size
    return None


class Request(NamedTuple):
    """An HTTP request head: method, target, version, headers (in order), and the head's size."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    size: int

    def header(self, name: str) -> str | None:
        low = name.lower()
        for key, value in self.headers:
            if key.lower() == low:
                return value
        return None


class BadRequest(ValueError):
    """Not an HTTP/1.x request head."""


def http_request(data: bytes) -> Request | _More:
    """The request head at the start of ``data``, or :data:`MORE`. Raises :class:`BadRequest`."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise BadRequest("request head too large")
        first = data.split(b"\r\n", 1)[0]
        if b"\r\n" in data or len(first) > 16:
            _request_line(first, partial=b"\r\n" not in data)
        return MORE
    head = data[:end].decode("latin-1")
    lines = head.split("\r\n")
    method, target, version = _request_line(lines[0].encode("latin-1"), partial=False)
    headers = []
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip() or " " in key:
            raise BadRequest(f"bad header line {line[:40]!r}")
        headers.append((key, value.strip()))
    return Request(method, target, version, tuple(headers), end + 4)


def _request_line(line: bytes, *, partial: bool) -> tuple[str, str, str]:
    parts = line.decode("latin-1").split(" ")
    if partial:
        if not _method(parts[0]):
            raise BadRequest("not an HTTP request")
        return "", "", ""
    if len(parts) != 3 or not _method(parts[0]) or not parts[2].startswith("HTTP/1."):
        raise BadRequest("not an HTTP/1.x request line")
    return parts[0], parts[1], parts[2]


def _method(word: str) -> bool:
    return word.isascii() and word.isalpha() and word.isupper()


def split_host_port(text: str, default: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` as (host, port); raises ``ValueError``."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad host {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            return host, default
        if not rest.startswith(":"):
            raise ValueError(f"bad host {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"IPv6 host {text!r} needs brackets")
    else:
        return text, default
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


def absolute_url(target: str) -> tuple[str, int, str]:
    """``http://host[:port]/path`` as (host, port, origin-form path); raises ``ValueError``."""
    if not target.lower().startswith("http://"):
        raise ValueError("the proxy forwards http:// URLs only (use CONNECT for https)")
    rest = target[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if path.startswith("?"):
        path = "/" + path
    if "@" in authority:
        raise ValueError("credentials in the URL are not forwarded")
    host, port = split_host_port(authority, 80)
    if not host:
        raise ValueError("the URL has no host")
    return host, port, path


def sni_of(data: bytes) -> str | _More | None:
    """:func:`client_hello_sni` (the transparent path's parser for port 443)."""
    return client_hello_sni(data)


def connect_hello(data: bytes) -> str | _More | None:
    """After a CONNECT to port 443 is answered: the ClientHello's server name, as
    :func:`client_hello_sni`; raises :class:`NotTLS` with the reason for anything else."""
    if len(data) >= 3 and not looks_like_tls(data):
        raise NotTLS("CONNECT to port 443 without a TLS ClientHello")
    try:
        return client_hello_sni(data)
    except NotTLS as err:
        raise NotTLS(f"bad TLS ClientHello: {err}") from None


def host_of(data: bytes) -> str | _More | None:
    """The ``Host`` header's host of the request head in ``data`` (port 80), or :data:`MORE`."""
    req = http_request(data)
    if isinstance(req, _More):
        return req
    host = req.header("Host")
    if not host:
        return None
    return split_host_port(host, 80)[0]
