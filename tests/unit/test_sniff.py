"""SNI from real ClientHellos (made by Python's ssl) and HTTP request heads."""

from __future__ import annotations

import ssl

import pytest

from clawpen.net import sniff


def client_hello(server_hostname: str | None) -> bytes:
    """The first flight a real TLS client sends."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_sni_from_real_hello() -> None:
    hello = client_hello("api.example.com")
    assert sniff.looks_like_tls(hello)
    assert sniff.client_hello_sni(hello) == "api.example.com"


def test_hello_without_sni() -> None:
    assert sniff.client_hello_sni(client_hello(None)) is None


def test_partial_hello_asks_for_more() -> None:
    hello = client_hello("api.example.com")
    for cut in (1, 4, 5, 40, len(hello) - 1):
        assert sniff.client_hello_sni(hello[:cut]) is sniff.MORE


def test_hello_split_over_records() -> None:
    hello = client_hello("split.example.com")
    body = hello[5:]
    half = len(body) // 2
    records = b""
    for part in (body[:half], body[half:]):
        records += b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
    assert sniff.client_hello_sni(records) == "split.example.com"
    assert sniff.client_hello_sni(records[:-3]) is sniff.MORE


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
        b"\x17\x03\x03\x00\x01x",
        b"SSH-2.0-x",
    ],
)
def test_not_tls(data: bytes) -> None:
    with pytest.raises(sniff.NotTLS):
        sniff.client_hello_sni(data)


def test_truncated_hello_body_is_not_tls() -> None:
    # A record that claims a complete ClientHello whose extensions run past its end.
    hello = bytearray(client_hello("x.example.com"))
    body_len = int.from_bytes(hello[3:5], "big")
    cut = hello[: 5 + body_len - 10]
    cut[3:5] = (body_len - 10).to_bytes(2, "big")
    cut[6:9] = (body_len - 14).to_bytes(3, "big")
    with pytest.raises(sniff.NotTLS):
        sniff.client_hello_sni(bytes(cut))


def test_http_request_head() -> None:
    data = b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\nUser-Agent: t\r\n\r\nBODY"
    req = sniff.http_request(data)
    assert isinstance(req, sniff.Request)
    assert (req.method, req.target, req.version) == ("GET", "/a?b=1", "HTTP/1.1")
    assert req.header("host") == "Example.com:8080"
    assert data[req.size :] == b"BODY"
    assert sniff.http_request(data[:20]) is sniff.MORE


@pytest.mark.parametrize("data", [b"\x16\x03\x01 hello\r\n\r\n", b"get / HTTP/1.1\r\n\r\n", b"GET /\r\n\r\n"])
def test_bad_requests(data: bytes) -> None:
    with pytest.raises(sniff.BadRequest):
        sniff.http_request(data)


def test_absolute_url_and_host_port() -> None:
    assert sniff.absolute_url("http://Example.com/x?y") == ("Example.com", 80, "/x?y")
    assert sniff.absolute_url("http://example.com:8080") == ("example.com", 8080, "/")
    assert sniff.absolute_url("http://[::1]:81/p") == ("::1", 81, "/p")
    assert sniff.absolute_url("http://h?q=1") == ("h", 80, "/?q=1")
    for bad in ("https://example.com/", "http://user:pw@example.com/", "http:///x", "http://h:99999/"):
        with pytest.raises(ValueError):
            sniff.absolute_url(bad)
    assert sniff.split_host_port("h:443", 0) == ("h", 443)
    assert sniff.split_host_port("h", 0) == ("h", 0)
    with pytest.raises(ValueError):
        sniff.split_host_port("::1:443", 0)
