"""The daemon's operations and the Unix-socket server that exposes them to the CLI.

Every operation is declared once as a contract (:mod:`clawpen.ops`; the daemon's own in
``daemon/ops_bots.py``, ``ops_admin.py``, ``ops_views.py``) and registered in ``Daemon.ops``;
the bot operations' handlers are the ``op_<name>`` methods here. The socket is
``<state>/clawpen.sock``, mode 0600, so only root (or a caller with a token) may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from clawpen import audit
from clawpen.daemon import (
    auditheads,
    ops_admin,
    ops_releases,
    ops_snapshots,
    ops_storage,
    ops_validate,
    ops_views,
    rpc,
)
from clawpen.daemon import ops_bots as ob
from clawpen.daemon.botlocks import BotLocks
from clawpen.daemon.runtime import Instance, Services
from clawpen.daemon.store import Instance as InstanceRow
from clawpen.daemon.store import Store
from clawpen.daemon.tiers import stop_stored, stored_tier
from clawpen.errors import AccessError, ClawpenError, ConfigError, UsageError
from clawpen.host import Event
from clawpen.ops import Call, Empty, Operation, Registry
from clawpen.spec.loader import parse_spec_text
from clawpen.spec.models import Bot, Spec
from clawpen.supervisor.states import BotState, Transition, is_terminal_for_policy
from clawpen.tokens import TokenStore, role_allows


def _article(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


class Daemon:
    """Holds the supervised instances and answers the CLI."""

    def __init__(self, store: Store, services_factory: Callable[[Daemon], Services]) -> None:
        self.store = store
        self.ops = Registry()  # every operation, whoever calls it (see clawpen.ops)
        self.services = services_factory(self)
        self.instances: dict[str, list[Instance]] = {}
        self.up_lock = asyncio.Lock()
        self.bot_locks = BotLocks()  # start/restart vs. a workspace restore (daemon/botlocks.py)
        self.snapshot_locks = BotLocks()  # one snapshot of a bot at a time (manual, before_up, scheduled)
        self.subscribers: set[asyncio.Queue[Event]] = set()
        self.ops.add(self._own_operations())
        self.components: dict[str, Any] = {}  # the started components by name (daemon/app.py)
        # Called with the whole spec after every applied `up` (gateway, alert rules, ...).
        self.spec_listeners: list[Callable[[Spec], None]] = []
        # `up -d` with [deploy] auto_rollback: the tasks watching a release's health window.
        self.deploy_watches: set[asyncio.Task[None]] = set()

    def current_spec(self) -> Spec | None:
        """The spec of the newest release (what `up` applied last), parsed again; None if none."""
        latest = self.store.latest_spec()
        if latest is None:
            return None
        path, text = latest
        try:
            return parse_spec_text(text, Path(path)).spec
        except ClawpenError:
            return None

    def _own_operations(self) -> list[Operation[Any]]:
        return [
            ob.PING.bind(self.op_ping),
            ob.PS.bind(self.op_ps),
            ob.STATUS.bind(self.op_status),
            ob.EVENTS.bind(self.op_events),
            ob.RELEASES.bind(self.op_releases),
            ob.START.bind(self.op_start),
            ob.STOP.bind(self.op_stop),
            ob.RESTART.bind(self.op_restart),
            ob.UP.bind(self.op_up),
            ob.DOWN.bind(self.op_down),
            ob.EXEC_TARGET.bind(self.op_exec_target),
            *ops_admin.operations(lambda: self.services.state_dir),
            *ops_views.operations(self),
            *ops_releases.operations(self),
            *ops_snapshots.operations(self),
            *ops_storage.operations(self),
            *ops_validate.operations(self),
        ]

    def on_spec(self, listener: Callable[[Spec], None]) -> None:
        """Call ``listener`` with the whole spec after every applied `up` (see :mod:`clawpen.host`)."""
        self.spec_listeners.append(listener)

    def add_ops(self, ops: Iterable[Operation[Any]]) -> None:
        """Register the operations of a component (see :mod:`clawpen.daemon.app`)."""
        self.ops.add(ops)

    def role_for(self, name: str) -> str | None:
        """The least role operation ``name`` needs, or None if there is no such operation."""
        op = self.ops.get(name)
        return op.role if op else None

    async def dispatch(
        self, name: str, args: dict[str, Any], who: str, writer: asyncio.StreamWriter | None = None
    ) -> Any:
        """Run operation ``name`` for an already authorized caller ``who``: validate its arguments
        (UsageError naming the field), run it (a bug is an InternalError, logged), check its
        reply, audit what changes things. The Unix socket and the HTTP API both come here."""
        op = self.ops.require(name)
        request = op.contract.parse(args)
        result = await self.ops.run(op, request, Call(who, writer))
        if op.role != "viewer":
            try:
                rec = audit.append(
                    self.services.state_dir, who, name, op.contract.audit_detail(request, result)
                )
                auditheads.record(self.store.db, *audit.head_of(rec), time.time())
            except OSError as err:  # a full disk: the action happened, so say so instead of failing
                self.note("audit", f"the audit log could not be written ({err}): {who} did {name}")
        return result

    # ---------------------------------------------------------------- events
    def record(self, change: Transition) -> None:
        event = self.store.add_event(
            "state",
            change.reason,
            bot=change.bot,
            replica=change.replica,
            from_state=str(change.from_state),
            to_state=str(change.to_state),
            at=change.at,
        )
        self._publish(event)

    def note(self, kind: str, reason: str, bot: str | None = None, replica: int | None = None) -> None:
        self._publish(self.store.add_event(kind, reason, bot=bot, replica=replica))

    def _publish(self, event: Event) -> None:
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    # ---------------------------------------------------------------- bots
    def bot_from_row(self, policy: dict[str, Any], name: str = "") -> tuple[Bot, str]:
        """The stored bot, validated again by this clawpen's rules: a policy an older clawpen
        accepted may be refused now (a workspace in the state directory, a bound that is new)."""
        from pydantic import ValidationError

        base_dir = str(policy["base_dir"])
        try:
            bot = Bot.model_validate(policy["spec"], context={"base_dir": base_dir})
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "bot"
            raise ConfigError(
                f"the stored policy of bot {name or '?'} is refused by this clawpen: {field}: {first['msg']}",
                where=f"bots.{name}.{field}" if name else field,
                hint="fix the spec and run `clawpen up` (the bot is not run until then)",
            ) from None
        return bot, base_dir

    def _launch(self, name: str, bot: Bot, base_dir: str) -> None:
        replicas = [Instance(self.services, name, i, bot, base_dir) for i in range(bot.replicas)]
        self.instances[name] = replicas
        for inst in replicas:
            inst.start()

    async def halt(self, name: str) -> None:
        await self._stop_instances(self.instances.pop(name, []))

    def replicas(self, name: str) -> list[Instance]:
        return self.instances.get(name, [])

    async def _stop_instances(self, insts: list[Instance]) -> None:
        for inst in insts:
            inst.stop()
        await asyncio.gather(*(i.stopped() for i in insts), return_exceptions=True)

    def restore(self) -> None:
        """After a (re)start of the daemon: adopt the sandboxes that still run, start the bots
        that should run but do not (after a host restart, for one)."""
        rows = {(i.bot, i.replica): i for i in self.store.instances()}
        for name, row in self.store.bots().items():
            if row.desired != "running":
                continue
            try:
                bot, base_dir = self.bot_from_row(row.policy, name)
            except ClawpenError as err:
                self._refuse_stored(name, err, [r for (n, _), r in rows.items() if n == name], row.policy)
                continue
            insts = [Instance(self.services, name, i, bot, base_dir) for i in range(bot.replicas)]
            self.instances[name] = insts
            for inst in insts:
                saved = rows.get((name, inst.replica))
                if saved is not None and inst.adopt(saved):  # its sandbox still runs
                    continue
                if saved is not None and is_terminal_for_policy(BotState(saved.state)):
                    inst.rest(BotState(saved.state), saved)  # it had ended for good: leave it so
                else:  # its process is gone: start it, carrying on its restart count and window
                    inst.resume(saved)
                    self.note("restore", "started again after a daemon start", name, inst.replica)

    def _refuse_stored(
        self, name: str, err: ClawpenError, saved: list[InstanceRow], policy: dict[str, Any]
    ) -> None:
        """A stored bot this clawpen refuses (see :meth:`bot_from_row`): its sandboxes are stopped
        (it may hold what the new rules protect), it stays listed as stopped, and an event says
        why; one bad row never keeps the daemon, or the other bots, from starting."""
        for row in saved:
            stop_stored(
                self.services.tiers, self.services.run_dir, stored_tier(policy), row, self.services.cgroups()
            )
            self.store.drop_instance(name, row.replica)
        self.store.set_desired(name, "stopped", manual_stop=False)
        self.note("policy-refused", f"{err.what}; {err.hint}" if err.hint else err.what, name)

    def _names(self, bots: list[str] | None) -> list[str]:
        names = list(bots or [])
        known = self.store.bots()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(
                f"no bot named {', '.join(unknown)}",
                where="clawpen",
                hint=f"known bots: {', '.join(sorted(known)) or 'none (run `clawpen up`)'}",
            )
        return names or sorted(known)

    def known_bot(self, name: str) -> str:
        """``name`` if the daemon supervises such a bot (UsageError "no bot named ..." otherwise)."""
        return self._names([name])[0]

    # ---------------------------------------------------------------- operations
    async def op_ping(self, _req: Empty, _call: Call) -> dict[str, Any]:
        return {"pid": os.getpid()}

    async def op_up(self, req: ob.UpRequest, call: Call) -> Any:
        """Check, build, apply all or nothing, and with ``wait`` wait for the changed bots
        (:mod:`clawpen.daemon.up`, which reads the arguments as a dict)."""
        from clawpen.daemon.up import op_up

        return await op_up(self, req.model_dump(), call.writer)

    async def op_down(self, req: ob.Bots, _call: Call) -> dict[str, Any]:
        names = self._names(req.bots)
        async with self.up_lock:
            for name in names:
                await self.halt(name)
                self.store.remove_bot(name)
                self.note("remove", "removed by `clawpen down`", name)
        return {"removed": names}

    async def op_stop(self, req: ob.Bots, _call: Call) -> dict[str, Any]:
        names = self._names(req.bots)
        for name in names:
            self.store.set_desired(name, "stopped", manual_stop=True)
        await self._stop_instances([i for n in names for i in self.replicas(n)])
        return {"stopped": names}

    async def op_start(self, req: ob.Bots, _call: Call) -> dict[str, Any]:
        names = self._names(req.bots)
        for name in names:  # refused as a whole, before any bot starts
            self.bot_locks.refuse_if_busy(name, "start")
        rows = self.store.bots()
        for name in names:
            self.store.set_desired(name, "running", manual_stop=False)
            if name not in self.instances:
                bot, base_dir = self.bot_from_row(rows[name].policy, name)
                self._launch(name, bot, base_dir)
            else:
                for inst in self.replicas(name):
                    inst.start()
        return {"started": names}

    async def op_restart(self, req: ob.Bots, call: Call) -> dict[str, Any]:
        names = self._names(req.bots)
        for name in names:
            self.bot_locks.refuse_if_busy(name, "restart")
        for name in names:
            if name not in self.instances:
                await self.op_start(ob.Bots(bots=[name]), call)
            for inst in self.replicas(name):
                inst.restart()
        return {"restarted": names}

    async def op_ps(self, _req: Empty, _call: Call) -> list[dict[str, Any]]:
        return ops_views.ps_rows(self)

    async def op_status(self, req: ob.Bots, _call: Call) -> dict[str, Any]:
        if not req.bots:
            raise UsageError("name a bot", where="clawpen status", hint="write: clawpen status BOT")
        name = self._names(req.bots)[0]
        row = self.store.bots()[name]
        events = [e._asdict() for e in self.store.events(bot=name, limit=10)]
        return {
            "bot": name,
            "desired": row.desired,
            "release": row.release_id,
            "instances": [i.status() for i in self.replicas(name)],
            "spec": row.policy["spec"],
            "events": events,
        }

    async def op_exec_target(self, req: ob.ExecTargetRequest, _call: Call) -> dict[str, Any]:
        """Where `clawpen exec` should enter: the running sandbox of a bot replica."""
        name, replica = self.known_bot(req.bot), req.replica
        insts = self.replicas(name)
        sandbox = insts[replica].sandbox if replica < len(insts) else None
        if sandbox is None or sandbox.sandbox_pid is None:
            raise UsageError(
                f"bot {name} (replica {replica}) is not running",
                where="clawpen exec",
                hint=f"clawpen start {name}",
            )
        row = self.store.bots()[name]
        link = insts[replica].net.link
        return {
            "bot": name,
            "replica": replica,
            "link": None if link is None else link._asdict(),
            "sandbox_pid": sandbox.sandbox_pid,
            "cgroup": sandbox.cgroup_name,
            "spec": row.policy["spec"],
            "base_dir": row.policy["base_dir"],
        }

    async def op_releases(self, req: ob.ReleasesRequest, _call: Call) -> list[dict[str, Any]]:
        return self.store.releases(req.limit)

    async def op_events(self, req: ob.EventsRequest, call: Call) -> list[dict[str, Any]]:
        """The last events; with ``follow`` on the socket, new ones as items until the client
        hangs up (then this never returns)."""
        bot, w = req.bot, call.writer
        past = self.store.events(bot=bot, limit=req.limit)
        if not req.follow or w is None:
            return [e._asdict() for e in past]
        for event in past:
            w.write(rpc.item(event._asdict()))
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        self.subscribers.add(queue)
        try:
            while True:
                event = await queue.get()
                if bot is None or event.bot == bot:
                    w.write(rpc.item(event._asdict()))
                    await w.drain()
        finally:
            self.subscribers.discard(queue)

    # ---------------------------------------------------------------- serving
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request of the CLI (see :mod:`clawpen.daemon.rpc`). A malformed request or bad
        arguments are a UsageError (exit 2); any other failure is an internal error (exit 1)
        whose traceback goes to the daemon's log, never to the client."""
        name = "?"
        try:
            try:
                line = await reader.readline()
            except ValueError:  # longer than the stream's limit
                writer.write(rpc.error(UsageError("the request is longer than 1 MiB", where="daemon")))
                await writer.drain()
                return
            if not line:
                return
            try:
                request = _decode(line)
                name = request["op"]
                self.ops.require(name)
                who = self._authorize(name, request.get("token"), writer)
                work = self.dispatch(name, request.get("args") or {}, who, writer)
                result = await rpc.with_heartbeat(work, writer, rpc.heartbeat_interval(request))
                writer.write(rpc.ok(result))
            except ClawpenError as err:
                writer.write(rpc.error(err))
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as err:  # a bug outside the operation's handler
                writer.write(rpc.error(self.ops.internal(name, "a socket client", err)))
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _authorize(self, op: str, token: str | None, writer: asyncio.StreamWriter) -> str:
        """Who is calling, if their role allows ``op``: root on the socket is admin; a token has
        its own role (root included, so an operator's view can be tried)."""
        if token:
            return self.authorize_token(op, str(token))
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != 0:
            raise AccessError(
                "only root may use the daemon without a token", where="daemon", hint="set CLAWPEN_TOKEN"
            )
        return "root"

    def authorize_token(self, op: str, token: str, needed: str | None = None) -> str:
        """Who holds ``token``, if its role allows ``op`` (or ``needed``, when given); raises
        AccessError otherwise."""
        needed = needed or self.role_for(op) or "admin"
        found = TokenStore(self.services.state_dir).check(token)
        if not role_allows(found.role, needed):
            raise AccessError(
                f"{_article(found.role)} {found.role} token may not {op.replace('_', ' ')}",
                where=f"token {found.id}",
                hint=f"this needs the {needed} role",
            )
        return f"token {found.id} ({found.role})"

    async def shutdown(self) -> None:
        """Stop supervising: bots keep running only if the daemon is killed; a clean shutdown
        stops them (SIGTERM, grace, SIGKILL)."""
        await asyncio.gather(*(self.halt(n) for n in list(self.instances)), return_exceptions=True)


def _decode(line: bytes) -> dict[str, Any]:
    """A request line as ``{"op": str, "args": {...}, ...}``; UsageError when it is not one."""
    try:
        request = json.loads(line)
    except ValueError:
        request = None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise UsageError(
            'bad request: not a JSON object with an "op"',
            where="daemon",
            hint="speak the protocol of clawpen.daemon.rpc: one JSON object per line",
        )
    if not isinstance(request.get("args") or {}, dict) or not isinstance(request.get("token") or "", str):
        raise UsageError('bad request: "args" must be an object and "token" a string', where="daemon")
    return request
