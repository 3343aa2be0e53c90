"""Read-only views the HTTP API and the dashboard show: a bot's log lines, the topology, who a
token is (see :mod:`clawpen.ops`). The CLI reads logs from the files themselves."""

from __future__ import annotations

import os
import re
import socket
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field

from clawpen.daemon.ops_bots import Name
from clawpen.errors import ClawpenError, UsageError
from clawpen.ops import Call, Contract, Empty, Operation, Reply, Request
from clawpen.tokens import TokenStore

if TYPE_CHECKING:
    from clawpen.daemon.runtime import Instance, Services
    from clawpen.daemon.store import Store
    from clawpen.sandbox.cgroups import Cgroup


class Daemon(Protocol):
    """What these views read of the daemon (``daemon/server.py`` ``Daemon``, which registers them)."""

    @property
    def services(self) -> Services: ...
    @property
    def instances(self) -> Mapping[str, Sequence[Instance]]: ...
    @property
    def store(self) -> Store: ...
    def known_bot(self, name: str) -> str: ...


class LogsRequest(Request):
    bot: Name
    tail: int = Field(default=200, ge=1, le=10_000, description="the last N matching lines")
    grep: str | None = Field(default=None, max_length=500, description="a regular expression")
    since: str | None = Field(default=None, max_length=64, description='"1h", RFC 3339 or epoch')
    until: str | None = Field(default=None, max_length=64)


class LogLine(Reply):
    ts: float
    stream: str
    text: str


class BotNode(Reply):
    bot: str
    states: list[str]
    egress: list[Any]
    publish: list[Any]
    expose: bool
    bandwidth: Any = None


class Topology(Reply):
    host: str
    bots: list[BotNode]


class WhoAmI(Reply):
    who: str
    id: str | None
    role: str | None


LOGS = Contract("logs", "viewer", LogsRequest, list[LogLine], "a bot's log lines (tail and search)")
TOPOLOGY = Contract("topology", "viewer", Empty, Topology, "host -> bots -> gateway -> domains, ports")
WHOAMI = Contract("whoami", "viewer", Empty, WhoAmI, "the caller's token id and role (sign-in check)")

CONTRACTS: tuple[Contract[Any], ...] = (LOGS, TOPOLOGY, WHOAMI)


def ps_rows(daemon: Daemon) -> list[dict[str, Any]]:
    """``ps``: every bot replica's status, with its memory now (the cgroup's ``memory.current``,
    a file read: cheap for many bots) and its limit (the spec's; None: no limit)."""
    out: list[dict[str, Any]] = []
    for name in sorted(daemon.store.bots()):
        insts = daemon.instances.get(name) or []
        if not insts:
            out.append({"bot": name, "replica": 0, "state": "stopped", "pid": None, "restarts": 0})
        for inst in insts:
            row = inst.status()
            row["memory_bytes"] = _memory(inst)
            row["memory_limit"] = inst.bot.resources.memory
            out.append(row)
    return out


def _memory(inst: Instance) -> int | None:
    """The bot's memory use now: one read of its cgroup's memory file (not all of ``stats()``,
    six files a bot on cgroup v1: ``ps`` with 500 bots read 3,000 files)."""
    from clawpen.sandbox.handle import CgroupHandle

    sandbox = inst.sandbox
    if not isinstance(sandbox, CgroupHandle):  # none, or a tier with stats of its own (a VM)
        return _stats_memory(inst)
    try:
        cg = sandbox.cg
    except ClawpenError:
        return _stats_memory(inst)
    path = _MEMORY_FILES.get(cg)
    if path is None:
        name = "memory.current" if cg.version == 2 else "memory.usage_in_bytes"
        path = next((f"{d}/{name}" for d in cg.dirs if os.path.exists(f"{d}/{name}")), "")
        _MEMORY_FILES[cg] = path
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except OSError:  # the cgroup went away as the bot stopped
        return None
    return int(text) if text.isdigit() else None


def _stats_memory(inst: Instance) -> int | None:
    sandbox = inst.sandbox
    if sandbox is None:
        return None
    try:
        return sandbox.stats().memory_current
    except (OSError, ClawpenError):  # the cgroup went away as the bot stopped
        return None


# each cgroup's memory file, found once (a restarted bot has a new Cgroup object)
_MEMORY_FILES: weakref.WeakKeyDictionary[Cgroup, str] = weakref.WeakKeyDictionary()


def regex(grep: str | None, where: str = "grep") -> str | None:
    """``grep`` if it is a regular expression (UsageError otherwise)."""
    if grep is not None:
        try:
            re.compile(grep)
        except re.error as err:
            raise UsageError(f"grep {grep!r} is not a regular expression: {err}", where=where) from None
    return grep


def operations(daemon: Daemon) -> list[Operation[Any]]:
    async def logs(req: LogsRequest, _call: Call) -> list[dict[str, Any]]:
        from clawpen.logs.query import parse_since, read_logs

        daemon.known_bot(req.bot)
        now = time.time()
        lo = parse_since(req.since, now, flag="since") if req.since else None
        hi = parse_since(req.until, now, flag="until") if req.until else None
        records = read_logs(
            daemon.services.logs_dir, req.bot, since=lo, until=hi, grep=regex(req.grep), tail=req.tail
        )
        return [{"ts": r.ts, "stream": r.stream, "text": r.text} for r in records]

    async def topology(_req: Empty, _call: Call) -> dict[str, Any]:
        states: dict[str, list[str]] = {}
        for name, insts in daemon.instances.items():
            states[name] = [str(i.machine.state) for i in insts]
        nodes = []
        for name, row in sorted(daemon.store.bots().items()):
            net = row.policy["spec"].get("network") or {}
            nodes.append(
                {
                    "bot": name,
                    "states": states.get(name) or ["stopped"],
                    "egress": net.get("egress", []),
                    "publish": net.get("publish", []),
                    "expose": bool(net.get("expose")),
                    "bandwidth": net.get("bandwidth"),
                }
            )
        return {"host": socket.gethostname(), "bots": nodes}

    async def whoami(_req: Empty, call: Call) -> dict[str, Any]:
        token_id = call.who.split()[1] if call.who.startswith("token ") else None
        tokens = TokenStore(daemon.services.state_dir).list()
        role = next((t.role for t in tokens if t.id == token_id), None)
        return {"who": call.who, "id": token_id, "role": role}

    return [LOGS.bind(logs), TOPOLOGY.bind(topology), WHOAMI.bind(whoami)]
