"""Per-source flood limits in the gateway namespace's kernel: a flood is dropped before the
gateway's process sees a packet of it.

The gateway's own quotas (:mod:`clawpen.net.fair`, :mod:`clawpen.net.dnsfair`) refuse a bot over
its limits, count it and answer (``429``, a reset, no DNS answer). But each refusal still costs
the gateway a TCP handshake, an ``accept``, a bit of Python and a close (or a ``recvfrom`` per
datagram), and a flooding bot can make tens of thousands of them a second: on a small machine
that CPU is taken from every other bot. This table drops, per source address, what is far
above those quotas, in the kernel: rates in ``prerouting`` right after the gateway's spoofing
guard (priority ``raw``) and before connection tracking, so a dropped packet costs no conntrack
entry or lookup; the open-connection count at the ``input`` hook (it needs conntrack):

* new TCP connections (every TCP SYN from a bot link is one to the gateway) over :data:`SYN_RATE`
  a second (bursts of :data:`SYN_BURST`): the SYN is dropped, so the bot's own kernel waits
  and retransmits it (1 s, then 3 s, ...): a flood slows itself down, and the connection of a
  bot that only bursts goes through a second later;
* a new TCP connection when the source already has :data:`MAX_OPEN` open ones (``ct count``);
* DNS datagrams over :data:`DNS_RATE` a second (bursts of :data:`DNS_BURST`).

The limits are set well above the gateway's own (2x and more), so a bot near its quota still
gets the gateway's counted, logged refusal; only a flood meets the kernel. A bot whose spec
raises its quotas raises the kernel's limits with them (:func:`ceilings`; the link manager
reloads this table when a link needs more, never less, while the daemon runs). ``table inet
clawpen_limit`` is a table of its own, next to :mod:`clawpen.net.nft`'s ``table inet clawpen``,
so either can be loaded or replaced without the other (same atomic ``nft -f`` load:
:func:`clawpen.net.nft.apply`). :func:`drops` reads how many packets each rule dropped.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable

from clawpen import netns
from clawpen.net import fair
from clawpen.net.types import DNS_PORT, LINK_PREFIX, PROXY_PORT, TRANSPARENT_PORT
from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits

TABLE = "clawpen_limit"
SYN_RATE = int(fair.RATE * 2)  # new TCP connections a second per source (the gateway: 50)
SYN_BURST = int(fair.BURST * 2)  # ... at once (the gateway: 100)
MAX_OPEN = fair.MAX_CONNECTIONS + fair.MAX_HEADS + 64  # open TCP connections per source
DNS_RATE = 200  # DNS datagrams a second per source (the gateway answers 50, bursts of 200)
DNS_BURST = 400
COUNTERS = ("syn_rate", "open", "dns_rate")


def ceilings(limits: Iterable[NetLimits]) -> dict[str, int]:
    """The kernel's limits for bots with these quotas (``[bots.NAME.network.limits]``): the
    defaults above, raised where a bot's own quota would come near them, so that the kernel
    never drops what the gateway would admit (the same 2x, and 4x for the DNS rate)."""
    every = [DEFAULT_NET_LIMITS, *limits]
    return {
        "syn_rate": max(SYN_RATE, *(math.ceil(2 * q.connections_per_s) for q in every)),
        "syn_burst": max(SYN_BURST, *(2 * q.connection_burst for q in every)),
        "max_open": max(MAX_OPEN, *(q.connections + q.pending_heads + 64 for q in every)),
        "dns_rate": max(DNS_RATE, *(math.ceil(4 * q.dns_per_s) for q in every)),
        "dns_burst": max(DNS_BURST, *(2 * q.dns_burst for q in every)),
    }


def ruleset(
    *,
    proxy_port: int = PROXY_PORT,
    transparent_port: int = TRANSPARENT_PORT,
    dns_port: int = DNS_PORT,
    syn_rate: int = SYN_RATE,
    syn_burst: int = SYN_BURST,
    max_open: int = MAX_OPEN,
    dns_rate: int = DNS_RATE,
    dns_burst: int = DNS_BURST,
) -> str:
    """The ``nft -f`` text: replaces ``table inet clawpen_limit`` and nothing else."""
    for what, value in (
        ("syn_rate", syn_rate),
        ("syn_burst", syn_burst),
        ("max_open", max_open),
        ("dns_rate", dns_rate),
        ("dns_burst", dns_burst),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive whole number, not {value!r}")
    links = f'"{LINK_PREFIX}*"'
    tcp = f"{{ {proxy_port}, {transparent_port}, {dns_port} }}"
    sets, early, late = [], [], []
    for fam, addr, key in (("4", "ipv4_addr", "ip saddr"), ("6", "ipv6_addr", "ip6 saddr")):
        nfproto = "ipv4" if fam == "4" else "ipv6"
        sets += [
            f"    set syn{fam} {{ type {addr}; size 65536; flags dynamic, timeout; timeout 60s; }}",
            f"    set open{fam} {{ type {addr}; size 65536; flags dynamic; }}",
            f"    set dns{fam} {{ type {addr}; size 65536; flags dynamic, timeout; timeout 60s; }}",
        ]
        link = f"iifname {links} meta nfproto {nfproto}"
        # Every TCP SYN from a link is a new connection to the gateway (its own ports, or
        # redirected to the transparent port later, in dstnat), so no port match is needed here.
        early += [
            f"        {link} tcp flags & (syn | ack) == syn update @syn{fam} "
            f"{{ {key} limit rate over {syn_rate}/second burst {syn_burst} packets }} "
            f'counter name "syn_rate" drop',
            f"        {link} udp dport {dns_port} update @dns{fam} "
            f"{{ {key} limit rate over {dns_rate}/second burst {dns_burst} packets }} "
            f'counter name "dns_rate" drop',
        ]
        late.append(
            f"        {link} tcp dport {tcp} ct state new "
            f'add @open{fam} {{ {key} ct count over {max_open} }} counter name "open" drop'
        )
    counters = "\n".join(f"    counter {name} {{}}" for name in COUNTERS)
    body = "\n".join(sets) + "\n" + counters + "\n"
    early_rules, late_rules = "\n".join(early), "\n".join(late)
    return f"""table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
{body}    chain early {{
        type filter hook prerouting priority raw + 10; policy accept;
{early_rules}
    }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
{late_rules}
    }}
}}
"""


def drops(netns_fd: int | None, nft: str = "nft") -> dict[str, int]:
    """Packets dropped so far, per rule (``syn_rate``, ``open``, ``dns_rate``); {} without the table."""
    done = netns.netns_thread_call(
        netns_fd,
        lambda: subprocess.run(
            [nft, "-j", "list", "counters", "table", "inet", TABLE],
            capture_output=True,
            text=True,
            check=False,
        ),
    )
    if done.returncode != 0:
        return {}
    out: dict[str, int] = {}
    for item in json.loads(done.stdout).get("nftables", []):
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict) and counter.get("name") in COUNTERS:
            out[str(counter["name"])] = int(counter.get("packets", 0))
    return out
