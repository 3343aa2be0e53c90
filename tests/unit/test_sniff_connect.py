"""sniff.connect_hello: the ClientHello the gateway waits for after a CONNECT's 200."""

from __future__ import annotations

import pytest
from test_sniff import client_hello

from clawpen.net import sniff


def test_connect_hello_gives_the_sni_and_asks_for_more() -> None:
    hello = client_hello("api.example.com")
    assert sniff.connect_hello(hello) == "api.example.com"
    assert sniff.connect_hello(client_hello(None)) is None
    for cut in (0, 2, 5, len(hello) - 1):
        assert sniff.connect_hello(hello[:cut]) is sniff.MORE


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GET / HTTP/1.1\r\n", "without a TLS ClientHello"),
        (b"SSH-2.0-x\r\n", "without a TLS ClientHello"),
        (b"\x16\x03\x01\x00\x00", "bad TLS ClientHello: bad TLS record length"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "bad TLS ClientHello: first handshake message"),
    ],
)
def test_connect_hello_refuses_what_is_not_a_hello(data: bytes, why: str) -> None:
    with pytest.raises(sniff.NotTLS, match=why):
        sniff.connect_hello(data)
