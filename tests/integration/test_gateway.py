"""The egress gateway against a fake internet in network namespaces (see gateway_env.py).

Each hostile attempt runs for real from the bot's namespace, and a positive control shows the
same destination answers when asked from outside (the upstream namespace) or when allowed.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_env import (
    GW_ADDR,
    OTHER_ADDR,
    WWW_ADDR,
    Env,
    fake_internet,
)

pytestmark = [pytest.mark.netns, pytest.mark.root]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with fake_internet(tmp_path_factory.mktemp("gw")) as e:
        yield e


def _proxy_request(env: Env, raw: bytes) -> bytes:
    """Send ``raw`` to the explicit proxy from the bot's namespace; the whole reply."""
    with env.sock(env.bot) as s:
        s.connect((GW_ADDR, 3128))
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_allowed_name_through_proxy(env: Env) -> None:
    https = env.curl("-x", env.proxy(), "https://www.allowed.test/p?q=1")
    assert https.returncode == 0, https.stderr
    assert f"hello from {WWW_ADDR}:443 host=www.allowed.test path=/p?q=1" in https.stdout
    plain = env.curl("-x", env.proxy(), "http://www.allowed.test/x")
    assert plain.returncode == 0, plain.stderr
    assert f"hello from {WWW_ADDR}:80 host=www.allowed.test path=/x" in plain.stdout
    post = env.curl("-x", env.proxy(), "--data-binary", "@/etc/services", "https://www.allowed.test/up")
    assert f"got {Path('/etc/services').stat().st_size} bytes" in post.stdout
    assert env.wait_row(lambda r: r["kind"] == "connect" and r["host"] == "www.allowed.test" and r["up"] > 0)
    assert env.wait_row(lambda r: r["kind"] == "proxy" and r["port"] == 80 and r["down"] > 0)


def test_allowed_name_without_proxy(env: Env) -> None:
    """No proxy variables, --noproxy '*': the gateway DNS + nft redirect + SNI/Host still work."""
    https = env.curl("--noproxy", "*", "https://www.allowed.test/t")
    assert https.returncode == 0, https.stderr
    assert f"hello from {WWW_ADDR}:443 host=www.allowed.test path=/t" in https.stdout
    plain = env.curl("--noproxy", "*", "http://www.allowed.test/h")
    assert plain.returncode == 0, plain.stderr
    assert f"{WWW_ADDR}:80" in plain.stdout
    wild = env.curl("--noproxy", "*", "https://a.wild.test/")
    assert wild.returncode == 0, wild.stderr
    assert env.wait_row(
        lambda r: r["kind"] == "transparent" and r["host"] == "a.wild.test" and r["verdict"] == "allowed"
    )


def test_denied_name_is_refused_and_logged(env: Env) -> None:
    # Positive control: the server answers when asked from outside the bot.
    outside = env.curl(
        "--noproxy", "*", "--resolve", f"other.test:443:{OTHER_ADDR}", "https://other.test/", ns=env.up
    )
    assert outside.returncode == 0 and "hello" in outside.stdout
    via_proxy = env.curl("-x", env.proxy(), "-o", "/dev/null", "-w", "%{http_code}", "http://other.test/")
    assert via_proxy.stdout == "403"
    reply = _proxy_request(env, b"CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 403")
    assert b"other.test:443 is not in the egress allowlist" in reply
    # Without the proxy: the name does not resolve, and a forced address is reset on SNI.
    nxdomain = env.curl("--noproxy", "*", "https://other.test/")
    assert nxdomain.returncode == 6  # could not resolve host
    forced = env.curl("--noproxy", "*", "--resolve", f"other.test:443:{OTHER_ADDR}", "https://other.test/")
    assert forced.returncode != 0 and "hello" not in forced.stdout
    assert env.wait_row(lambda r: r["host"] == "other.test" and r["kind"] == "transparent", denied=True)
    assert env.wait_row(lambda r: r["kind"] == "connect" and "other.test" in r["host"], denied=True)
    assert env.wait_row(lambda r: r["kind"] == "dns" and r["host"] == "other.test", denied=True)


def test_raw_ip_connections_are_dropped(env: Env) -> None:
    outside = env.curl("-k", f"https://{WWW_ADDR}/", ns=env.up)
    assert outside.returncode == 0, outside.stderr  # positive control
    for url in (f"https://{WWW_ADDR}/", f"http://{WWW_ADDR}/", f"https://{WWW_ADDR}:8443/"):
        got = env.curl("--noproxy", "*", "-k", url)
        assert got.returncode != 0 and "hello" not in got.stdout, url
    # An allowlisted SNI sent to an address the bot picked itself goes to the name's real
    # address (the gateway resolves the name), never to the bot's choice:
    sneaky = env.curl(
        "--noproxy", "*", "--resolve", f"www.allowed.test:443:{OTHER_ADDR}", "https://www.allowed.test/"
    )
    assert f"hello from {WWW_ADDR}:443" in sneaky.stdout  # the gateway connected to the real address
    via_proxy = env.curl("-x", env.proxy(), "-o", "/dev/null", "-w", "%{http_code}", f"http://{WWW_ADDR}/")
    assert via_proxy.stdout == "403"
    assert env.wait_row(lambda r: "raw IP" in r["reason"] or "SNI" in r["reason"], denied=True)


def test_private_answers_are_refused(env: Env) -> None:
    """An allowlisted name that resolves to loopback, 10.x or metadata is refused (rebinding)."""
    local = env.curl("-k", "https://127.0.0.1:8443/", ns=env.up)
    assert local.returncode == 0 and "hello from 127.0.0.1:8443" in local.stdout  # it exists upstream
    for target, word in (
        ("loopy.allowed.test:443", "loopback"),
        ("tenx.allowed.test:443", "private"),
        ("mixed.allowed.test:443", "loopback"),
    ):
        reply = _proxy_request(env, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 403"), (target, reply)
        assert word.encode() in reply
    meta = _proxy_request(env, b"GET http://meta.allowed.test/latest/meta-data/ HTTP/1.1\r\n\r\n")
    assert meta.startswith(b"HTTP/1.1 403") and b"metadata" in meta
    # Transparent path to the same names: the DNS answer is withheld, and a forced address fails.
    forced = env.curl(
        "--noproxy",
        "*",
        "--resolve",
        "loopy.allowed.test:8443:45.79.0.10",
        "https://loopy.allowed.test:8443/",
    )
    assert forced.returncode != 0 and "hello" not in forced.stdout


def test_connect_sni_must_match(env: Env) -> None:
    ctx = ssl.create_default_context(cafile=str(env.cert))
    with env.sock(env.bot) as s:
        s.connect((GW_ADDR, 3128))
        s.sendall(b"CONNECT www.allowed.test:443 HTTP/1.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(s, server_hostname="other.test").do_handshake()
    # Positive control: the matching name goes through on the same path.
    with env.sock(env.bot) as s:
        s.connect((GW_ADDR, 3128))
        s.sendall(b"CONNECT www.allowed.test:443 HTTP/1.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(s, server_hostname="www.allowed.test") as tls:
            tls.sendall(b"GET /sni HTTP/1.1\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := tls.recv(4096):
                body += chunk
            assert b"path=/sni" in body
    # Not TLS at all on a CONNECT to 443.
    with env.sock(env.bot) as s:
        s.connect((GW_ADDR, 3128))
        s.sendall(b"CONNECT www.allowed.test:443 HTTP/1.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.allowed.test\r\n\r\n")
        assert s.recv(4096) == b""
    assert env.wait_row(lambda r: "does not match CONNECT host" in r["reason"], denied=True)
    assert env.wait_row(lambda r: "without a TLS ClientHello" in r["reason"], denied=True)


@pytest.mark.parametrize(
    "spelling",
    [
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "127.0.0.1.",
    ],
)
def test_ip_literal_spellings_are_refused(env: Env, spelling: str) -> None:
    get = _proxy_request(env, f"GET http://{spelling}:8443/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert get.startswith(b"HTTP/1.1 403"), get
    assert b"127.0.0.1" in get  # the gateway saw through the spelling
    conn = _proxy_request(env, f"CONNECT {spelling}:8443 HTTP/1.1\r\n\r\n".encode())
    assert conn.startswith(b"HTTP/1.1 403"), conn


def test_other_ports_and_protocols_never_leave(env: Env) -> None:
    """UDP straight to the real resolver, TCP to a gateway port that is not served, ICMP."""
    with env.sock(env.bot, socket.SOCK_DGRAM) as udp:
        udp.settimeout(1)
        udp.sendto(
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04test\x00\x00\x01\x00\x01",
            ("45.79.0.53", 53),
        )
        with pytest.raises(TimeoutError):
            udp.recvfrom(512)
    assert env.dns is not None and "test" not in env.dns.asked
    ping = env.run(env.bot, "ping", "-c1", "-W1", WWW_ADDR)
    assert ping.returncode != 0
    # The redirect target itself, straight: reset, not looped (the reset may meet connect()).
    with env.sock(env.bot) as s, pytest.raises(ConnectionResetError):
        s.connect((GW_ADDR, 3129))
        s.recv(10)


def test_stats_count_per_bot(env: Env) -> None:
    assert env.gateway is not None
    before = env.gateway.stats().get("alpha", {})
    env.curl("-x", env.proxy(), "https://www.allowed.test/")
    env.curl("-x", env.proxy(), "https://other.test/")
    after = env.gateway.stats()["alpha"]
    assert after["allowed"] == before.get("allowed", 0) + 1
    assert after["denied"] == before.get("denied", 0) + 1
    assert after["bytes_down"] > before.get("bytes_down", 0)
