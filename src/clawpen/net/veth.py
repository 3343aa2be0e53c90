"""The netlink side of a bot link: the veth pair between the gateway namespace and a bot's
namespace, its addresses, routes, IPv6 settings and shaping (used by :mod:`clawpen.net.links`).

A bot's namespace comes from one of two places, and is wired the same way:

* made by clawpen (:func:`clawpen.netns.create_persistent`, the sandbox tier), or
* made by a tier itself (a container engine, :attr:`clawpen.sandbox.tier.Tier.makes_netns`) and
  named by a host pid in it: :func:`bind_pid` bind-mounts ``/proc/<pid>/ns/net`` at the link's
  usual path, so everything that finds a link by its path (adopt, detach, the port relay)
  keeps working. The namespace lives as long as the container (or the bind mount).

All netlink work goes through pyroute2 over a netlink socket *created inside* the target
namespace (:func:`clawpen.netns.socket_in`), never a socket of the daemon's own namespace.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any, Protocol

from clawpen import netns
from clawpen.errors import HostError
from clawpen.net import shape

if TYPE_CHECKING:
    from clawpen.spec.policy import BotPolicy

BOT_IF = "eth0"
NETLINK_ROUTE = 0
IFA_F_NODAD = 0x02
# per-interface IPv6 settings of both ends of an IPv6 link: no DAD wait, no router
# advertisements, no autoconfigured addresses, no router solicitations, no forwarding
IPV6_QUIET = (
    ("accept_dad", "0"),
    ("dad_transmits", "0"),
    ("accept_ra", "0"),
    ("autoconf", "0"),
    ("router_solicitations", "0"),
    ("forwarding", "0"),
)


class Link(Protocol):
    """What is wired of a link (:class:`clawpen.net.links.Link`)."""

    @property
    def ifname(self) -> str: ...
    @property
    def bot_addr(self) -> str: ...
    @property
    def gw_addr(self) -> str: ...
    @property
    def prefixlen(self) -> int: ...
    @property
    def netns(self) -> str: ...
    @property
    def ipv6(self) -> bool: ...
    @property
    def bot_addr6(self) -> str: ...
    @property
    def gw_addr6(self) -> str: ...
    @property
    def prefixlen6(self) -> int: ...


def ipr(fd: int) -> Any:
    """A pyroute2 IPRoute whose netlink socket lives in the namespace ``fd``."""
    from pyroute2 import IPRoute

    sock = netns.socket_in(fd, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    return IPRoute(use_socket=sock)


def sysctls(ipv6: bool) -> None:
    """For the calling thread's (bot) namespace: no forwarding; IPv6 off, or quiet (
    :data:`IPV6_QUIET` for every interface made from now on, e.g. the bot's ``eth0``)."""
    netns.write_sysctl("net/ipv4/ip_forward", "0")
    for scope in ("all", "default"):
        with contextlib.suppress(FileNotFoundError):  # kernel without IPv6
            if not ipv6:
                netns.write_sysctl(f"net/ipv6/conf/{scope}/disable_ipv6", "1")
            for key, value in IPV6_QUIET if ipv6 else (("forwarding", "0"),):
                netns.write_sysctl(f"net/ipv6/conf/{scope}/{key}", value)


def ipv6_on(ifname: str) -> None:
    """Turn IPv6 on for ``ifname`` of the calling thread's namespace, quiet (see IPV6_QUIET)."""
    for key, value in IPV6_QUIET:  # before IPv6 comes up: its link-local address skips DAD
        netns.write_sysctl(f"net/ipv6/conf/{ifname}/{key}", value)
    netns.write_sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "0")


def addr6(ipr_: Any, index: int, address: str, prefixlen: int) -> None:
    """Add an IPv6 address without duplicate address detection (usable at once)."""
    ipr_.addr("add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NODAD)


def bind_pid(path: str, pid: int) -> int:
    """Keep the network namespace of host process ``pid`` at ``path`` (a bind mount, like
    ``ip netns attach``) and return an fd of it. Raises :class:`HostError` when the process is
    gone or its namespace is the daemon's own (a tier that made no namespace)."""
    src = f"/proc/{pid}/ns/net"
    try:
        theirs, ours = os.stat(src), os.stat("/proc/self/ns/net")
    except OSError as err:
        raise HostError(
            f"cannot find the network namespace of pid {pid}: {err.strerror}",
            where=src,
            hint="the bot's process ended before its network was wired; see its log",
        ) from None
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        raise HostError(
            f"pid {pid} runs in the daemon's own network namespace",
            where=src,
            hint="the tier must give the bot a network namespace of its own (engine network none)",
        )
    return netns.bind_persistent(path, pid)


def build(link: Link, gw_fd: int, bot_fd: int, policy: BotPolicy) -> None:
    """Make the veth pair of ``link`` and configure both ends (the bot's namespace ``bot_fd``
    has its sysctls set already): addresses, the bot's default routes, IPv6, shaping."""
    ipg = ipb = None
    try:
        ipg, ipb = ipr(gw_fd), ipr(bot_fd)
        ipg.link("add", ifname=link.ifname, kind="veth", peer={"ifname": BOT_IF, "net_ns_fd": bot_fd})
        gw_if = ipg.link_lookup(ifname=link.ifname)[0]
        ipg.addr("add", index=gw_if, address=link.gw_addr, prefixlen=link.prefixlen)
        if link.ipv6:
            netns.netns_thread_call(gw_fd, lambda: ipv6_on(link.ifname))
            addr6(ipg, gw_if, link.gw_addr6, link.prefixlen6)
        ipg.link("set", index=gw_if, state="up")
        bot_if = ipb.link_lookup(ifname=BOT_IF)[0]
        ipb.link("set", index=1, state="up")
        ipb.addr("add", index=bot_if, address=link.bot_addr, prefixlen=link.prefixlen)
        if link.ipv6:
            addr6(ipb, bot_if, link.bot_addr6, link.prefixlen6)
        ipb.link("set", index=bot_if, state="up")
        ipb.route("add", dst="default", gateway=link.gw_addr)
        if link.ipv6:
            ipb.route("add", family=socket.AF_INET6, dst="::/0", gateway=link.gw_addr6)
        if policy.bandwidth:
            shape.set_rate(ipg, gw_if, policy.bandwidth, policy.burst)
            shape.set_rate(ipb, bot_if, policy.bandwidth, policy.burst)
    finally:
        for one in (ipg, ipb):
            if one is not None:
                one.close()


def reshape(link: Link, gw_fd: int, policy: BotPolicy) -> None:
    """Apply (or lift) the policy's bandwidth on both ends of a live link."""
    bot_fd = netns.open_netns(link.netns)
    ipg = ipb = None
    try:
        ipg, ipb = ipr(gw_fd), ipr(bot_fd)
        ends = ((ipg, ipg.link_lookup(ifname=link.ifname)), (ipb, ipb.link_lookup(ifname=BOT_IF)))
        for one, found in ends:
            if not found:
                continue
            if policy.bandwidth:
                shape.set_rate(one, found[0], policy.bandwidth, policy.burst)
            else:
                shape.clear(one, found[0])
    finally:
        for one in (ipg, ipb):
            if one is not None:
                one.close()
        os.close(bot_fd)


def remove(link: Link, gw_fd: int) -> None:
    """Delete the link's gateway end (its peer, the bot's ``eth0``, goes with it) and the
    namespace's mount at ``link.netns`` (missing: no error). A namespace made by a tier lives
    on while its processes do, without the link."""
    ipg = ipr(gw_fd)
    try:
        for index in ipg.link_lookup(ifname=link.ifname):
            with contextlib.suppress(Exception):
                ipg.link("del", index=index)
    finally:
        ipg.close()
    netns.remove_persistent(link.netns)
