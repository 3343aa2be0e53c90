"""The gateway namespace's nftables ruleset: one table of clawpen's own, loaded atomically.

Rules (``table inet clawpen`` inside the *gateway* network namespace, never the host's):

* ``guard`` (prerouting, raw priority), for packets from a ``cb*`` link, both families:
  a source address not routed back through that link is dropped (spoofed; counted). IPv6 is
  routed back only through the link of a ``network.ipv6`` bot (the others have no IPv6
  address, so all their IPv6 is dropped here). A packet for a local address that is not on the
  incoming link (another link's gateway address, loopback) is dropped: a bot talks to the
  gateway end of its own link only. ICMPv6 other than neighbour solicitations and
  advertisements is dropped, and so is any non-ICMPv6 packet from a link-local source.
* ``intercept`` (prerouting, dstnat): TCP from a link to the gateway's own ports on that
  link's gateway address is left alone; every other TCP connection (any address, any port,
  IPv4 or IPv6) is redirected to ``TRANSPARENT_PORT``, where the gateway reads the original
  destination (``SO_ORIGINAL_DST`` / ``IP6T_SO_ORIGINAL_DST``) and the TLS SNI / HTTP Host.
* ``input`` (policy drop): ``lo`` and established/related traffic; from a link, only TCP to
  ``PROXY_PORT``/``TRANSPARENT_PORT`` (IPv4 or IPv6) and IPv4 TCP/UDP to ``DNS_PORT`` on that
  link's own gateway address, and IPv6 neighbour discovery (hop limit 255). Every other packet
  (other ports, UDP, ICMP, other protocols) is dropped.
* ``forward`` (policy drop): nothing is routed, so one bot never reaches another (and
  ``ip_forward`` / IPv6 ``forwarding`` are 0 in the gateway namespace).

The rules name links by the ``cb*`` wildcard, so the ruleset is the same for any number of
bots: it is loaded once when the gateway namespace is set up, and a bot's link needs no rule
change. Loading is ``nft -f -`` started from a thread inside the namespace; the text first
declares and deletes the table, so the replacement is one atomic transaction.
"""

from __future__ import annotations

import subprocess

from clawpen import netns
from clawpen.errors import HostError
from clawpen.net.types import DNS_PORT, LINK_PREFIX, PROXY_PORT, TRANSPARENT_PORT

TABLE = "clawpen"


def ruleset(
    proxy_port: int = PROXY_PORT, transparent_port: int = TRANSPARENT_PORT, dns_port: int = DNS_PORT
) -> str:
    """The full ``nft -f`` text: replaces ``table inet clawpen`` and nothing else."""
    links = f'"{LINK_PREFIX}*"'
    tcp_ports = f"{{ {proxy_port}, {transparent_port} }}"
    own = f"{{ {proxy_port}, {transparent_port}, {dns_port} }}"
    nd = "{ nd-neighbor-solicit, nd-neighbor-advert }"
    return f"""table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
    chain guard {{
        type filter hook prerouting priority raw; policy accept;
        iifname {links} fib saddr . iif oif missing counter drop
        iifname {links} fib daddr type local fib daddr . iif type != local counter drop
        iifname {links} meta l4proto ipv6-icmp icmpv6 type != {nd} drop
        iifname {links} ip6 saddr fe80::/10 meta l4proto != ipv6-icmp drop
    }}
    chain intercept {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname {links} fib daddr . iif type local tcp dport {own} accept
        iifname {links} meta l4proto tcp redirect to :{transparent_port}
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iif lo accept
        ct state established,related accept
        iifname {links} fib daddr . iif type local tcp dport {tcp_ports} accept
        iifname {links} meta nfproto ipv4 fib daddr . iif type local \\
            meta l4proto {{ tcp, udp }} th dport {dns_port} accept
        iifname {links} icmpv6 type {nd} ip6 hoplimit 255 accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
    }}
}}
"""


def apply(netns_fd: int | None, text: str, nft: str = "nft") -> None:
    """Load ``text`` with ``nft -f -`` inside the namespace ``netns_fd`` (atomic: all or nothing)."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([nft, "-f", "-"], input=text, capture_output=True, text=True, check=False)

    try:
        done = netns.netns_thread_call(netns_fd, run)
    except FileNotFoundError:
        raise HostError(
            "nft is not installed", where="gateway namespace", hint="apt-get install nftables"
        ) from None
    if done.returncode != 0:
        raise HostError(
            f"nft refused the gateway ruleset: {done.stderr.strip()[:500]}",
            where="gateway namespace",
            hint="check that the kernel has nf_tables with nat, fib and redirect support",
        )


def listing(netns_fd: int | None, nft: str = "nft") -> str:
    """``nft list table inet clawpen`` inside the namespace (empty when there is no table)."""
    done = netns.netns_thread_call(
        netns_fd,
        lambda: subprocess.run(
            [nft, "list", "table", "inet", TABLE], capture_output=True, text=True, check=False
        ),
    )
    return done.stdout if done.returncode == 0 else ""
