"""The daemon's operations and the Unix-socket server that exposes them to the CLI.

Every command of the CLI that talks to the daemon is one operation here (``op_<name>``);
the socket is ``<state>/clawpen.sock``, mode 0600, so only root may use it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

from clawpen import audit
from clawpen.daemon import rpc
from clawpen.daemon.runtime import Instance, Services
from clawpen.daemon.store import Event, Store
from clawpen.daemon.store import Instance as InstanceRow
from clawpen.daemon.tiers import stop_stored, stored_tier
from clawpen.errors import AccessError, ClawpenError, ConfigError, UsageError
from clawpen.spec.loader import parse_spec_text
from clawpen.spec.models import Bot, Spec
from clawpen.supervisor.states import BotState, Transition, is_terminal_for_policy
from clawpen.tokens import TokenStore, role_allows
from clawpen.vault.store import Vault

# The least role each operation needs (tokens.ROLES: viewer < operator < admin).
OP_ROLES = {
    "ping": "viewer",
    "ps": "viewer",
    "status": "viewer",
    "events": "viewer",
    "releases": "viewer",
    "start": "operator",
    "stop": "operator",
    "restart": "operator",
    "up": "admin",
    "down": "admin",
    "exec_target": "admin",
    "secrets_set": "admin",
    "secrets_ls": "admin",
    "secrets_rm": "admin",
    "token_create": "admin",
    "token_ls": "admin",
    "token_revoke": "admin",
}


def _article(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def _audit_detail(op: str, args: dict[str, Any], result: Any) -> dict[str, Any]:
    """What the audit log keeps of an action: never a secret value or a token."""
    detail = {k: v for k, v in args.items() if k not in ("value_b64", "token")}
    if op == "up" and isinstance(result, dict):
        detail.update(release=result.get("release"), before=result.get("before"), after=result.get("after"))
    if op == "token_create" and isinstance(result, dict):
        detail["id"] = result.get("id")
    return detail


Handler = Callable[[dict[str, Any], asyncio.StreamWriter | None], Awaitable[Any]]


class Op(NamedTuple):
    """An operation contributed by another part of clawpen (metrics, network, ...): the least
    role it needs and its handler. ``writer`` is None when the caller is the HTTP API."""

    role: str
    handler: Handler


class Daemon:
    """Holds the supervised instances and answers the CLI."""

    def __init__(self, store: Store, services_factory: Callable[[Daemon], Services]) -> None:
        self.store = store
        self.services = services_factory(self)
        self.instances: dict[str, list[Instance]] = {}
        self.up_lock = asyncio.Lock()
        self.subscribers: set[asyncio.Queue[Event]] = set()
        self.extra_ops: dict[str, Op] = {}
        self.components: dict[str, Any] = {}  # the started components by name (daemon/app.py)
        # Called with the whole spec after every applied `up` (gateway, alert rules, ...).
        self.spec_listeners: list[Callable[[Spec], None]] = []

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

    def add_ops(self, ops: dict[str, Op]) -> None:
        """Register operations of another module (see :mod:`clawpen.daemon.app`)."""
        clash = set(ops) & (set(self.extra_ops) | set(OP_ROLES))
        if clash:
            raise ValueError(f"operations registered twice: {sorted(clash)}")
        self.extra_ops.update(ops)

    def role_for(self, name: str) -> str | None:
        """The least role operation ``name`` needs, or None if there is no such operation."""
        if name in OP_ROLES:
            return OP_ROLES[name]
        extra = self.extra_ops.get(name)
        return extra.role if extra else None

    async def dispatch(
        self, name: str, args: dict[str, Any], who: str, writer: asyncio.StreamWriter | None = None
    ) -> Any:
        """Run operation ``name`` for an already authorized caller ``who``; audit what changes
        things. The Unix socket and the HTTP API both come through here."""
        role = self.role_for(name)
        if role is None:
            raise UsageError(f"unknown operation {name!r}", where="daemon")
        extra = self.extra_ops.get(name)
        handler: Handler = extra.handler if extra else getattr(self, f"op_{name}")
        result = await handler(args, writer)
        if role != "viewer":
            try:
                audit.append(self.services.state_dir, who, name, _audit_detail(name, args, result))
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
    def _bot_from_row(self, policy: dict[str, Any], name: str = "") -> tuple[Bot, str]:
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

    async def _halt(self, name: str) -> None:
        await self._stop_instances(self.instances.pop(name, []))

    def _all(self, name: str) -> list[Instance]:
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
                bot, base_dir = self._bot_from_row(row.policy, name)
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
        """A stored bot this clawpen refuses (see :meth:`_bot_from_row`): its sandboxes are stopped
        (it may hold what the new rules protect), it stays listed as stopped, and an event says
        why; one bad row never keeps the daemon, or the other bots, from starting."""
        for row in saved:
            stop_stored(self.services, stored_tier(policy), row)
            self.store.drop_instance(name, row.replica)
        self.store.set_desired(name, "stopped", manual_stop=False)
        self.note("policy-refused", f"{err.what}; {err.hint}" if err.hint else err.what, name)

    def _names(self, args: dict[str, Any]) -> list[str]:
        names = list(args.get("bots") or [])
        known = self.store.bots()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(
                f"no bot named {', '.join(unknown)}",
                where="clawpen",
                hint=f"known bots: {', '.join(sorted(known)) or 'none (run `clawpen up`)'}",
            )
        return names or sorted(known)

    # ---------------------------------------------------------------- operations
    async def op_ping(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        return {"pid": os.getpid()}

    async def op_up(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        """Check, build, apply all or nothing, and with ``wait`` wait for the changed bots
        (:mod:`clawpen.daemon.up`)."""
        from clawpen.daemon.up import op_up

        return await op_up(self, args, _w)

    async def op_down(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        names = self._names(args)
        async with self.up_lock:
            for name in names:
                await self._halt(name)
                self.store.remove_bot(name)
                self.note("remove", "removed by `clawpen down`", name)
        return {"removed": names}

    async def op_stop(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        names = self._names(args)
        for name in names:
            self.store.set_desired(name, "stopped", manual_stop=True)
        await self._stop_instances([i for n in names for i in self._all(n)])
        return {"stopped": names}

    async def op_start(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        names = self._names(args)
        rows = self.store.bots()
        for name in names:
            self.store.set_desired(name, "running", manual_stop=False)
            if name not in self.instances:
                bot, base_dir = self._bot_from_row(rows[name].policy, name)
                self._launch(name, bot, base_dir)
            else:
                for inst in self._all(name):
                    inst.start()
        return {"started": names}

    async def op_restart(self, args: dict[str, Any], w: asyncio.StreamWriter | None) -> Any:
        names = self._names(args)
        for name in names:
            if name not in self.instances:
                await self.op_start({"bots": [name]}, w)
            for inst in self._all(name):
                inst.restart()
        return {"restarted": names}

    async def op_ps(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        rows = self.store.bots()
        out = []
        for name in sorted(rows):
            insts = self._all(name)
            if not insts:
                out.append({"bot": name, "replica": 0, "state": "stopped", "pid": None, "restarts": 0})
            out += [i.status() for i in insts]
        return out

    async def op_status(self, args: dict[str, Any], w: asyncio.StreamWriter | None) -> Any:
        name = self._names(args)[0] if args.get("bots") else None
        if name is None:
            raise UsageError("name a bot", where="clawpen status", hint="write: clawpen status BOT")
        row = self.store.bots()[name]
        events = [e._asdict() for e in self.store.events(bot=name, limit=10)]
        return {
            "bot": name,
            "desired": row.desired,
            "release": row.release_id,
            "instances": [i.status() for i in self._all(name)],
            "spec": row.policy["spec"],
            "events": events,
        }

    async def op_exec_target(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        """Where `clawpen exec` should enter: the running sandbox of a bot replica."""
        name = self._names({"bots": [args.get("bot")]})[0]
        replica = int(args.get("replica", 0))
        insts = self._all(name)
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

    async def op_releases(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        return self.store.releases(int(args.get("limit", 50)))

    async def op_events(self, args: dict[str, Any], w: asyncio.StreamWriter | None) -> Any:
        bot = args.get("bot")
        past = self.store.events(bot=bot, limit=int(args.get("limit", 100)))
        if not args.get("follow") or w is None:
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
        try:
            line = await reader.readline()
            if not line:
                return
            try:
                request = json.loads(line)
                name = str(request["op"])
                if self.role_for(name) is None:
                    raise UsageError(f"unknown operation {name!r}", where="daemon")
                args = request.get("args") or {}
                who = self._authorize(name, request.get("token"), writer)
                work = self.dispatch(name, args, who, writer)
                result = await rpc.with_heartbeat(work, writer, rpc.heartbeat_interval(request))
                writer.write(rpc.ok(result))
            except ClawpenError as err:
                writer.write(rpc.error(err))
            except (ValueError, KeyError, TypeError) as err:
                writer.write(rpc.error(UsageError(f"bad request: {err}", where="daemon")))
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

    def authorize_token(self, op: str, token: str) -> str:
        """Who holds ``token``, if its role allows ``op`` (raises AccessError otherwise)."""
        needed = self.role_for(op) or "admin"
        found = TokenStore(self.services.state_dir).check(token)
        if not role_allows(found.role, needed):
            raise AccessError(
                f"{_article(found.role)} {found.role} token may not {op.replace('_', ' ')}",
                where=f"token {found.id}",
                hint=f"this needs the {needed} role",
            )
        return f"token {found.id} ({found.role})"

    # ---------------------------------------------------------------- secrets and tokens
    async def op_secrets_set(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        name = str(args["name"])
        Vault(self.services.state_dir).set(name, base64.b64decode(str(args["value_b64"])))
        return {"set": name}

    async def op_secrets_ls(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        return [e._asdict() for e in Vault(self.services.state_dir).entries()]

    async def op_secrets_rm(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        Vault(self.services.state_dir).remove(str(args["name"]))
        return {"removed": args["name"]}

    async def op_token_create(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        token, secret = TokenStore(self.services.state_dir).create(
            str(args["role"]), name=str(args.get("name", "")), expires_in=args.get("expires_in")
        )
        return {**token._asdict(), "token": secret}

    async def op_token_ls(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        return [t._asdict() for t in TokenStore(self.services.state_dir).list()]

    async def op_token_revoke(self, args: dict[str, Any], _w: asyncio.StreamWriter | None) -> Any:
        TokenStore(self.services.state_dir).revoke(str(args["id"]))
        return {"revoked": args["id"]}

    async def shutdown(self) -> None:
        """Stop supervising: bots keep running only if the daemon is killed; a clean shutdown
        stops them (SIGTERM, grace, SIGKILL)."""
        await asyncio.gather(*(self._halt(n) for n in list(self.instances)), return_exceptions=True)
