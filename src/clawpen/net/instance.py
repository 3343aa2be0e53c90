"""The network side of one supervised bot instance (used by :mod:`clawpen.daemon.runtime`).

* **link**: a bot with egress gets its namespace and link from
  :meth:`clawpen.net.links.LinkManager.attach` before its first start; the link is kept across
  restarts (the new sandbox runs in the same namespace, with the same address) and removed
  when the instance stops for good. After a daemon restart, an adopted instance takes its link
  back (:meth:`LinkManager.adopt`). Under a tier that makes the bot's namespace itself (a
  container engine, ``Tier.makes_netns``) the link is only reserved before the start (its
  addresses, for the plan) and wired into each new container's namespace by the tier through
  ``start(wire_net=...)`` (:meth:`InstanceNetwork.wirer`, :meth:`LinkManager.wire`): same
  addresses on every restart, a new veth into each new namespace.
* **published ports**: replica 0 binds each ``publish`` entry and hands the listeners to a
  relay *process* of its own (:mod:`clawpen.net.portrelay`, started and adopted through
  :class:`clawpen.net.relayctl.RelayControl`), so published ports keep answering while the
  daemon is down. A small task follows the instance: it rewrites the relay's target file when
  the bot gets a new namespace (a restart of a bot without a link), turns the relay's reports
  (refused sources) into events, and starts the relay again if it died. The relay is stopped
  when the instance stops for good; a daemon that exits while the bot runs leaves it running
  for the next daemon, which adopts it (same pid, same listener).

Netlink work blocks (pyroute2 runs its own event loop), so it runs in an executor thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.errors import ClawpenError
from clawpen.host import Notes
from clawpen.net import relayctl
from clawpen.procfs import pid_start_time

if TYPE_CHECKING:
    from clawpen.net.links import Link, LinkManager
    from clawpen.sandbox.tier import RunningSandbox
    from clawpen.spec.models import Bot


NOT_RUNNING: dict[str, Any] = {"netns": None, "pid": None, "start": None}  # the relay's "no bot now"


class _Services(Protocol):
    @property
    def note(self) -> Callable[[str, str, str, int], None]: ...  # kind, reason, bot, replica
    @property
    def network(self) -> LinkManager | None: ...
    @property
    def run_dir(self) -> Path: ...


class Replica(Protocol):
    """What the network side reads of its bot replica (the daemon's ``runtime.Instance``)."""

    @property
    def name(self) -> str: ...
    @property
    def replica(self) -> int: ...
    @property
    def label(self) -> str: ...
    @property
    def bot(self) -> Bot: ...
    @property
    def base_dir(self) -> str: ...
    @property
    def sandbox(self) -> RunningSandbox | None: ...
    @property
    def svc(self) -> _Services: ...


FOLLOW_EVERY = 0.2  # seconds: how soon a restarted bot's new namespace reaches the relay
CHECK_TICKS = 5  # relay reports and liveness: every CHECK_TICKS * FOLLOW_EVERY seconds
RESPAWN_GAP = 5.0


class InstanceNetwork:
    """Link and published ports of one bot replica (the daemon's ``runtime.Instance``)."""

    def __init__(self, inst: Replica) -> None:
        self.inst = inst
        self.link: Link | None = None
        self.relay: relayctl.RelayControl | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._target: dict[str, Any] | None = None  # what the relay's target file says
        self._target_failed = False

    def _note(self, why: str) -> None:
        self.inst.svc.note("network", why, self.inst.name, self.inst.replica)

    @property
    def _wants_link(self) -> bool:
        return self.inst.svc.network is not None and bool(self.inst.bot.network.egress)

    async def attach(self, *, reserve: bool = False) -> None:
        """Give a bot with egress its namespace and link (once; kept across restarts). With
        ``reserve`` (a tier that makes the bot's namespace itself): only the link's addresses,
        for the plan; :meth:`wirer` wires it into each new namespace."""
        net = self.inst.svc.network
        if net is None or not self._wants_link or self.link is not None:
            return
        inst = self.inst
        net.ready()
        policy = inst.bot.to_policy(inst.name, inst.base_dir)
        loop = asyncio.get_running_loop()
        make = net.reserve if reserve else net.attach
        self.link = await loop.run_in_executor(None, make, inst.name, inst.replica, policy)

    def wirer(self) -> Callable[[int], None] | None:
        """For a tier that makes the bot's namespace: ``start``'s ``wire_net``, which wires the
        link (after :meth:`attach` with ``reserve``) into the namespace of the host pid it is
        given, replacing the previous container's link. Blocking: it runs in the executor
        thread the tier's start runs in. ``None`` for a bot without a link."""
        net = self.inst.svc.network
        if net is None or self.link is None:
            return None
        inst = self.inst
        policy = inst.bot.to_policy(inst.name, inst.base_dir)

        def wire(pid: int) -> None:
            self.link = net.wire(inst.name, inst.replica, policy, pid)

        return wire

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

    def target(self) -> dict[str, Any] | None:
        """The bot's network namespace right now, for the relay (``None``: not running). A bot
        without a link is named by its sandbox pid and that process's start time, so the relay
        never follows a reused pid."""
        if self.link is not None:
            return {"netns": self.link.netns, "pid": None, "start": None}
        sandbox = self.inst.sandbox
        pid = sandbox.sandbox_pid if sandbox is not None else None
        if pid is None:
            return None
        return {"netns": f"/proc/{pid}/ns/net", "pid": pid, "start": pid_start_time(pid)}

    @property
    def _key(self) -> str:
        return f"{self.inst.name}.{self.inst.replica}"

    async def publish(self) -> None:
        """Serve the bot's published ports through a relay process (replica 0 only; the spec
        forbids clashes): adopt the one an earlier daemon left, or bind and start one."""
        inst = self.inst
        net = inst.bot.network
        if not net.publish or inst.replica != 0 or self.relay is not None:
            return
        ctl = relayctl.RelayControl(
            inst.svc.run_dir / "publish", self._key, list(net.publish), tuple(net.from_)
        )
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, ctl.adopt):
            inst.svc.note(
                "publish", f"adopted the running port relay (pid {ctl.pid})", inst.name, inst.replica
            )
        elif not await self._spawn(ctl):
            return
        self.relay = ctl
        self._follow_task = loop.create_task(self._follow(ctl), name=f"publish {inst.label}")

    async def _spawn(self, ctl: relayctl.RelayControl) -> bool:
        """Bind and start the relay; False (with an event) when nothing could be served. Never
        raises: a published port that cannot be served must not keep the bot from running."""
        inst = self.inst
        loop = asyncio.get_running_loop()
        await self._write_target(ctl)
        listeners, problems = ctl.bind()
        for why in problems:
            inst.svc.note("publish", why, inst.name, inst.replica)
        if not listeners:
            return False
        try:
            await loop.run_in_executor(None, ctl.spawn, listeners)
        except OSError as err:
            inst.svc.note("publish", f"cannot start the port relay: {err}", inst.name, inst.replica)
            await loop.run_in_executor(None, ctl.stop)
            return False
        return True

    async def _write_target(self, ctl: relayctl.RelayControl) -> None:
        # not running (starting, backoff, standby...): a target that names no namespace keeps the
        # relay up, turning connections away (with no target file at all it would leave, and be
        # started again every few seconds)
        target = self.target() or NOT_RUNNING
        if target == self._target:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, ctl.write_target, target)
        except OSError as err:  # a full disk, say: tried again on the next round
            if not self._target_failed:  # one event per run of failures
                self.inst.svc.note(
                    "publish",
                    f"cannot update the port relay's target: {err}",
                    self.inst.name,
                    self.inst.replica,
                )
            self._target_failed = True
            return
        self._target, self._target_failed = target, False

    async def _follow(self, ctl: relayctl.RelayControl) -> None:
        """Keep the relay's target current, pass its reports on, start it again if it died
        (waiting 5 s, then twice as long after each failed start, up to a minute)."""
        inst = self.inst
        loop = asyncio.get_running_loop()
        tick = 0
        gap, next_spawn = RESPAWN_GAP, 0.0
        while True:
            await self._write_target(ctl)
            tick += 1
            if tick % CHECK_TICKS == 0:
                with contextlib.suppress(OSError):
                    for why in await loop.run_in_executor(None, ctl.take_events):
                        inst.svc.note("publish", why, inst.name, inst.replica)
                if not ctl.alive() and loop.time() >= next_spawn:
                    gone = f"the port relay (pid {ctl.pid}) ended" if ctl.pid else "no port relay runs"
                    inst.svc.note("publish", f"{gone}; starting it again", inst.name, inst.replica)
                    await loop.run_in_executor(None, ctl.stop)
                    self._target = None
                    started = await self._spawn(ctl)
                    gap = RESPAWN_GAP if started else min(gap * 2, 60.0)
                    next_spawn = loop.time() + gap
            await asyncio.sleep(FOLLOW_EVERY)

    async def unpublish(self) -> None:
        """Stop the relay when the instance has stopped for good. A daemon that exits while the
        bot still runs leaves the relay serving, for the next daemon to adopt."""
        task, self._follow_task = self._follow_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ctl, self.relay = self.relay, None
        self._target = None
        if ctl is None or self.inst.sandbox is not None:
            return
        await asyncio.get_running_loop().run_in_executor(None, ctl.stop)


class _Supervised(Protocol):
    @property
    def replica(self) -> int: ...
    @property
    def supervised(self) -> bool: ...


class _RunDir(Protocol):
    @property
    def run_dir(self) -> Path: ...


class RelayHost(Notes, Protocol):
    """What :func:`sweep_orphan_relays` reads of the daemon."""

    @property
    def instances(self) -> Mapping[str, Sequence[_Supervised]]: ...
    @property
    def services(self) -> _RunDir: ...


def sweep_orphan_relays(daemon: RelayHost) -> None:
    """After the daemon's ``restore``: stop port relays whose instance is not supervised any more
    (an earlier daemon was killed while it stopped them)."""
    keep = {f"{n}.{i.replica}" for n, insts in daemon.instances.items() for i in insts if i.supervised}
    for key in relayctl.sweep(daemon.services.run_dir / "publish", keep):
        daemon.note("publish", f"stopped the port relay of {key}, left by an earlier daemon")
