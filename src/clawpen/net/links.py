"""Per-bot network namespaces and their veth links to the gateway namespace.

:class:`LinkManager` (one per daemon, ``Services.network``) owns:

* the **gateway namespace**, a network namespace of clawpen's own kept alive by a bind mount
  at ``<state>/netns/gw`` (so it outlives a daemon restart while bots keep running). It has
  only ``lo`` and the ``cb<N>`` link ends, ``ip_forward`` 0 (IPv4 and IPv6), and the nftables
  table of :mod:`clawpen.net.nft`. IPv6 is off on every interface there but the ``cb<N>`` ends
  of ``network.ipv6`` bots. The host namespace's interfaces, routes and rules are never touched.
* one namespace per attached bot instance at ``<state>/netns/<bot>.<replica>``: ``lo`` up,
  ``eth0`` = ``bot_addr/30`` with the only route (default) via ``gw_addr``. ``cb<N>`` =
  ``gw_addr/30`` sits in the gateway namespace. IPv6 is off in the bot's namespace (and on its
  ``cb<N>``) unless the bot's ``network.ipv6``; then both ends also get ``bot_addr6/126`` and
  ``gw_addr6/126`` (:func:`clawpen.net.types.ipv6_of` of the IPv4 pair, no DAD), the bot a
  default IPv6 route via ``gw_addr6``, and neither end takes router advertisements or
  autoconfigures an address (link-local addresses stay: neighbour discovery uses them).
* the address allocation: block ``N`` (a /30) of ``[gateway] subnet``; ``gw_addr`` is its
  first host address, ``bot_addr`` the second. Kept in ``<state>/net-links.json`` (written
  atomically), so a restarted daemon adopts running bots with the addresses they have (the
  IPv6 pair is derived from the IPv4 one; whether a link has it is read from its ``cb<N>``).

API (used by the runtime, the gateway and the build steps):

* ``attach(bot, replica, policy) -> Link``: create (or return the existing) link; shapes it
  when ``policy.bandwidth`` is set. Blocking (~10 ms): call it from an executor thread.
* ``reserve(bot, replica, policy) -> Link`` then ``wire(bot, replica, policy, pid) -> Link``:
  for a tier that makes the bot's namespace itself (a container engine, ``Tier.makes_netns``).
  ``reserve`` holds the address block and gives the plan its link before the start; ``wire``
  (called by the tier through ``start(wire_net=...)``, once the namespace exists and before the
  bot's command runs) bind-mounts ``/proc/<pid>/ns/net`` at the link's usual path and sets it
  up exactly as ``attach`` sets up a namespace of its own (sysctls, veth, addresses, routes,
  IPv6, shaping; the netlink side is :mod:`clawpen.net.veth`). Each new container is wired
  again: the link of the previous one is removed first (same block, same addresses).
* ``detach(bot, replica)``: delete the link and the bot's namespace (no error if absent); for a
  wired link: the veth and the mount (the namespace itself ends with the container).
* ``adopt(bot, replica, policy) -> Link | None``: after a daemon restart, take over the link of
  a bot that still runs (``None`` when its namespace is gone); by path, so also a wired link.
* ``link(bot, replica) -> Link | None``; ``by_source(addr) -> BotLink | None`` (the gateway's
  :class:`~clawpen.net.types.LinkRegistry`, by ``bot_addr`` or ``bot_addr6``);
  ``gateway_netns_fd`` (created on first use).

All netlink work goes through pyroute2 over a netlink socket *created inside* the target
namespace (:func:`clawpen.netns.socket_in`), never a socket of the daemon's own namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from clawpen import netns
from clawpen.errors import ConfigError, HostError
from clawpen.fsutil import write_atomic
from clawpen.net import nft, nftlimit, veth
from clawpen.net.learn import LearnStarts
from clawpen.net.types import LINK6_EXTRA_BITS, LINK_PREFIX, BotLink, canonical, ipv6_of
from clawpen.plan.model import NetLink
from clawpen.spec.policy import BotPolicy
from clawpen.spec.quotas import NetLimits

DEFAULT_SUBNET = "10.213.0.0/16"
BOT_IF = veth.BOT_IF


class Link(NamedTuple):
    """One bot instance's link: addresses, interface names and its namespace's path."""

    bot: str
    replica: int
    block: int  # the /30 block number in the subnet
    ifname: str  # gateway end, cb<block>
    bot_addr: str
    gw_addr: str
    prefixlen: int
    netns: str
    ipv6: bool = False  # the bot's ``network.ipv6``: the link also has bot_addr6 / gw_addr6

    @property
    def bot_addr6(self) -> str:
        """The bot end's IPv6 address ("" on a link without IPv6)."""
        return ipv6_of(self.bot_addr) if self.ipv6 else ""

    @property
    def gw_addr6(self) -> str:
        """The gateway end's IPv6 address ("" on a link without IPv6)."""
        return ipv6_of(self.gw_addr) if self.ipv6 else ""

    @property
    def prefixlen6(self) -> int:
        return self.prefixlen + LINK6_EXTRA_BITS

    def for_plan(self, egress: tuple[str, ...] | str = ()) -> NetLink:
        """The record the planner takes (:class:`clawpen.plan.model.NetLink`)."""
        return NetLink(self.netns, self.bot_addr, self.gw_addr, self.prefixlen, BOT_IF, egress)


class LinkManager:
    """The gateway namespace and every bot link of one daemon (see the module docstring)."""

    def __init__(self, state_dir: Path, subnet: str = DEFAULT_SUBNET) -> None:
        self.dir = state_dir / "netns"
        self.gw_path = str(self.dir / "gw")
        self.alloc_path = state_dir / "net-links.json"
        self.subnet = self._check_subnet(subnet)
        self._lock = threading.RLock()
        self._gw_fd: int | None = None
        self._links: dict[tuple[str, int], Link] = {}
        self._by_addr: dict[str, BotLink] = {}
        self._alloc: dict[str, int] = self._load()
        self.learn = LearnStarts(state_dir / "net-learn.json")  # egress = "learn": when it began
        self._kernel: dict[str, int] = {}  # the kernel flood limits loaded (nftlimit.ceilings)
        self.first_use: Callable[[], None] | None = None  # run once, before the first link

    # ------------------------------------------------------------- configuration
    @staticmethod
    def _check_subnet(subnet: str) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.ip_network(subnet)
        except ValueError:
            raise ConfigError(
                f"gateway subnet {subnet!r} is not a network",
                where="gateway.subnet",
                hint="e.g. 10.213.0.0/16",
            ) from None
        if not isinstance(net, ipaddress.IPv4Network) or not net.is_private or net.prefixlen > 29:
            raise ConfigError(
                f"gateway subnet {subnet} must be a private IPv4 range of at least 8 addresses",
                where="gateway.subnet",
                hint="e.g. 10.213.0.0/16 (each bot instance takes a /30)",
            )
        return net

    def set_subnet(self, subnet: str) -> None:
        """Use ``subnet`` for new links (from ``[gateway] subnet``); live links keep theirs."""
        with self._lock:
            self.subnet = self._check_subnet(subnet)

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.alloc_path.read_text())
            return {str(k): int(v) for k, v in data.get("links", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save(self) -> None:
        body = {"subnet": str(self.subnet), "links": self._alloc}
        write_atomic(self.alloc_path, json.dumps(body, indent=1).encode(), mode=0o600)

    # ------------------------------------------------------------- the gateway
    @property
    def gateway_netns_fd(self) -> int:
        """An fd of the gateway namespace (set up on first use; owned by the manager)."""
        with self._lock:
            if self._gw_fd is None:
                self._gw_fd = self._gateway()
            return self._gw_fd

    def _gateway(self) -> int:
        def setup() -> None:
            veth.sysctls(ipv6=False)
            netns.loopback_up()

        # No netlink here (pyroute2 cannot run inside a running event loop, and the gateway may
        # ask for the fd from one): lo goes up by ioctl, the rules by `nft -f -`.
        fd = netns.create_persistent(self.gw_path, setup=setup)
        try:
            nft.apply(fd, nft.ruleset())  # always: a restarted daemon reloads the current rules
            self._kernel = nftlimit.ceilings(self._quotas())
            nft.apply(fd, nftlimit.ruleset(**self._kernel))  # flood limits, per source address
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ------------------------------------------------------------- links
    def _block(self, index: int) -> tuple[str, str]:
        base = self.subnet.network_address + 4 * index
        return str(base + 1), str(base + 2)

    def _allocate(self, key: str) -> int:
        if key in self._alloc and 4 * (self._alloc[key] + 1) <= self.subnet.num_addresses:
            return self._alloc[key]
        used = set(self._alloc.values())
        for index in range(self.subnet.num_addresses // 4):
            if index not in used:
                return index
        raise HostError(
            f"no free link address left in {self.subnet}",
            where="gateway.subnet",
            hint="use a larger [gateway] subnet (a /30 per bot instance)",
        )

    def _register(self, link: Link, policy: BotPolicy) -> None:
        self._links[(link.bot, link.replica)] = link
        entry = BotLink(
            link.bot,
            link.replica,
            link.bot_addr,
            link.gw_addr,
            self.learn.link_egress(link.bot, policy.egress),
            policy.allow_private,
            policy.net_limits,
            link.bot_addr6,
            link.gw_addr6,
        )
        self._by_addr[link.bot_addr] = entry
        if link.ipv6:
            self._by_addr[link.bot_addr6] = entry
        self._raise_kernel_limits()

    def _quotas(self) -> list[NetLimits]:
        return [entry.limits for entry in self._by_addr.values()]

    def _raise_kernel_limits(self) -> None:
        """Reload the kernel's flood limits when a bot's quotas need higher ones."""
        if self._gw_fd is None:
            return
        needed = nftlimit.ceilings(self._quotas())
        raised = {k: max(v, self._kernel.get(k, 0)) for k, v in needed.items()}
        if raised != self._kernel:
            nft.apply(self._gw_fd, nftlimit.ruleset(**raised))
            self._kernel = raised

    def _unregister(self, link: Link) -> None:
        self._by_addr.pop(link.bot_addr, None)
        self._by_addr.pop(ipv6_of(link.bot_addr), None)

    def ready(self) -> None:
        """Run the one-time hook (:func:`for_daemon`); call it on the daemon's event loop thread."""
        if self.first_use is not None:
            hook, self.first_use = self.first_use, None
            hook()

    def link(self, bot: str, replica: int) -> Link | None:
        return self._links.get((bot, replica))

    def links(self) -> list[Link]:
        return list(self._links.values())

    def by_source(self, addr: str) -> BotLink | None:
        """The bot instance whose link has ``addr`` (the gateway asks on every connection)."""
        found = self._by_addr.get(addr)
        if found is None and ":" in addr:  # an IPv6 address in another spelling
            found = self._by_addr.get(canonical(addr))
        return found

    def attach(self, bot: str, replica: int, policy: BotPolicy) -> Link:
        """Create the bot instance's namespace and link (or return the live one)."""
        with self._lock:
            live = self._links.get((bot, replica))
            if live is not None and live.ipv6 == policy.ipv6:
                self._register(live, policy)  # the policy may have changed
                self._shape(live, policy)
                return live
            if live is not None:  # network.ipv6 changed: the link is made again (same block)
                self._unregister(live)
                del self._links[(bot, replica)]
            return self._make(self._new_link(bot, replica, policy), policy)

    def reserve(self, bot: str, replica: int, policy: BotPolicy) -> Link:
        """The link a tier that makes the bot's namespace itself will get (for the plan: its
        addresses and path), with its address block held; nothing is made until :meth:`wire`.
        The live link when there is one (the block stays the same across restarts)."""
        with self._lock:
            live = self._links.get((bot, replica))
            if live is not None and live.ipv6 == policy.ipv6:
                return live
            link = self._new_link(bot, replica, policy)
            self._alloc[f"{bot}.{replica}"] = link.block
            self._save()
            return link

    def wire(self, bot: str, replica: int, policy: BotPolicy, pid: int) -> Link:
        """Wire the instance's link into the existing network namespace of host process ``pid``
        (a container's, made by its engine): the namespace is bind-mounted at the link's path
        and set up as :meth:`attach` sets up one of its own. An earlier link of the instance
        (the namespace of its previous container) is removed first. Blocking: executor thread."""
        with self._lock:
            live = self._links.pop((bot, replica), None)
            link = self._new_link(bot, replica, policy)
            if live is not None:
                self._unregister(live)
                if live.ifname != link.ifname:  # the subnet changed since: another block
                    self._remove(live, self.gateway_netns_fd)
            return self._make(link, policy, pid)

    def _new_link(self, bot: str, replica: int, policy: BotPolicy) -> Link:
        key = f"{bot}.{replica}"
        index = self._allocate(key)
        gw_addr, bot_addr = self._block(index)
        return Link(
            bot,
            replica,
            index,
            f"{LINK_PREFIX}{index}",
            bot_addr,
            gw_addr,
            30,
            str(self.dir / key),
            policy.ipv6,
        )

    def _make(self, link: Link, policy: BotPolicy, pid: int | None = None) -> Link:
        """Make ``link`` (in a new namespace, or in ``pid``'s), replacing what its path and
        interface name held; record and register it."""
        gw_fd = self.gateway_netns_fd
        key = f"{link.bot}.{link.replica}"
        self._remove(link, gw_fd)  # leftovers of an earlier daemon (or the live link)
        try:
            self._create(link, gw_fd, policy, pid)
        except BaseException as exc:
            self._remove(link, gw_fd)
            if isinstance(exc, HostError | KeyboardInterrupt):
                raise
            raise HostError(
                f"cannot set up the network link of {key}: {exc}",
                where=f"link {link.ifname}",
                hint="clawpen doctor; the host needs veth and nf_tables support",
            ) from exc
        self._alloc[key] = link.block
        self._save()
        self._register(link, policy)
        return link

    def _create(self, link: Link, gw_fd: int, policy: BotPolicy, pid: int | None = None) -> None:
        if pid is None:
            bot_fd = netns.create_persistent(link.netns, setup=lambda: veth.sysctls(policy.ipv6))
        else:
            bot_fd = veth.bind_pid(link.netns, pid)
        try:
            if pid is not None:
                mine, gws = os.fstat(bot_fd), os.fstat(gw_fd)
                if (mine.st_dev, mine.st_ino) == (gws.st_dev, gws.st_ino):
                    raise HostError(f"pid {pid} runs in the gateway namespace", where=link.netns)
                netns.netns_thread_call(bot_fd, lambda: veth.sysctls(policy.ipv6))
            veth.build(link, gw_fd, bot_fd, policy)
        finally:
            os.close(bot_fd)

    def _shape(self, link: Link, policy: BotPolicy) -> None:
        """Apply (or lift) the policy's bandwidth on both ends of a live link."""
        veth.reshape(link, self.gateway_netns_fd, policy)

    def _remove(self, link: Link, gw_fd: int) -> None:
        veth.remove(link, gw_fd)

    def detach(self, bot: str, replica: int) -> None:
        """Delete the instance's link and namespace and free its addresses (absent: no error)."""
        with self._lock:
            key = f"{bot}.{replica}"
            link = self._links.pop((bot, replica), None)
            if link is None and key not in self._alloc and not os.path.exists(self.dir / key):
                return
            if link is None:
                index = self._alloc.get(key, -1)
                gw_addr, bot_addr = self._block(max(index, 0))
                link = Link(
                    bot, replica, index, f"{LINK_PREFIX}{index}", bot_addr, gw_addr, 30, str(self.dir / key)
                )
            self._unregister(link)
            self._remove(link, self.gateway_netns_fd)
            if self._alloc.pop(key, None) is not None:
                self._save()

    def adopt(self, bot: str, replica: int, policy: BotPolicy) -> Link | None:
        """Take over the link of an instance that kept running across a daemon restart."""
        with self._lock:
            key = f"{bot}.{replica}"
            index = self._alloc.get(key)
            path = str(self.dir / key)
            if index is None or not netns.is_mounted_netns(path):
                return None
            ipg = veth.ipr(self.gateway_netns_fd)
            try:
                found = ipg.link_lookup(ifname=f"{LINK_PREFIX}{index}")
                if not found:
                    return None
                gw_addr, ipv6 = self._addr_of(ipg, index, found[0])
            finally:
                ipg.close()
            base = ipaddress.ip_address(gw_addr)
            link = Link(
                bot, replica, index, f"{LINK_PREFIX}{index}", str(base + 1), str(base), 30, path, ipv6
            )
            self._register(link, policy)
            return link

    def _addr_of(self, ipg: Any, index: int, if_index: int) -> tuple[str, bool]:
        """The gateway address of block ``index`` as configured on its ``cb`` end (the subnet
        may have changed since the link was made), and whether the end has its IPv6 address."""
        gw_addr = self._block(index)[0]
        for msg in ipg.get_addr(family=socket.AF_INET, index=if_index):
            gw_addr = str(msg.get_attr("IFA_ADDRESS"))
            break
        want = ipv6_of(gw_addr)
        ipv6 = any(
            canonical(str(msg.get_attr("IFA_ADDRESS"))) == want
            for msg in ipg.get_addr(family=socket.AF_INET6, index=if_index)
        )
        return gw_addr, ipv6

    def shutdown(self) -> None:
        """At a clean daemon exit: with no link left, remove the gateway namespace (a bot that
        still runs keeps it, for the next daemon to adopt). Makes no netlink call."""
        with self._lock:
            if self._links or self._alloc:
                self.close()
                return
            self.close()
            netns.remove_persistent(self.gw_path)

    def close(self) -> None:
        """Forget the fds; namespaces and links stay (bots may keep running)."""
        with self._lock:
            if self._gw_fd is not None:
                os.close(self._gw_fd)
                self._gw_fd = None

    def destroy(self) -> None:
        """Remove every link and the gateway namespace (tests, and ``clawpen down`` of everything)."""
        with self._lock:
            for bot, replica in list(self._links):
                self.detach(bot, replica)
            for key in list(self._alloc):
                name, _, number = key.rpartition(".")
                self.detach(name, int(number))
            self.close()
            netns.remove_persistent(self.gw_path)


def for_daemon(state_dir: Path, daemon: Any) -> LinkManager:
    """The daemon's manager. ``[gateway] subnet`` comes from the newest applied spec, read on
    first use and followed after each ``up`` (a bad subnet is an event; live links keep their
    addresses). Called while the daemon is being built, so the hook-up is deferred."""
    manager = LinkManager(state_dir)

    def follow(spec: Any) -> None:
        try:
            manager.set_subnet(spec.gateway.subnet)
        except ConfigError as err:
            daemon.note("network", f"gateway subnet not changed: {err.what}")

    def hook_up() -> None:
        current = daemon.current_spec()
        if current is not None:
            follow(current)
        daemon.spec_listeners.append(follow)

    manager.first_use = hook_up
    return manager
