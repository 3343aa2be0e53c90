"""clawpen.net.nftlimit.ruleset: the text of the per-source kernel limits."""

from __future__ import annotations

import pytest

from clawpen.net import fair, nftlimit


def test_default_limits_sit_above_the_gateways_own() -> None:
    assert nftlimit.SYN_RATE >= 2 * fair.RATE and nftlimit.SYN_BURST >= 2 * fair.BURST
    assert nftlimit.MAX_OPEN > fair.MAX_CONNECTIONS + fair.MAX_HEADS
    text = nftlimit.ruleset()
    assert text.startswith("table inet clawpen_limit {}\ndelete table inet clawpen_limit\n")
    assert f"limit rate over {nftlimit.SYN_RATE}/second burst {nftlimit.SYN_BURST} packets" in text
    assert f"ct count over {nftlimit.MAX_OPEN}" in text
    assert f"limit rate over {nftlimit.DNS_RATE}/second burst {nftlimit.DNS_BURST} packets" in text
    assert "ip saddr" in text and "ip6 saddr" in text  # both families, keyed by the source
    assert "table inet clawpen " not in text  # never touches the gateway's main table


def test_ports_and_limits_are_taken() -> None:
    text = nftlimit.ruleset(proxy_port=4000, transparent_port=4001, dns_port=5353, syn_rate=7)
    assert "tcp dport { 4000, 4001, 5353 }" in text and "udp dport 5353" in text
    assert "limit rate over 7/second" in text


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
def test_a_limit_must_be_a_positive_whole_number(bad: object) -> None:
    with pytest.raises(ValueError, match="syn_rate must be a positive whole number"):
        nftlimit.ruleset(syn_rate=bad)  # type: ignore[arg-type]


def test_ceilings_stay_above_every_bots_quotas():
    from clawpen.net import nftlimit
    from clawpen.spec.quotas import NetLimits

    assert nftlimit.ceilings([]) == {
        "syn_rate": nftlimit.SYN_RATE,
        "syn_burst": nftlimit.SYN_BURST,
        "max_open": nftlimit.MAX_OPEN,
        "dns_rate": nftlimit.DNS_RATE,
        "dns_burst": nftlimit.DNS_BURST,
    }
    big = NetLimits(
        connections=5000, connections_per_s=300.5, connection_burst=700, dns_per_s=90, dns_burst=900
    )
    small = NetLimits(connections=4, connections_per_s=1.0)
    got = nftlimit.ceilings([small, big])
    assert got == {
        "syn_rate": 601,
        "syn_burst": 1400,
        "max_open": 5000 + 16 + 64,
        "dns_rate": 360,
        "dns_burst": 1800,
    }
    assert nftlimit.ceilings([small]) == nftlimit.ceilings([])  # lower quotas never lower the kernel's
