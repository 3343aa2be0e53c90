"""The gateway namespace's ruleset text (pure); it is loaded for real in the integration tests."""

from __future__ import annotations

from clawpen.net.nft import TABLE, ruleset
from clawpen.net.types import DNS_PORT, PROXY_PORT, TRANSPARENT_PORT


def _chain(text: str, name: str) -> str:
    start = text.index(f"chain {name} {{")
    return text[start : text.index("\n    }", start)]


def test_replaces_only_its_own_table_atomically() -> None:
    text = ruleset()
    lines = text.splitlines()
    # declare (so delete cannot fail), delete, re-create: one nft transaction
    assert lines[:3] == [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    assert "flush ruleset" not in text
    assert text.count("table inet") == 3 and "table ip " not in text


def test_input_drops_all_but_the_gateway_ports() -> None:
    chain = _chain(ruleset(), "input")
    assert "policy drop" in chain
    assert "iif lo accept" in chain or 'iif "lo" accept' in chain
    # the gateway address of the incoming link only (fib daddr . iif), both families for TCP
    assert f"fib daddr . iif type local tcp dport {{ {PROXY_PORT}, {TRANSPARENT_PORT} }} accept" in chain
    assert "meta nfproto ipv4 fib daddr . iif type local \\\n" in chain
    assert f"meta l4proto {{ tcp, udp }} th dport {DNS_PORT} accept" in chain
    assert "fib daddr type local" not in chain  # any local address would do: too wide
    # no exception for ICMP; of ICMPv6 only neighbour discovery (hop limit 255)
    icmp = [line.strip() for line in chain.splitlines() if "icmp" in line]
    assert icmp == [
        'iifname "cb*" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept'
    ]


def test_every_other_tcp_connection_is_redirected() -> None:
    chain = _chain(ruleset(), "intercept")
    assert "type nat hook prerouting" in chain
    own = chain.index(
        f"fib daddr . iif type local tcp dport {{ {PROXY_PORT}, {TRANSPARENT_PORT}, {DNS_PORT} }} accept"
    )
    redirect = chain.index(f"meta l4proto tcp redirect to :{TRANSPARENT_PORT}")
    assert own < redirect


def test_forwarding_and_spoofing_and_foreign_addresses_are_dropped() -> None:
    text = ruleset()
    assert "policy drop" in _chain(text, "forward")
    guard = _chain(text, "guard")
    # both families: a source not routed back through the link (IPv6 of a link without an IPv6
    # address has no such route), and a local destination that is not on the incoming link
    assert "fib saddr . iif oif missing counter drop" in guard
    assert "fib daddr type local fib daddr . iif type != local counter drop" in guard
    assert "meta l4proto ipv6-icmp icmpv6 type != { nd-neighbor-solicit, nd-neighbor-advert } drop" in guard
    assert "ip6 saddr fe80::/10 meta l4proto != ipv6-icmp drop" in guard
    assert "meta nfproto ipv4" not in guard  # nothing in the guard is IPv4 only


def test_custom_ports() -> None:
    text = ruleset(proxy_port=13128, transparent_port=13129, dns_port=5353)
    assert "redirect to :13129" in text and "th dport 5353" in text and " 3128," not in text
