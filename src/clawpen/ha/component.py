"""The daemon's failover component: joins the cluster, runs one :class:`~clawpen.ha.agent.Agent`
per HA bot of this host, and serves ``cluster_status`` and ``failover``.

The daemon reaches it through :class:`HaRegistry` (``Services.ha``): an instance of an HA bot
asks it for its agent before every start. This host registers itself under
``<prefix>/hosts/<name>`` with a lease of its own, renewed like a primary's (a host whose key
is gone is down, as far as the cluster knows).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from clawpen.errors import ClawpenError, UsageError
from clawpen.ha.model import Cluster, Role
from clawpen.ha.registry import HaRegistry
from clawpen.ha.view import cluster_view
from clawpen.host import Notes, Operations, SpecFeed
from clawpen.ops import Call, Contract, Empty, Reply, Request
from clawpen.spec.models import Spec


class _Daemon(Notes, Operations, SpecFeed, Protocol):
    @property
    def services(self) -> Any: ...  # .ha (HaRegistry), .state_dir, .secrets, cgroup names


class FailoverRequest(Request):
    bot: str
    to: str | None = None
    wait: float = 60.0


class FailoverReply(Reply):
    bot: str
    before: str | None
    after: str | None
    term: int | None


class ClusterStatus(Reply):
    host: str | None
    endpoints: list[str]
    problem: str | None
    hosts: list[dict[str, Any]]
    bots: list[dict[str, Any]]


CLUSTER_STATUS = Contract(
    "cluster_status", "viewer", Empty, ClusterStatus, "the cluster's hosts and which host runs which HA bot"
)
FAILOVER = Contract(
    "failover", "operator", FailoverRequest, FailoverReply,
    "hand an HA bot over to its backup: stop, ship the workspace, start there",
)  # fmt: skip
CONTRACTS = (CLUSTER_STATUS, FAILOVER)


class HaComponent:
    name = "failover"
    before_bots = True

    def __init__(self, state: Path) -> None:
        self.state = state
        self.cluster: Cluster | None = None
        self.registry: HaRegistry | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._host_lease: int | None = None
        self._daemon: _Daemon | None = None
        self._configuring = asyncio.Lock()

    async def start(self, daemon: Daemon) -> None:  # type: ignore[name-defined] # noqa: F821
        self._daemon = daemon
        self.registry = daemon.services.ha
        daemon.add_ops([CLUSTER_STATUS.bind(self._status), FAILOVER.bind(self._failover)])
        spec = daemon.current_spec()
        if spec is not None:
            await self._configure(spec)
        daemon.on_spec(lambda spec: self._later(self._configure(spec)))

    def _later(self, coro: Any) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def _configure(self, spec: Spec) -> None:
        async with self._configuring:  # one spec at a time, in the order they were applied
            await self._apply(spec)

    async def _apply(self, spec: Spec) -> None:
        from clawpen.ha.wiring import agents_for, cluster_for

        registry, daemon = self.registry, self._daemon
        assert registry is not None and daemon is not None
        settings = getattr(spec, "cluster", None)
        if settings is None:
            registry.problem = "no [cluster] in the spec" if _ha_bots(spec) else None
            return
        if self.cluster is None:
            try:
                self.cluster = cluster_for(settings, self.state, daemon, ThreadPoolExecutor(16, "ha"))
            except ClawpenError as err:
                registry.problem = err.what
                return
            registry.host = self.cluster.host
            self._later(self._register())
        registry.problem = None
        cluster = self.cluster
        guards = await self._guards()
        wanted = agents_for(spec, cluster, daemon.services, self._workspace)
        for name, old in list(registry.agents.items()):  # gone from the spec, or its ha changed
            if name not in wanted or wanted[name].policy != old.policy:
                del registry.agents[name]
                await old.retire("its ha table changed" if name in wanted else "no longer an HA bot here")
        for name, agent in wanted.items():
            if name in registry.agents:
                continue
            registry.agents[name] = agent
            guard = guards.pop(name, None)
            if guard is not None:
                await agent.adopt(guard)
            agent.start()
        for name, guard in guards.items():  # guards of bots no longer HA here: their term ends
            daemon.note("failover", f"a fence guard of term {guard.get('token')} was left: ended", name)
            with contextlib.suppress(ClawpenError):
                await cluster.fence.request({"op": "disarm", "bot": name})

    def _workspace(self, bot: str) -> Path | None:
        """The real path of ``bot``'s workspace on this host (from its instance's policy)."""
        daemon = self._daemon
        insts = getattr(daemon, "instances", {}).get(bot) if daemon is not None else None
        if not insts:
            return None
        inst = insts[0]
        found = inst.bot.to_policy(bot, inst.base_dir).workspace
        return None if found is None else Path(found)

    async def _guards(self) -> dict[str, dict[str, Any]]:
        assert self.cluster is not None
        if not self.cluster.fence.socket_path.exists():
            return {}
        try:
            reply = await self.cluster.fence.checked({"op": "list"})
        except ClawpenError:
            return {}
        return {str(g["bot"]): g for g in reply.get("guards", [])}

    async def _register(self) -> None:
        """This host's key, under a lease renewed every third of its TTL."""
        c = self.cluster
        assert c is not None
        key = f"{c.prefix}/hosts/{c.host}"
        body = json.dumps({"host": c.host, "address": os.environ.get("CLAWPEN_CLUSTER_ADDRESS", c.host),
                           "pid": os.getpid(), "since": time.time()})  # fmt: skip
        while True:
            try:
                held = self._host_lease
                if held is None or await c.run(functools.partial(c.etcd.keepalive, held)) <= 0:
                    held = self._host_lease = await c.run(functools.partial(c.etcd.grant, c.ttl))
                    await c.run(functools.partial(c.etcd.put, key, body, lease=held))
                hosts = await c.run(lambda: c.etcd.prefix(f"{c.prefix}/hosts/"))
                c.addresses.update({kv.key.rsplit("/", 1)[1]: json.loads(kv.value).get("address", "")
                                    for kv in hosts})  # fmt: skip
            except (ClawpenError, ValueError):
                pass  # etcd away: the next round tries again (a lease that expired meanwhile is renewed)
            await asyncio.sleep(c.ttl / 3)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.registry is not None:
            for agent in self.registry.agents.values():
                await agent.close()
        if self.cluster is not None:
            await self.cluster.fence.close()

    # ------------------------------------------------------------ operations
    async def _status(self, _req: Empty, _call: Call) -> dict[str, Any]:
        registry = self.registry
        assert registry is not None
        if self.cluster is None:
            problem = registry.problem or "no [cluster] in the spec"
            return {"host": registry.host, "endpoints": [], "problem": problem, "hosts": [], "bots": []}
        return await cluster_view(self.cluster, registry)

    async def _failover(self, req: FailoverRequest, _call: Call) -> dict[str, Any]:
        registry, c = self.registry, self.cluster
        if registry is None or c is None:
            raise UsageError(
                "this daemon is in no cluster", where="[cluster]", hint="add [cluster] to the spec"
            )
        agent = registry.agent(req.bot)
        if agent is None:
            raise UsageError(
                f"bot {req.bot} has no failover on this host", where=f"bots.{req.bot}.ha",
                hint="run it on one of the bot's ha.hosts, for a bot with an ha table",
            )  # fmt: skip
        if req.to is not None and req.to not in agent.policy.hosts:
            raise UsageError(f"{req.to} is not among the bot's hosts ({', '.join(agent.policy.hosts)})",
                             where="--to", hint="name one of ha.hosts")  # fmt: skip
        key = c.key(req.bot, "leader")
        kv = await c.run(lambda: c.etcd.get(key))
        if kv is None:
            raise UsageError(
                f"bot {req.bot} has no primary now", where=req.bot, hint="see `clawpen cluster status`"
            )
        before = kv.value.decode()
        if req.to == before:
            raise UsageError(f"{before} is already the primary of {req.bot}", where="--to")
        await agent.demand(kv.create_revision, why="clawpen failover", to=req.to, planned=True)
        if agent.role is Role.PRIMARY:
            agent.poke()
        end = time.monotonic() + req.wait
        while time.monotonic() < end:
            await asyncio.sleep(0.1)
            now = await c.run(lambda: c.etcd.get(key))
            if now is not None and now.create_revision != kv.create_revision:
                return {
                    "bot": req.bot,
                    "before": before,
                    "after": now.value.decode(),
                    "term": now.create_revision,
                }
        raise UsageError(
            f"bot {req.bot} was not handed over within {req.wait:g}s", where=req.bot,
            hint="see `clawpen cluster status` and `clawpen events`",
        )  # fmt: skip


def _ha_bots(spec: Spec) -> list[str]:
    return [name for name, bot in spec.bots.items() if getattr(bot, "ha", None) is not None]
