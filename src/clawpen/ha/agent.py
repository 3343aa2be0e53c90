"""One HA bot on this host: win or wait for its leadership, hold the lease, hand it over.

The leader key ``<prefix>/bots/<bot>/leader`` holds the primary's host name under the primary's
lease; its create_revision is the term's fencing token (etcd's revisions only grow, so every
term's token is larger than the last). A host takes the key only with a transaction on
"the key does not exist", so at most one host holds it; it exists only while the lease lives.

As primary the agent renews the lease every third of its TTL. After each renewal etcd confirmed,
the bot's deadline (the renewal's *send* time + TTL - a margin) moves forward in the fence
(:mod:`clawpen.ha.fence`), a process apart from the daemon that kills the bot when the deadline
passes: a daemon that is stopped, killed or cut off cannot keep its bot past the lease, and the
backup takes the key only once etcd expired the lease, after that deadline. The agent itself
stops the bot before the deadline when renewals fail.

A backup polls the key. When it is gone (expired, or released by a planned handover) the hosts
campaign, the first of ``ha.hosts`` first; the winner restores the last shipped workspace, then
tells its instance to start. Any backup checks the primary's health (``ha.check``) and, after
``failures`` failed checks in a row, asks the primary's term to step down
(``<prefix>/bots/<bot>/demote``, naming the term so it never demotes the next one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from typing import Any, TypeVar

from clawpen.errors import ClawpenError, HostError
from clawpen.ha.etcd import KV
from clawpen.ha.fence import now as boottime
from clawpen.ha.model import Cluster, HaPolicy, Role, Shipper

T = TypeVar("T")
HANDOVER_TTL_FACTOR = 3  # a handover note lives this many lease TTLs
RENEW_RETRY = 0.25  # seconds between renewals while they fail


class Agent:
    """The leadership of one HA bot as seen from this host; its instance reads :attr:`role`."""

    def __init__(
        self, cluster: Cluster, policy: HaPolicy, cgroup: str, shipper: Shipper | None = None
    ) -> None:
        self.c = cluster
        self.policy = policy
        self.bot = policy.bot
        self.cgroup = cgroup
        self.shipper = shipper
        self.role = Role.STANDBY
        self.reason = "waiting to learn who is primary"
        self.token: int | None = None
        self.lease: int | None = None
        self.deadline = 0.0
        self.urgent = False  # the bot must go now (the lease is being lost), not after its grace
        self.leader: str | None = None
        self.copy: dict[str, Any] | None = None  # the last shipped copy of the workspace
        self._changed = asyncio.Event()
        self._bot_down = asyncio.Event()
        self._bot_down.set()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failed_checks = 0

    # ------------------------------------------------------------ the instance's side
    async def wait_change(self) -> None:
        await self._changed.wait()

    def _announce(self, role: Role, reason: str) -> None:
        self.role, self.reason = role, reason
        self._changed.set()
        self._changed = asyncio.Event()

    async def confirm(self) -> bool:
        """Before a start: still primary, with a renewal etcd confirmed just now."""
        if self.role is not Role.PRIMARY:
            return False
        try:
            await self._renew()
        except ClawpenError as err:
            await self._lost(f"could not renew its lease before a start: {err.what}")
            return False
        self._bot_down.clear()
        return self.role is Role.PRIMARY

    def bot_stopped(self) -> None:
        """The instance's bot is down (after a demotion, or it exited while standby)."""
        self._bot_down.set()

    def env(self) -> dict[str, str]:
        return {
            "CLAWPEN_FENCING_TOKEN": str(self.token or 0),
            "CLAWPEN_HA_ROLE": str(self.role),
            "CLAWPEN_HA_HOST": self.c.host,
        }

    def status(self) -> dict[str, Any]:
        return {
            "bot": self.bot, "host": self.c.host, "role": str(self.role), "reason": self.reason,
            "term": self.token, "leader": self.leader, "hosts": list(self.policy.hosts), "copy": self.copy,
        }  # fmt: skip

    # ------------------------------------------------------------ life
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._life(), name=f"ha {self.bot}")

    async def retire(self, why: str) -> None:
        """This host no longer runs the bot as HA (the bot left the spec, or its ``ha`` changed):
        end the agent; a term it holds ends once its bot is down."""
        await self.close()
        if self.lease is not None:
            self.urgent = False
            self._announce(Role.STANDBY, f"standby: {why}")
            await self._wait_bot_down(60.0)
            await self._release(why)

    async def close(self) -> None:
        """The daemon stops: leave the lease and the fence as they are (a new daemon adopts them)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _life(self) -> None:
        while True:
            try:
                if self.role is Role.PRIMARY:
                    await self._hold()
                else:
                    await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # never die: note it and look again
                self.c.note("error", f"failover agent: {err!r}", self.bot)
                await asyncio.sleep(self.c.poll)

    async def adopt(self, guard: dict[str, Any]) -> bool:
        """A fence guard an earlier daemon armed for this bot: carry its term on if its lease
        lives (the running bot is kept); else the bot is killed and the guard dropped."""
        lease, token = int(guard.get("lease", 0)), int(guard.get("token", 0))
        if guard.get("fired"):
            await self.c.fence.request({"op": "disarm", "bot": self.bot})
            return False
        self.lease, self.token = lease, token
        try:
            kv = await self.c.run(lambda: self.c.etcd.get(self.c.key(self.bot, "leader")))
            if kv is None or kv.create_revision != token or kv.lease != lease:
                raise HostError("the lease of its term is gone")
            await self._renew()
        except ClawpenError as err:
            self.lease = self.token = None
            with contextlib.suppress(ClawpenError):
                from clawpen.ha.fence import kill_cgroup

                await self.c.run(lambda: kill_cgroup(self.cgroup))
                await self.c.fence.request({"op": "disarm", "bot": self.bot})
            self.c.note("failover", f"term {token} ended while the daemon was away ({err.what})", self.bot)
            return False
        self.leader = self.c.host
        self._bot_down.clear()
        self._announce(Role.PRIMARY, f"primary (term {token}, adopted)")
        return True

    # ------------------------------------------------------------ backup
    async def _follow(self) -> None:
        policy, c = self.policy, self.c
        next_check, checked_term = 0.0, None
        self._failed_checks = 0
        while True:
            kv = await self._read_leader()
            if kv is None and await self._campaign():
                return
            checking = kv is not None and policy.check_url and kv.value.decode() != c.host
            if kv is not None and checking and kv.create_revision != checked_term:
                # a term seen for the first time: its failures start at 0, and its bot has one
                # interval to come up before the first check
                checked_term, self._failed_checks = kv.create_revision, 0
                next_check = time.monotonic() + policy.check_interval
            if kv is not None and checking and time.monotonic() >= next_check:
                next_check = time.monotonic() + policy.check_interval
                await self._check(kv)
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), c.poll)

    async def _read_leader(self) -> KV | None:
        try:
            kv = await self.c.run(lambda: self.c.etcd.get(self.c.key(self.bot, "leader")))
        except ClawpenError as err:
            self.reason = f"standby: etcd unreachable ({err.what})"
            return KV("", b"", 0, 0, 0)  # unknown: never campaign on a failed read
        leader = None if kv is None else kv.value.decode()
        if leader != self.leader or (kv is not None and self.role is Role.STANDBY):
            self.leader = leader
            self.reason = f"standby: {leader} is primary (term {kv.create_revision})" if kv else "standby"
        return kv

    async def _campaign(self) -> bool:
        c, bot = self.c, self.bot
        handover = await c.run(lambda: c.etcd.get(c.key(bot, "handover")))
        note = json.loads(handover.value) if handover is not None else None
        if note and note.get("to") and note["to"] != c.host:
            self.reason = f"standby: a planned handover to {note['to']} is under way"
            return False
        rank = self.policy.hosts.index(c.host) if c.host in self.policy.hosts else len(self.policy.hosts)
        if rank and not note:  # the preferred host first: the others give it a head start
            await asyncio.sleep(rank * c.poll)
            if await c.run(lambda: c.etcd.get(c.key(bot, "leader"))) is not None:
                return False
        sent = boottime()  # before the grant: etcd's countdown starts when it grants, after this
        lease = await c.run(lambda: c.etcd.grant(c.ttl))
        won, token, holder = await c.run(lambda: c.etcd.create(c.key(bot, "leader"), c.host, lease=lease))
        if not won:
            with contextlib.suppress(ClawpenError):
                await c.run(lambda: c.etcd.revoke(lease))
            if holder is not None:
                self.reason = f"standby: {holder.value.decode()} is primary (term {holder.create_revision})"
            return False
        self.lease, self.token, self.leader = lease, token, c.host
        self.deadline = sent + c.ttl - c.margin
        try:
            await c.fence.checked({"op": "arm", "bot": bot, "cgroup": self.cgroup, "deadline": self.deadline,
                                   "lease": lease, "token": token})  # fmt: skip
        except ClawpenError as err:
            await self._release(f"the fence could not be armed: {err.what}")
            return False
        keep = asyncio.get_running_loop().create_task(self._keep_renewing())
        try:  # the lease lives through the restore
            restored = await self._restore(note.get("snapshot") if note else None)
        except ClawpenError as err:
            await self._release(f"its workspace could not be restored: {err.what}")
            raise
        finally:
            keep.cancel()
        with contextlib.suppress(ClawpenError):
            await c.run(lambda: c.etcd.delete(c.key(bot, "handover")))
        how = "planned handover" if note else "the leader key was free"
        c.note("failover", f"{c.host} is primary (term {token}; {how}{restored})", bot)
        self._announce(Role.PRIMARY, f"primary (term {token})")
        return True

    async def _restore(self, snapshot: str | None) -> str:
        if self.shipper is None:
            return ""
        shipper = self.shipper
        done = await self.c.run(lambda: shipper.restore(snapshot), timeout=max(60.0, self.c.ttl))
        if done is None:
            return "; no shipped workspace yet"
        self.copy = done
        return f"; workspace restored from {str(done.get('snapshot', '?'))[:8]}"

    async def _check(self, leader: KV) -> None:
        import httpx

        policy = self.policy
        assert policy.check_url is not None
        host = leader.value.decode()
        url = policy.check_url.replace("{host}", host).replace("{address}", self.c.addresses.get(host, host))
        try:
            async with httpx.AsyncClient(timeout=policy.check_timeout, trust_env=False) as client:
                reply = await client.get(url)
            ok, detail = reply.status_code < 400, f"HTTP {reply.status_code}"
        except httpx.HTTPError as err:
            ok, detail = False, type(err).__name__
        self._failed_checks = 0 if ok else self._failed_checks + 1
        if self._failed_checks < policy.check_failures:
            return
        self._failed_checks = 0
        why = f"{self.c.host}'s check of {url} failed {policy.check_failures} times ({detail})"
        await self.demand(leader.create_revision, why=why, to=None, planned=False)

    async def demand(self, term: int, *, why: str, to: str | None, planned: bool) -> None:
        """Ask term ``term``'s primary to step down (a planned handover: to ``to``)."""
        c = self.c
        body = json.dumps({"term": term, "by": c.host, "why": why, "to": to, "planned": planned})
        await c.run(lambda: c.etcd.put(c.key(self.bot, "demote"), body))
        c.note("failover", f"asked term {term} to step down: {why}", self.bot)

    # ------------------------------------------------------------ primary
    async def _hold(self) -> None:
        shipping = None
        if self.shipper is not None and self.policy.sync_interval:
            shipping = asyncio.get_running_loop().create_task(self._ship_every(self.policy.sync_interval))
        try:
            await self._renew_loop()
        finally:
            if shipping is not None:
                shipping.cancel()

    async def _ship_every(self, interval: float) -> None:
        """As primary: ship the workspace every ``interval``; the copy's time goes to etcd."""
        c, shipper = self.c, self.shipper
        assert shipper is not None
        while self.role is Role.PRIMARY:
            await asyncio.sleep(interval)
            try:
                shipped = await c.run(
                    functools.partial(shipper.ship, term=self.token or 0, reason="interval"),
                    timeout=interval * 10,
                )
                self.copy = shipped
                await c.run(functools.partial(c.etcd.put, c.key(self.bot, "synced"), json.dumps(shipped)))
            except ClawpenError as err:
                c.note("failover", f"shipping the workspace failed: {err.what}", self.bot)

    async def _renew_loop(self) -> None:
        c = self.c
        wait = c.ttl / 3
        while self.role is Role.PRIMARY:
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), wait)
            if self.role is not Role.PRIMARY:
                return
            try:
                await self._renew()
            except ClawpenError as err:
                if boottime() >= self.deadline - c.margin:
                    await self._lost(f"could not renew its lease in time ({err.what})")
                    return
                self.reason = f"primary (term {self.token}); renewing failed: {err.what}"
                wait = RENEW_RETRY  # etcd electing a leader, a member gone: try again soon
                continue
            wait = c.ttl / 3
            try:
                demote = await c.run(lambda: c.etcd.get(c.key(self.bot, "demote")))
            except ClawpenError:
                continue  # the lease is renewed; the demand is read next time
            if demote is not None:
                order = json.loads(demote.value)
                if order.get("term") == self.token:
                    keep = asyncio.get_running_loop().create_task(self._keep_renewing())
                    try:  # the lease lives through the stop and the last shipping
                        await self._step_down(order)
                    finally:
                        keep.cancel()
                    return

    async def _keep_renewing(self) -> None:
        while self.lease is not None:
            await asyncio.sleep(self.c.ttl / 3)
            with contextlib.suppress(ClawpenError):
                await self._renew()

    async def _renew(self) -> None:
        c, lease = self.c, self.lease
        if lease is None:
            raise HostError("no lease held")
        sent = boottime()
        ttl = await c.run(lambda: c.etcd.keepalive(lease), timeout=max(0.2, self.deadline - sent))
        if ttl <= 0:
            await self._lost(f"its lease (term {self.token}) expired at etcd")
            raise HostError("the lease expired")
        deadline = sent + c.ttl - c.margin
        await c.fence.checked({"op": "extend", "bot": self.bot, "deadline": deadline})
        self.deadline = deadline
        self.reason = f"primary (term {self.token})"

    async def _lost(self, why: str) -> None:
        """The lease is (being) lost: the bot goes now; then the term ends."""
        if self.role is not Role.PRIMARY:
            return
        self.urgent = True
        self.c.note("failover", f"{self.c.host} steps down: {why}", self.bot)
        self._announce(Role.STANDBY, f"standby: {why}")
        await self._wait_bot_down(max(0.5, self.deadline - boottime()))
        await self._release(why)
        self.urgent = False

    async def _step_down(self, order: dict[str, Any]) -> None:
        """Asked to step down (a failed health check, or `clawpen failover`): stop the bot
        gracefully, ship the workspace, leave a handover note, then free the key."""
        c, bot = self.c, self.bot
        planned = bool(order.get("planned"))
        self._announce(Role.STANDBY, f"standby: stepping down ({order.get('why', '')})")
        await self._wait_bot_down(None)
        snapshot = None
        if self.shipper is not None:
            shipper, term = self.shipper, self.token or 0
            try:
                shipped = await c.run(lambda: shipper.ship(term=term, reason="handover"), timeout=600.0)
                snapshot = shipped.get("snapshot")
                self.copy = shipped
                await c.run(lambda: c.etcd.put(c.key(bot, "synced"), json.dumps(shipped)))
            except ClawpenError as err:
                c.note("failover", f"the final shipping of the workspace failed: {err.what}", bot)
        # The note names who goes next (the named host, else the host whose check failed this
        # one, else the next of ha.hosts): this host steps aside rather than winning again.
        to = order.get("to") or (None if planned else order.get("by")) or self._successor()
        note = json.dumps({"from": c.host, "to": to, "snapshot": snapshot, "term": self.token})
        with contextlib.suppress(ClawpenError):  # without it, the key is free to all: still safe
            lease = await c.run(lambda: c.etcd.grant(c.ttl * HANDOVER_TTL_FACTOR))
            await c.run(lambda: c.etcd.put(c.key(bot, "handover"), note, lease=lease))
        with contextlib.suppress(ClawpenError):
            await c.run(lambda: c.etcd.delete(c.key(bot, "demote")))
        await self._release(f"stepped down: {order.get('why', '')}")
        c.note(
            "failover", f"{c.host} stepped down from term {order.get('term')} ({order.get('why', '')})", bot
        )

    def _successor(self) -> str | None:
        """The host a handover goes to when none is named: the next of ``ha.hosts`` after this
        one that the cluster knows (registered), else the next one."""
        hosts = self.policy.hosts
        me = hosts.index(self.c.host) if self.c.host in hosts else -1
        others = [h for h in (hosts[(me + i) % len(hosts)] for i in range(1, len(hosts))) if h != self.c.host]
        known = [h for h in others if h in self.c.addresses]
        return (known or others)[0] if others else None

    async def _wait_bot_down(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._bot_down.wait(), timeout)

    async def _release(self, why: str) -> None:
        """End this host's term: disarm the fence (the bot is down), free the key and lease."""
        c, lease, token = self.c, self.lease, self.token
        self.lease = self.token = None
        if self.role is Role.PRIMARY:
            self._announce(Role.STANDBY, f"standby: {why}")
        if not self._bot_down.is_set():  # the instance did not stop it in time: never leave it unguarded
            from clawpen.ha.fence import kill_cgroup

            with contextlib.suppress(Exception):
                await c.run(lambda: kill_cgroup(self.cgroup), timeout=10.0)
            self._bot_down.set()
        with contextlib.suppress(ClawpenError):
            await c.fence.request({"op": "disarm", "bot": self.bot})
        if lease is not None:
            with contextlib.suppress(ClawpenError, TimeoutError):
                if token:
                    await c.run(lambda: c.etcd.delete_if(c.key(self.bot, "leader"), token))
                await c.run(lambda: c.etcd.revoke(lease))

    def poke(self) -> None:
        self._poke.set()
