"""Throwaway copies of a bot for ``clawpen validate``'s failure scenarios (kill, freeze).

``validate_copy_start`` starts ``BOT_validate``: the bot's stored policy (same sandbox, limits,
egress, health check, restart policy) under its own name, hence its own uid, cgroup and network
link, with one replica, no schedule and **no published ports** (the live bot holds them; the
health check runs inside the copy's own namespace, so it needs none). Its workspace is a copy of
the live one (``workspace = "copy"``, the default: regular files, folders and symlinks; sockets
and pipes are left out) or an empty folder (``"empty"``), in a temporary folder
``/var/tmp/clawpen-validate-*`` handed to the copy's uid. The copy runs in the daemon like any
instance (events and metrics under its name, its log in ``<state>/validate/logs``, kept
for a look afterwards) but is no stored bot: ``ps``/``status`` do not
list it; ``validate_copy_status`` shows it.

``validate_copy_remove`` stops it and removes everything (sandbox, cgroup, link, temporary
folder). A copy still there after its deadline (the request's ``deadline``, which validate sets to
its scenarios' total time + a margin; else the daemon's own figure of it) is removed the same way,
with an event: its validate was killed or is stuck. A record
``<state>/validate/copies/<copy>.json`` names the temporary folder; a daemon start removes what
a killed or interrupted validate left (:func:`sweep_copies`), the daemon having died with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field

from clawpen.daemon.copy_deadline import copy_deadline
from clawpen.daemon.ops_bots import InstanceStatus
from clawpen.daemon.runtime import Instance, Services
from clawpen.daemon.store import Store
from clawpen.daemon.tiers import stop_stored, stored_tier
from clawpen.errors import UsageError
from clawpen.ops import Call, Contract, Operation, Reply, Request
from clawpen.paths import cgroup_scope
from clawpen.spec.models import Bot


class Daemon(Protocol):
    """What the validate copies need of the daemon (``daemon.server.Daemon``)."""

    @property
    def services(self) -> Services: ...
    @property
    def store(self) -> Store: ...
    @property
    def instances(self) -> dict[str, list[Instance]]: ...
    def note(self, kind: str, reason: str, bot: str | None = None, replica: int | None = None) -> None: ...
    def known_bot(self, name: str) -> str: ...
    def bot_from_row(self, policy: dict[str, Any], name: str = "") -> tuple[Bot, str]: ...
    async def halt(self, name: str) -> None: ...


SUFFIX = "_validate"
MAX_DEADLINE = 86400.0  # a day: a copy never outlives it
TEMP_ROOT = "/var/tmp"
Name = Annotated[str, Field(max_length=200)]


class CopyRequest(Request):
    bot: Name
    workspace: Literal["copy", "empty"] = "copy"
    # seconds after which the daemon removes the copy if no validate removed it (None: the
    # scenarios' total for the bot's spec + a margin, :func:`clawpen.daemon.copy_deadline.copy_deadline`)
    deadline: float | None = Field(None, gt=0, le=MAX_DEADLINE)


class CopyName(Request):
    copy_: Name = Field(alias="copy")


class CopyStarted(Reply):
    bot: str
    name: str  # the copy's name, BOT_validate
    workspace: str | None  # the copy's temporary workspace (None: the bot has none)
    workspace_from: str | None  # what it was copied from ("empty": nothing)


class CopyStatus(Reply):
    name: str  # the copy's name, BOT_validate
    instances: list[InstanceStatus]
    sandbox_pid: int | None
    spec: dict[str, Any]


class CopyRemoved(Reply):
    name: str  # the copy's name, BOT_validate
    removed: bool


COPY_START = Contract(
    "validate_copy_start", "admin", CopyRequest, CopyStarted,
    "start a throwaway copy of a bot (no published ports) for validate's failure scenarios",
)  # fmt: skip
COPY_STATUS = Contract(
    "validate_copy_status", "admin", CopyName, CopyStatus, "a validate copy: state, health, sandbox pid"
)
COPY_REMOVE = Contract(
    "validate_copy_remove", "admin", CopyName, CopyRemoved, "stop a validate copy and remove everything"
)
CONTRACTS = (COPY_START, COPY_STATUS, COPY_REMOVE)


class _Copy(Instance):
    """A copy's instance: its log is ``<state>/validate/logs/<bot>.log`` (log names are bot names)."""

    @property
    def log_name(self) -> str:
        return self.name.removesuffix(SUFFIX)


def _records(state_dir: Path) -> Path:
    return state_dir / "validate" / "copies"


def _copy_name(name: str) -> str:
    if not name.endswith(SUFFIX):
        raise UsageError(f"{name!r} is not a validate copy", where="validate", hint=f"copies end in {SUFFIX}")
    return name


def _skip_special(folder: str, names: list[str]) -> set[str]:
    """copytree's ignore: leave out sockets, pipes and devices (copying a pipe would block)."""
    out = set()
    for name in names:
        with contextlib.suppress(OSError):
            mode = os.lstat(os.path.join(folder, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                out.add(name)
    return out


def _make_workspace(source: str | None, mode: str, prefix: str) -> tuple[str, str]:
    """(temporary folder, workspace inside it): a copy of ``source`` or an empty folder."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=TEMP_ROOT)
    os.chmod(tmp, 0o711)  # noqa: S103 - root's folder, only traversable: the workspace inside is the bot's
    workspace = os.path.join(tmp, "workspace")
    try:
        if mode == "copy" and source and os.path.isdir(source):
            shutil.copytree(source, workspace, symlinks=True, ignore=_skip_special)
        else:
            os.mkdir(workspace, 0o700)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, workspace


def _remove_files(daemon: Daemon, copy: str, record: Path) -> None:
    """The copy's temporary folder, its record, its pipes and status file."""
    with contextlib.suppress(OSError, ValueError):
        tmp = str(json.loads(record.read_text())["tmp"])
        if tmp.startswith(f"{TEMP_ROOT}/clawpen-validate-"):
            shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        record.unlink()
    for kind in ("out", "err", "status"):
        with contextlib.suppress(OSError):
            (daemon.services.run_dir / f"{copy}.0.{kind}").unlink()


def sweep_copies(daemon: Daemon) -> None:
    """At a daemon start: kill and remove the copies an interrupted validate left."""
    folder = _records(daemon.services.state_dir)
    names = {r.bot for r in daemon.store.instances() if r.bot.endswith(SUFFIX)}
    if folder.is_dir():
        names |= {p.stem for p in folder.glob(f"*{SUFFIX}.json")}
    for copy in sorted(names):
        tier = "sandbox"
        record = folder / f"{copy}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            tier = stored_tier({"spec": json.loads(record.read_text())["spec"]})
        rows = daemon.store.instances(copy)
        host = daemon.services.cgroups()
        for row in rows:
            stop_stored(daemon.services.tiers, daemon.services.run_dir, tier, row, host)
            daemon.store.drop_instance(copy, row.replica)
        if host is not None:  # also a copy killed while it started (no pid saved)
            group = f"{cgroup_scope(daemon.services.state_dir)}{copy}.0"
            if group in host.names():
                with contextlib.suppress(Exception):
                    host.attach(group).remove()
        if daemon.services.network is not None:
            with contextlib.suppress(Exception):
                daemon.services.network.detach(copy, 0)
        _remove_files(daemon, copy, record)
        daemon.note(
            "validate",
            f"removed a validate copy left by an interrupted validate ({len(rows)} sandbox(es) stopped)",
            copy,
        )


def operations(daemon: Daemon) -> list[Operation[Any]]:
    expiries: dict[str, asyncio.Task[None]] = {}  # copy -> its deadline's timer

    async def drop(copy: str) -> bool:
        """Stop the copy and remove everything; whether it was there."""
        found = copy in daemon.instances
        await daemon.halt(copy)
        for row in daemon.store.instances(copy):
            daemon.store.drop_instance(copy, row.replica)
        _remove_files(daemon, copy, _records(daemon.services.state_dir) / f"{copy}.json")
        return found

    async def expire(copy: str, inst: Instance, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if daemon.instances.get(copy) != [inst]:
            return
        expiries.pop(copy, None)
        await drop(copy)
        daemon.note(
            "validate",
            f"removed the throwaway validate copy after its deadline ({seconds:.0f}s): the validate "
            "that started it did not remove it (killed or stuck)",
            copy,
        )

    async def start(req: CopyRequest, _call: Call) -> dict[str, Any]:
        name = daemon.known_bot(req.bot)
        copy = f"{name}{SUFFIX}"
        if daemon.instances.get(copy):
            raise UsageError(
                f"a validate copy of {name} is running already",
                where="clawpen validate",
                hint="wait for the other validate to end (a daemon restart removes a leftover copy)",
            )
        policy = daemon.store.bots()[name].policy
        bot, base_dir = daemon.bot_from_row(policy, name)
        source = bot.to_policy(name, base_dir).workspace if bot.workspace else None
        tmp = workspace = None
        if source is not None:
            tmp, workspace = await asyncio.to_thread(
                _make_workspace, source, req.workspace, f"clawpen-validate-{name}-"
            )
        records = _records(daemon.services.state_dir)
        records.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = records / f"{copy}.json"
        record.write_text(json.dumps({"bot": name, "tmp": tmp, "spec": policy["spec"]}))
        net = bot.network.model_copy(update={"publish": []})
        # no ha: a copy is never a primary (it would wait in standby, or take a term)
        # no warm spare: a throwaway copy gains nothing from a fast restart, and a daemon killed
        # while it built one would leave it behind
        restart = bot.restart.model_copy(update={"warm": False})
        update: dict[str, Any] = {
            "network": net,
            "replicas": 1,
            "schedule": None,
            "ha": None,
            "restart": restart,
        }
        if workspace is not None:
            update |= {"workspace": workspace, "workspace_adopt": True}
        svc = daemon.services._replace(logs_dir=daemon.services.state_dir / "validate" / "logs")
        inst = _Copy(svc, copy, 0, bot.model_copy(update=update), base_dir)
        daemon.instances[copy] = [inst]
        inst.start()
        seconds = req.deadline if req.deadline is not None else copy_deadline(policy["spec"])
        expiries[copy] = asyncio.get_running_loop().create_task(
            expire(copy, inst, seconds), name=f"validate copy {copy} deadline"
        )
        daemon.note(
            "validate",
            f"started a throwaway copy of {name} for validate (removed after {seconds:.0f}s at the latest)",
            copy,
        )
        return {
            "bot": name,
            "name": copy,
            "workspace": workspace,
            "workspace_from": (source if req.workspace == "copy" else "empty") if source else None,
        }

    async def status(req: CopyName, _call: Call) -> dict[str, Any]:
        copy = _copy_name(req.copy_)
        insts = daemon.instances.get(copy)
        if not insts:
            raise UsageError(f"no validate copy named {copy}", where="clawpen validate")
        sandbox = insts[0].sandbox
        return {
            "name": copy,
            "instances": [i.status() for i in insts],
            "sandbox_pid": sandbox.sandbox_pid if sandbox is not None else None,
            "spec": insts[0].bot.model_dump(mode="json", by_alias=True, exclude_none=True),
        }

    async def remove(req: CopyName, _call: Call) -> dict[str, Any]:
        copy = _copy_name(req.copy_)
        timer = expiries.pop(copy, None)
        if timer is not None:
            timer.cancel()
        found = await drop(copy)
        if found:
            daemon.note("validate", "removed the throwaway validate copy", copy)
        return {"name": copy, "removed": found}

    return [COPY_START.bind(start), COPY_STATUS.bind(status), COPY_REMOVE.bind(remove)]
