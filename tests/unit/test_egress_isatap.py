"""ISATAP addresses (RFC 5214: interface identifier ``0000:5efe:a.b.c.d``, or ``0200:5efe`` for
a global IPv4, under any prefix) that carry a forbidden IPv4 are refused like the other
embedded forms; one that carries a public IPv4 follows the normal rules of its IPv6 address."""

from __future__ import annotations

import ipaddress

import pytest

from clawpen.spec import egress

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
NO_HOST: frozenset[egress.IPAddress] = frozenset()
PUBLIC_PREFIX = "2606:4700:10::"  # global unicast, public (Python's is_global)
PUBLIC_V4 = "8.8.4.4"
FORBIDDEN = {
    "private": "10.1.2.3",
    "private-192": "192.168.1.1",
    "loopback": "127.0.0.1",
    "link-local": "169.254.1.1",
    "metadata": "169.254.169.254",
    "cgnat": "100.64.0.9",
}


def isatap(v4: str, prefix: str = PUBLIC_PREFIX, high: int = 0x0000) -> str:
    """``prefix`` /64 + interface identifier ``high:5efe:v4`` (``high`` 0x0200: the u bit)."""
    net = int(V6(prefix)) & ~((1 << 64) - 1)
    return str(V6(net | (high << 48) | (0x5EFE << 32) | int(V4(v4))))


def test_the_encoding_is_rfc_5214s() -> None:
    assert isatap("10.1.2.3", "2001:db8::") == "2001:db8::5efe:a01:203"
    assert isatap("192.0.2.143", "fe80::", 0x0200) == "fe80::200:5efe:c000:28f"  # RFC 5214 example form
    assert egress.embedded_ipv4(V6("2001:db8::5efe:10.1.2.3")) == (
        ("ISATAP (::5efe:a.b.c.d)", V4("10.1.2.3")),
    )
    # what the check adds: Python calls the address public whatever it carries
    assert V6(isatap("10.1.2.3")).is_global


@pytest.mark.parametrize("high", [0x0000, 0x0100, 0x0200, 0x0300])
@pytest.mark.parametrize("kind", FORBIDDEN)
def test_isatap_carrying_a_forbidden_ipv4_is_refused(kind: str, high: int) -> None:
    v4 = FORBIDDEN[kind]
    addr = isatap(v4, high=high)
    problem = egress.address_problem(addr, host=NO_HOST)
    assert problem is not None and "ISATAP" in problem and v4 in problem, (addr, problem)
    # also as a literal a bot could write (CONNECT [addr]:443): the same verdict after parsing
    assert egress.address_problem(egress.normalize_host(f"[{addr}]"), host=NO_HOST) == problem
    # positive control: the same address with a public IPv4 inside passes
    assert egress.address_problem(isatap(PUBLIC_V4, high=high), host=NO_HOST) is None


def test_isatap_under_a_6to4_prefix_is_refused_for_either_ipv4() -> None:
    outer_public = str(V6((0x2002 << 112) | (int(V4(PUBLIC_V4)) << 80)))
    problem = egress.address_problem(isatap("10.0.0.1", outer_public), host=NO_HOST)
    assert problem is not None and "ISATAP" in problem and "10.0.0.1" in problem
    assert egress.address_problem(isatap(PUBLIC_V4, outer_public), host=NO_HOST) is None


@pytest.mark.parametrize(
    ("prefix", "said"),
    [
        ("fe80::", "link-local"),
        ("fd12:3456::", "unique-local"),
        ("2001:db8::", "reserved"),
        ("::", "reserved"),
    ],
)
def test_isatap_carrying_a_public_ipv4_follows_the_normal_rules(prefix: str, said: str) -> None:
    addr = isatap(PUBLIC_V4, prefix)
    problem = egress.address_problem(addr, host=NO_HOST)
    assert problem is not None and said in problem and "ISATAP" not in problem, problem
    assert egress.address_problem(addr, egress.networks([f"{prefix}/64"]), host=NO_HOST) is None


def test_allow_private_of_the_inner_ipv4_opens_it_and_only_it() -> None:
    allow = egress.networks(["10.0.0.0/8"])
    assert egress.address_problem(isatap("10.1.2.3"), allow, host=NO_HOST) is None
    assert egress.address_problem(isatap("192.168.1.1"), allow, host=NO_HOST) is not None


HOST_V4 = "93.184.216.34"


def test_isatap_carrying_the_hosts_own_address_is_refused_even_under_an_allowed_prefix() -> None:
    host = frozenset({V4(HOST_V4)})
    addr = isatap(HOST_V4)
    problem = egress.address_problem(addr, host=host)
    assert problem is not None and "an address of this host" in problem and "ISATAP" in problem
    assert egress.address_problem(addr, egress.networks([f"{PUBLIC_PREFIX}/64"]), host=host) is not None
    assert egress.address_problem(addr, host=NO_HOST) is None  # not the host's: a public address


@pytest.mark.parametrize(
    "addr",
    [
        "2606:4700:10::5eff:a01:203",  # not 5efe
        "2606:4700:10::400:5efe:a01:203",  # a bit other than u and g
        "2606:4700:10::1:5efe:a01:203",
        "2606:4700:10:0:5efe::a01:203",  # 5efe in the wrong place
    ],
)
def test_other_interface_identifiers_are_not_isatap(addr: str) -> None:
    assert egress.embedded_ipv4(V6(addr)) == ()
    assert egress.address_problem(addr, host=NO_HOST) is None
