"""The IPv6 addresses of bot links: derived from the IPv4 pair, found by either family."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from clawpen.net.links import Link, LinkManager
from clawpen.net.types import LINK6_PREFIX, BotLink, canonical, ipv6_of
from clawpen.spec.policy import BotPolicy


def test_ipv6_of_puts_the_ipv4_address_in_the_last_32_bits() -> None:
    assert ipv6_of("10.213.0.2") == "fd63:6c61:7770::ad5:2"
    assert ipv6_of("10.213.0.1") == "fd63:6c61:7770::ad5:1"
    assert ipv6_of("192.168.255.254") == "fd63:6c61:7770::c0a8:fffe"
    assert ipaddress.ip_address(ipv6_of("10.0.0.1")) in ipaddress.ip_network("fc00::/7")  # unique local
    assert LINK6_PREFIX.prefixlen == 96
    with pytest.raises(ValueError):
        ipv6_of("fd00::1")


def test_a_30_block_is_a_126_block() -> None:
    """Every /30 of a subnet maps onto its own /126: the two ends share it, no two links do."""
    seen = set()
    for index in range(64):
        block4 = ipaddress.ip_network(f"10.213.{index // 64}.{4 * (index % 64)}/30")
        ends = [ipv6_of(str(block4.network_address + k)) for k in (1, 2)]
        nets = {ipaddress.ip_interface(f"{e}/126").network for e in ends}
        assert len(nets) == 1
        net = nets.pop()
        assert net.network_address == ipaddress.ip_address(ipv6_of(str(block4.network_address)))
        assert net not in seen
        seen.add(net)


def test_canonical_spelling() -> None:
    assert canonical("FD63:6C61:7770:0:0:0:0ad5:0002") == "fd63:6c61:7770::ad5:2"
    assert canonical("10.213.0.2") == "10.213.0.2"
    assert canonical("not-an-address") == "not-an-address"


def test_link_addresses_only_with_ipv6(tmp_path: Path) -> None:
    plain = Link("a", 0, 0, "cb0", "10.213.0.2", "10.213.0.1", 30, str(tmp_path))
    assert (plain.ipv6, plain.bot_addr6, plain.gw_addr6) == (False, "", "")
    six = plain._replace(ipv6=True)
    assert six.bot_addr6 == "fd63:6c61:7770::ad5:2" and six.gw_addr6 == "fd63:6c61:7770::ad5:1"
    assert six.prefixlen6 == 126


def test_by_source_finds_an_ipv6_bot_by_either_address(tmp_path: Path) -> None:
    lm = LinkManager(tmp_path)
    six = Link("six", 0, 1, "cb1", "10.213.0.6", "10.213.0.5", 30, str(tmp_path / "six.0"), True)
    four = Link("four", 0, 2, "cb2", "10.213.0.10", "10.213.0.9", 30, str(tmp_path / "four.0"))
    lm._register(six, BotPolicy(name="six", command=("x",), egress="open", ipv6=True))
    lm._register(four, BotPolicy(name="four", command=("x",), egress="open"))
    by4, by6 = lm.by_source("10.213.0.6"), lm.by_source("fd63:6c61:7770::ad5:6")
    assert by4 is not None and by4 == by6 and by4.bot == "six"
    assert (by4.bot_addr6, by4.gw_addr6) == ("fd63:6c61:7770::ad5:6", "fd63:6c61:7770::ad5:5")
    assert lm.by_source("FD63:6C61:7770:0:0:0:AD5:6") == by4  # another spelling of it
    assert lm.by_source("fd63:6c61:7770::ad5:5") is None  # the gateway end is nobody
    # a bot without IPv6 has no IPv6 address, not even the derived one
    assert lm.by_source(ipv6_of("10.213.0.10")) is None
    found = lm.by_source("10.213.0.10")
    assert found is not None and found.bot_addr6 == "" and found.gw_addr6 == ""
    lm._unregister(six)
    assert lm.by_source("10.213.0.6") is None and lm.by_source("fd63:6c61:7770::ad5:6") is None


def test_is_gateway_of_either_family() -> None:
    link = BotLink(
        "b",
        0,
        "10.213.0.2",
        "10.213.0.1",
        "open",
        bot_addr6=ipv6_of("10.213.0.2"),
        gw_addr6=ipv6_of("10.213.0.1"),
    )
    assert link.is_gateway("10.213.0.1") and link.is_gateway("fd63:6c61:7770::ad5:1")
    assert not link.is_gateway("10.213.0.2") and not link.is_gateway("")
    plain = BotLink("b", 0, "10.213.0.2", "10.213.0.1", "open")
    assert plain.is_gateway("10.213.0.1") and not plain.is_gateway("") and not plain.is_gateway("::")
