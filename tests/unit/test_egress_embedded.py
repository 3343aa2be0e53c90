"""Address checks: IPv4 carried inside IPv6 (mapped, compatible, NAT64, 6to4, Teredo) and the
host's own addresses, refused whatever the egress mode (the check has no mode: "open" only
skips the allowlist). Each refusal has a positive control that passes."""

from __future__ import annotations

import ipaddress

import pytest

from clawpen.net.hostaddr import HostAddresses, read_once
from clawpen.spec import egress

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
NO_HOST: frozenset[egress.IPAddress] = frozenset()

FORBIDDEN = {
    "private": "10.1.2.3",
    "loopback": "127.0.0.1",
    "link-local": "169.254.1.1",
    "metadata": "169.254.169.254",
}
PUBLIC = "8.8.4.4"


def mapped(v4: str) -> str:
    return f"::ffff:{v4}"


def compatible(v4: str) -> str:
    return f"::{v4}"


def nat64(v4: str) -> str:
    return str(V6(int(V6("64:ff9b::")) | int(V4(v4))))


def sixtofour(v4: str) -> str:
    return str(V6((0x2002 << 112) | (int(V4(v4)) << 80) | 1))


def teredo_client(v4: str, server: str = PUBLIC) -> str:
    return str(V6((0x20010000 << 96) | (int(V4(server)) << 64) | (int(V4(v4)) ^ 0xFFFFFFFF)))


def teredo_server(v4: str, client: str = PUBLIC) -> str:
    return str(V6((0x20010000 << 96) | (int(V4(v4)) << 64) | (int(V4(client)) ^ 0xFFFFFFFF)))


FORMS = {
    "mapped": mapped,
    "compatible": compatible,
    "nat64": nat64,
    "6to4": sixtofour,
    "teredo-client": teredo_client,
    "teredo-server": teredo_server,
}


def test_the_encodings_are_the_standard_ones() -> None:
    # what Python's ipaddress decodes is what the check reads, so a wrong encoder would hide a gap
    assert V6(sixtofour("10.1.2.3")).sixtofour == V4("10.1.2.3")
    assert V6(teredo_client("10.1.2.3")).teredo == (V4(PUBLIC), V4("10.1.2.3"))
    assert V6(teredo_server("10.1.2.3")).teredo == (V4("10.1.2.3"), V4(PUBLIC))
    assert nat64("192.0.2.33") == "64:ff9b::c000:221"  # RFC 6052 section 2.4
    teredo = V6("2001:0:4136:e378:8000:63bf:3fff:fdd2")  # RFC 4380 example
    assert egress.embedded_ipv4(teredo) == (
        ("Teredo (2001::/32) server", V4("65.54.227.120")),
        ("Teredo (2001::/32) client", V4("192.0.2.45")),
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", FORBIDDEN)
def test_embedded_forbidden_ipv4_is_refused(form: str, kind: str) -> None:
    v4 = FORBIDDEN[kind]
    addr = FORMS[form](v4)
    problem = egress.address_problem(addr, host=NO_HOST)
    assert problem is not None, addr
    assert v4 in problem and (kind in problem or (kind == "loopback" and "this host" in problem)), problem
    # also as a literal a bot could write (CONNECT [addr]:443): the same verdict after parsing
    literal = egress.normalize_host(f"[{addr}]")
    assert egress.address_problem(literal, host=NO_HOST) is not None


@pytest.mark.parametrize("form", FORMS)
def test_embedded_public_ipv4_passes(form: str) -> None:
    addr = FORMS[form](PUBLIC)
    assert egress.address_problem(addr, host=NO_HOST) is None, addr


@pytest.mark.parametrize("form", ["nat64", "6to4", "teredo-client"])
def test_allow_private_of_the_inner_ipv4_opens_the_embedded_form(form: str) -> None:
    allow = egress.networks(["10.0.0.0/8"])
    assert egress.address_problem(FORMS[form]("10.1.2.3"), allow, host=NO_HOST) is None
    assert egress.address_problem(FORMS[form]("192.168.1.1"), allow, host=NO_HOST) is not None


def test_local_use_nat64_is_refused_even_with_a_public_inner_address() -> None:
    local = str(V6(int(V6("64:ff9b:1::")) | int(V4(PUBLIC))))
    problem = egress.address_problem(local, host=NO_HOST)
    assert problem is not None and "64:ff9b:1::/48" in problem
    assert egress.address_problem(local, egress.networks(["64:ff9b:1::/48"]), host=NO_HOST) is None


HOST_V4 = "93.184.216.34"
HOST_V6 = "2606:2800:220:1:248:1893:25c8:1946"
HOST = frozenset({V4(HOST_V4), V6(HOST_V6)})


def test_host_addresses_are_refused_and_their_neighbours_pass() -> None:
    assert egress.OPEN.allows(HOST_V4, 22)  # "open" lets the rule check through ...
    for addr in (HOST_V4, HOST_V6):
        problem = egress.address_problem(addr, host=HOST)  # ... the address check still refuses
        assert problem == f"{addr} is an address of this host"
    for neighbour in ("93.184.216.35", "2606:2800:220:1:248:1893:25c8:1947"):
        assert egress.address_problem(neighbour, host=HOST) is None
    # a provider works like a set
    assert egress.address_problem(HOST_V4, host=lambda: HOST) is not None
    assert egress.address_problem(HOST_V4, host=NO_HOST) is None


@pytest.mark.parametrize("form", FORMS)
def test_host_address_inside_an_embedded_form_is_refused(form: str) -> None:
    addr = FORMS[form](HOST_V4)
    problem = egress.address_problem(addr, host=HOST)
    assert problem is not None and HOST_V4 in problem and "this host" in problem
    # even when the outer prefix is allowed on purpose, the host stays shut
    wide = egress.networks(["2002::/16", "64:ff9b::/96", "2001::/32"])
    assert egress.address_problem(addr, wide, host=HOST) is not None


def test_unspecified_and_loopback_are_the_hosts_whatever_the_interfaces_say() -> None:
    for addr in ("0.0.0.0", "::", "127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert egress.address_problem(addr, host=NO_HOST) is not None, addr


def test_allow_private_opens_a_host_address_only_when_it_names_the_host() -> None:
    lan_host = frozenset({V4("10.1.2.3")})
    wide = egress.networks(["10.0.0.0/8"])
    assert egress.address_problem("10.1.2.3", wide, host=lan_host) is not None  # the host: shut
    assert egress.address_problem("10.1.2.4", wide, host=lan_host) is None  # the LAN: open
    assert egress.address_problem("10.1.2.3", egress.networks(["10.1.2.3/32"]), host=lan_host) is None
    assert egress.address_problem(HOST_V4, egress.networks([f"{HOST_V4}/32"]), host=HOST) is None
    assert egress.address_problem("127.0.0.1", egress.networks(["127.0.0.1/32"]), host=NO_HOST) is None
    assert egress.address_problem("127.0.0.5", egress.networks(["127.0.0.0/8"]), host=NO_HOST) is None
    everything = egress.networks(["0.0.0.0/0", "::/0"])
    for addr in ("127.0.0.1", "0.0.0.0", "::1", "10.1.2.3"):
        assert egress.address_problem(addr, everything, host=lan_host) is not None, addr
    assert egress.address_problem("192.168.7.7", everything, host=lan_host) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_host_addresses_refresh_picks_up_a_new_address() -> None:
    current = {V4(HOST_V4)}
    reads: list[int] = []

    def reader() -> frozenset[egress.IPAddress]:
        reads.append(1)
        return frozenset(current)

    clock = Clock()
    hosts = HostAddresses(max_age=2.0, clock=clock, reader=reader)
    assert egress.address_problem("93.184.216.40", host=hosts) is None
    current.add(V4("93.184.216.40"))  # the host gains an address
    clock.now += 1.0
    assert egress.address_problem("93.184.216.40", host=hosts) is None  # cached (1 s < max_age)
    assert len(reads) == 1
    clock.now += 1.0
    assert egress.address_problem("93.184.216.40", host=hosts) == "93.184.216.40 is an address of this host"
    current.discard(V4("93.184.216.40"))
    clock.now += 2.5
    assert egress.address_problem("93.184.216.40", host=hosts) is None
    assert len(reads) == 3


def test_a_failed_read_fails_closed_and_is_retried() -> None:
    from clawpen.errors import HostError

    state = {"fail": True}

    def reader() -> frozenset[egress.IPAddress]:
        if state["fail"]:
            raise OSError(105, "No buffer space available")
        return HOST

    hosts = HostAddresses(reader=reader, clock=Clock())
    with pytest.raises(HostError, match="cannot read the host's addresses"):
        egress.address_problem("8.8.8.8", host=hosts)
    state["fail"] = False
    assert egress.address_problem("8.8.8.8", host=hosts) is None
    assert egress.address_problem(HOST_V4, host=hosts) is not None


def test_the_default_provider_reads_this_namespace() -> None:
    from clawpen.net import hostaddr

    mine = hostaddr.read_once()
    assert V4("127.0.0.1") in mine  # the netlink dump really ran (lo is always there)
    for addr in mine:
        assert egress.address_problem(addr, host=read_once) is not None, addr
    assert egress.address_problem(PUBLIC, host=read_once) is None or V4(PUBLIC) in mine
