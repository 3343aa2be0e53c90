"""The network side of one supervised bot instance (used by :mod:`clawpen.daemon.runtime`).

* **link**: a bot with egress gets its namespace and link from
  :meth:`clawpen.net.links.LinkManager.attach` before its first start; the link is kept across
  restarts (the new sandbox runs in the same namespace, with the same address) and removed
  when the instance stops for good. After a daemon restart, an adopted instance takes its link
  back (:meth:`LinkManager.adopt`).
* **published ports**: replica 0 listens on each ``publish`` entry for as long as the instance
  is supervised (:class:`clawpen.net.publish.PortRelay`), and relays into whatever namespace
  the bot has at the time of each connection; refused sources become events.

Netlink work blocks (pyroute2 runs its own event loop), so it runs in an executor thread.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from clawpen.errors import ClawpenError

if TYPE_CHECKING:
    from clawpen.daemon.runtime import Instance
    from clawpen.net.links import Link
    from clawpen.net.publish import PortRelay


class InstanceNetwork:
    """Link and published ports of one :class:`~clawpen.daemon.runtime.Instance`."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.link: Link | None = None
        self.relays: list[PortRelay] = []

    def _note(self, why: str) -> None:
        self.inst.svc.note("network", why, self.inst.name, self.inst.replica)

    @property
    def _wants_link(self) -> bool:
        return self.inst.svc.network is not None and bool(self.inst.bot.network.egress)

    async def attach(self) -> None:
        """Give a bot with egress its namespace and link (once; kept across restarts)."""
        net = self.inst.svc.network
        if net is None or not self._wants_link or self.link is not None:
            return
        inst = self.inst
        net.ready()
        policy = inst.bot.to_policy(inst.name, inst.base_dir)
        loop = asyncio.get_running_loop()
        self.link = await loop.run_in_executor(None, net.attach, inst.name, inst.replica, policy)

    async def adopt(self) -> None:
        """After a daemon restart: take back the link of a sandbox that kept running."""
        net = self.inst.svc.network
        if net is None or not self._wants_link:
            return
        inst = self.inst
        net.ready()
        policy = inst.bot.to_policy(inst.name, inst.base_dir)
        loop = asyncio.get_running_loop()
        self.link = await loop.run_in_executor(None, net.adopt, inst.name, inst.replica, policy)
        if self.link is None:
            self._note("the adopted sandbox's network link is gone; it gets a new one on restart")

    async def detach(self) -> None:
        """Remove the link (the instance has stopped for good)."""
        net = self.inst.svc.network
        if net is None or (self.link is None and not self._wants_link):
            return
        self.link = None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, net.detach, self.inst.name, self.inst.replica)
        except ClawpenError as err:
            self._note(f"cannot remove the network link: {err.what}")

    def netns_path(self) -> str | None:
        """The bot's network namespace right now (``None``: not running)."""
        if self.link is not None:
            return self.link.netns
        sandbox = self.inst.sandbox
        pid = sandbox.sandbox_pid if sandbox is not None else None
        return None if pid is None else f"/proc/{pid}/ns/net"

    async def publish(self) -> None:
        """Listen on the bot's published ports (replica 0 only; the spec forbids clashes)."""
        inst = self.inst
        net = inst.bot.network
        if not net.publish or inst.replica != 0 or self.relays:
            return
        from clawpen.net.publish import PortRelay, parse_publish

        def refused(why: str) -> None:
            inst.svc.note("publish", why, inst.name, inst.replica)

        for raw in net.publish:
            relay = PortRelay(
                parse_publish(raw), self.netns_path, allowed_from=tuple(net.from_), on_refused=refused
            )
            try:
                await relay.start()
            except OSError as err:
                inst.svc.note(
                    "publish", f"cannot listen for {raw!r}: {err.strerror}", inst.name, inst.replica
                )
                continue
            self.relays.append(relay)

    async def unpublish(self) -> None:
        relays, self.relays = self.relays, []
        for relay in relays:
            await relay.stop()
