"""``clawpen up``: check everything, build, apply all or nothing, then wait for the changed bots.

1. **Load and refuse early**: the spec loads and validates (``ConfigError``); an empty spec is
   refused unless ``allow_empty`` (it would remove every bot; ``clawpen down`` does that). What
   changes, and why, is :func:`clawpen.daemon.release.release_plan` (pure); ``dry_run`` returns
   it after the pre-check, having changed nothing.
2. **Pre-check** (:mod:`clawpen.daemon.precheck`): every bot that ``up`` would start is checked
   against the host (secrets, mount sources, CPUs, memory, free ports, restart policy, plan);
   every problem is reported together and nothing changes. ``dry_run`` checks the same.
3. **Build** (:func:`clawpen.daemon.build_steps.run_builds`): a failed build changes nothing.
4. **Apply**: the new instances are built first (which can raise) and only then is a release
   recorded, removed and changed bots halted, and the new instances started.
5. **Wait** (``wait``, what the CLI asks for unless ``--detach``): until every created,
   recreated or started bot runs (for :data:`SETTLE` seconds, or until its health check passes
   when it has one), or has come to rest for good (``failed``, ``crashloop``, ``stopped`` with a
   non-zero exit), or its time is up (``wait_timeout``, or longer for a health check's
   ``start_period`` plus one ``interval``). The reply's ``wait`` says, per instance, whether it
   came up and why not: its state, last exit, last event and the last lines of its stderr.
   With ``progress``, the client gets items: ``{"wait": "BOT: why"}`` as each instance is
   judged, and ``{"waiting": {BOT: state}}`` (``starting``, ``running, health starting (last
   check: connection refused, 3 s ago)``) at once, whenever a bot's state or health check result
   changes, and every :data:`HEARTBEAT` seconds.
6. **Automatic rollback** (``[deploy] auto_rollback``): the wait lasts ``health_window``
   instead, and a changed bot that is not up then makes the daemon roll back to the release
   before (:mod:`clawpen.daemon.auto_rollback`); with ``--detach`` a daemon task
   watches the window. A rollback is never rolled back itself.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.daemon import ops_snapshots, precheck, rollback_data, rpc
from clawpen.daemon.build_steps import build_root, cache_key
from clawpen.daemon.contents import bot_contents, rollback_warnings
from clawpen.daemon.release import ACTIONS, Current, ReleasePlan, Wanted, release_plan
from clawpen.daemon.release_diff import bot_policy as _policy
from clawpen.daemon.runtime import Instance
from clawpen.daemon.store import policy_hash
from clawpen.errors import ClawpenError, ConfigError, UsageError
from clawpen.host import Notes
from clawpen.sandbox.users import allocate
from clawpen.spec.loader import LoadedSpec, load_spec
from clawpen.supervisor.states import BotState

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from clawpen.daemon.botlocks import BotLocks
    from clawpen.daemon.runtime import Services
    from clawpen.daemon.store import Store
    from clawpen.spec.models import Bot, Spec


class Daemon(Notes, Protocol):
    """What `up` uses of the daemon (``daemon/server.py`` ``Daemon``, which calls :func:`op_up`)."""

    @property
    def store(self) -> Store: ...
    @property
    def services(self) -> Services: ...
    @property
    def up_lock(self) -> asyncio.Lock: ...
    @property
    def instances(self) -> dict[str, list[Instance]]: ...
    @property
    def spec_listeners(self) -> list[Callable[[Spec], None]]: ...
    @property
    def deploy_watches(self) -> set[asyncio.Task[None]]: ...
    @property
    def bot_locks(self) -> BotLocks: ...  # rollback --with-data holds them (daemon/rollback_data.py)
    @property
    def snapshot_locks(self) -> BotLocks: ...  # [snapshots] before_up (ops_snapshots.before_up)
    def replicas(self, name: str) -> list[Instance]: ...
    def bot_from_row(self, policy: dict[str, Any], name: str = "") -> tuple[Bot, str]: ...
    def current_spec(self) -> Spec | None: ...
    async def halt(self, name: str) -> None: ...


S = BotState
SETTLE = 0.5  # seconds a bot without a health check must stay running to count as up
DEFAULT_WAIT_TIMEOUT = 60.0
MAX_WAIT_TIMEOUT = 24 * 3600.0
HEARTBEAT = 5.0
POLL = 0.1
STDERR_LINES = 3


def wait_timeout(args: dict[str, Any]) -> float:
    """The ``wait_timeout`` argument, checked (a UsageError before anything changes)."""
    raw = args.get("wait_timeout")
    if raw is None:
        return DEFAULT_WAIT_TIMEOUT
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_WAIT_TIMEOUT):
        raise UsageError(
            f"wait timeout {raw!r} is not a number of seconds from 0 to {MAX_WAIT_TIMEOUT:g}",
            where="clawpen up --wait-timeout",
            hint=f"e.g. --wait-timeout 120 (default {DEFAULT_WAIT_TIMEOUT:g})",
        )
    return value


def _refuse_empty(daemon: Daemon, path: Path) -> None:
    current = sorted(daemon.store.bots())
    running = f" ({len(current)} now: {', '.join(current)})" if current else ""
    raise ConfigError(
        f"the spec names no bots; `up` would remove every bot{running}",
        where=str(path),
        hint="add a [bots.NAME] table; to remove every bot run `clawpen down`, or pass --allow-empty",
    )


def current_bots(daemon: Daemon, names: set[str] | None = None) -> dict[str, Current]:
    """The bots the daemon has (only ``names``, when given), for :func:`release_plan`."""
    out: dict[str, Current] = {}
    for name, row in daemon.store.bots().items():
        if names is None or name in names:
            insts = daemon.replicas(name)
            states = tuple(str(i.machine.state) for i in insts)
            out[name] = Current(row.spec_hash, row.policy, states, tuple(i.supervised for i in insts))
    return out


def wanted_bots(loaded: LoadedSpec, names: set[str]) -> dict[str, Wanted]:
    """The bots ``names`` of the spec, for :func:`release_plan`."""
    out: dict[str, Wanted] = {}
    for name in names:
        policy = _policy(loaded, name)
        out[name] = Wanted(policy_hash(policy), policy, loaded.spec.bots[name].replicas)
    return out


def classify(daemon: Daemon, loaded: LoadedSpec, wanted: set[str], partial: bool) -> ReleasePlan:
    """Which bots ``up`` creates, recreates (changed), starts, leaves, removes, and why (a
    partial ``up BOT...`` compares only the bots it names, and removes none)."""
    return release_plan(current_bots(daemon, wanted if partial else None), wanted_bots(loaded, wanted))


def released_ports(daemon: Daemon, names: set[str]) -> set[tuple[str, int]]:
    """The published host ports that bots ``names`` hold now (they are kept by the same bot, or
    let go of before anything starts: removed and changed bots are halted first)."""
    from clawpen.spec.publish import parse_publish

    rows = daemon.store.bots()
    held: set[tuple[str, int]] = set()
    for name in names:
        row = rows.get(name)
        if row is None or not any(i.supervised for i in daemon.replicas(name)):
            continue
        try:
            bot, _base = daemon.bot_from_row(row.policy)
            entries = [parse_publish(raw) for raw in bot.network.publish]
        except (ValueError, ClawpenError):
            continue
        held.update((e.host_ip, e.host_port) for e in entries)
    return held


def check(daemon: Daemon, loaded: LoadedSpec, plan: ReleasePlan) -> None:
    """Pre-check every bot ``up`` may start (raises one ConfigError naming every problem)."""
    bots = loaded.spec.bots
    # a bot with a build counts as changed: its stored spec has the build's mount, this one not yet
    names = sorted(
        {*plan.names("create"), *plan.names("recreate"), *plan.names("start")}
        | {n for n in plan.names("unchanged") if bots[n].build is not None}
    )
    svc = daemon.services
    needs_vault = any(bots[n].secrets for n in names)
    problems = precheck.check_bots(
        [(n, bots[n]) for n in names],
        str(loaded.base_dir),
        host=precheck.HostLimits(svc.host, precheck.host_memory()),
        seccomp=svc.seccomp,
        vault_names=precheck.vault_names(svc.state_dir) if needs_vault else (),
        state_dir=svc.state_dir,
        spec_file=loaded.path.resolve(),
        released=released_ports(daemon, {c.bot for c in plan.changes}),  # wanted and removed
    )
    precheck.refuse(problems, loaded.path)


async def op_up(daemon: Daemon, args: dict[str, Any], writer: Any) -> dict[str, Any]:
    path = Path(str(args["file"]))
    wait_timeout(args)
    loaded = load_spec(path)  # raises ConfigError: nothing applied
    return await apply_spec(daemon, loaded, args, writer)


async def apply_spec(
    daemon: Daemon, loaded: LoadedSpec, args: dict[str, Any], writer: Any, *, rollback_of: int | None = None
) -> dict[str, Any]:
    """Apply a loaded spec as :func:`op_up` does (``args`` as ``up``'s); ``rollback_of``: the
    release whose spec text this is (``clawpen rollback``), recorded with the new release."""
    path = loaded.path
    timeout = wait_timeout(args)
    partial = bool(args.get("bots"))
    wanted = set(args.get("bots") or loaded.spec.bots)
    missing = wanted - set(loaded.spec.bots)
    if missing:
        raise UsageError(
            f"no bot named {', '.join(sorted(missing))} in {path}",
            where=str(path),
            hint=f"bots in the file: {', '.join(sorted(loaded.spec.bots)) or 'none'}",
        )
    if not partial and not loaded.spec.bots and not args.get("allow_empty"):
        _refuse_empty(daemon, path)
    async with daemon.up_lock:
        check(daemon, loaded, classify(daemon, loaded, wanted, partial))
        from clawpen.daemon.build_steps import run_builds  # build steps next: a failure changes nothing

        loaded = await run_builds(daemon, loaded, wanted, writer, args)
        plan = classify(daemon, loaded, wanted, partial)
        data = await rollback_data.find(daemon, loaded, plan, args, rollback_of)  # --with-data; raises
        if args.get("dry_run"):
            origin = {"rollback_of": rollback_of} if rollback_of is not None else {}
            return {"dry_run": True, **plan.as_dict(), **origin, **rollback_data.dry(data)}
        await ops_snapshots.before_up(daemon, loaded, plan, args)  # [snapshots] before_up; raises
        async with rollback_data.restored(daemon, data) as restored:  # snapshot, stop, restore
            result = await _apply(daemon, loaded, plan, str(args.get("who", "root")), rollback_of)
        result |= restored
    changed = plan.names("create") + plan.names("recreate") + plan.names("start")
    insts = [i for n in changed for i in daemon.replicas(n)]
    deploy = loaded.spec.deploy
    auto = deploy.auto_rollback and rollback_of is None and bool(insts)  # a rollback never rolls back
    if args.get("wait"):
        stream = writer if bool(args.get("progress")) else None
        window = deploy.health_window if auto else timeout
        result["wait"] = await wait_for(daemon, insts, window, stream)
        if auto and not result["wait"]["ok"]:
            from clawpen.daemon.auto_rollback import roll_back

            waited = result["wait"]
            result["auto_rollback"] = await roll_back(
                daemon, result["release"], waited, args, writer, apply=apply_spec
            )
    elif auto:
        from clawpen.daemon.auto_rollback import watch_window

        watch_window(daemon, result["release"], insts, deploy.health_window, wait=wait_for, apply=apply_spec)
    return result


async def _apply(
    daemon: Daemon, loaded: LoadedSpec, plan: ReleasePlan, who: str, rollback_of: int | None
) -> dict[str, Any]:
    """Build the new instances first (that can fail: then nothing has changed), then record the
    release, halt the removed and changed bots and start the new instances."""
    starting = plan.names("create") + plan.names("recreate") + plan.names("start")
    bots = loaded.spec.bots
    base = str(loaded.base_dir)
    fresh = {
        n: [Instance(daemon.services, n, i, bots[n], base) for i in range(bots[n].replicas)] for n in starting
    }
    store = daemon.store
    previous = store.releases(1)
    before = previous[0]["spec_hash"] if previous else None
    summary = "; ".join(
        f"{k} {', '.join(names)}" for k in ACTIONS if k != "unchanged" and (names := plan.names(k))
    )
    summary = summary or "no change"
    if rollback_of is not None:
        summary = f"rollback of release {rollback_of}: {summary}"
    loop = asyncio.get_running_loop()
    contents = await loop.run_in_executor(None, _contents, daemon, loaded)
    # every new bot's uid in one change of users.json, not one locked write per bot as it starts
    await loop.run_in_executor(None, allocate, starting, daemon.services.state_dir)
    release = store.add_release(who, str(loaded.path.resolve()), loaded.text, summary, rollback_of)
    store.add_release_bots(release, contents)
    for name in plan.names("remove"):
        await daemon.halt(name)
        store.remove_bot(name)
        daemon.note("remove", f"removed by release {release}", name)
    for name in plan.names("recreate"):
        await daemon.halt(name)
    for name in starting:
        store.put_bot(name, _policy(loaded, name), "running", release)
        daemon.instances[name] = fresh[name]
        for inst in fresh[name]:
            inst.start()
    daemon.note("release", f"release {release}: {summary}")
    for listener in daemon.spec_listeners:
        listener(loaded.spec)
    after = store.releases(1)[0]["spec_hash"]
    out = {"release": release, "before": before, "after": after, **plan.as_dict()}
    if rollback_of is not None:
        got = {n: c for n, (_h, c) in contents.items()}
        out |= {
            "rollback_of": rollback_of,
            "warnings": rollback_warnings(rollback_of, store.release_bots(rollback_of), got),
        }
    return out


def _contents(daemon: Daemon, loaded: LoadedSpec) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per bot of the release: its policy hash and what it runs (code folders, build output)."""
    root = build_root(daemon.services.state_dir)
    base = str(loaded.base_dir)
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, bot in loaded.spec.bots.items():
        key = None
        if bot.build is not None:
            try:
                key = cache_key(bot.build, base)
            except OSError:  # an input went missing: recorded as an unknown build
                key = None
        out[name] = (policy_hash(_policy(loaded, name)), bot_contents(bot, base, root / name, key))
    return out


# ---------------------------------------------------------------------------------- waiting
def judge(inst: Instance, now: float, settle: float = SETTLE) -> tuple[bool | None, str]:
    """``(True, why)`` up, ``(False, why)`` will not come up by itself, ``(None, state)`` not yet."""
    state = inst.machine.state
    if state is S.RUNNING:
        if not inst.supervised:
            return False, "its supervisor ended (see `clawpen events`)"
        if inst.bot.health is not None:
            if inst.health == "healthy":
                return True, "running, healthy"
            return None, f"running, {health_note(inst, now)}"
        since = inst.machine.since
        return (True, "running") if since is not None and now - since >= settle else (None, "running")
    if state is S.SCHEDULED_OFF:
        return True, "outside its active window"
    if state is S.STANDBY:
        return True, "standby (another host is its primary)"
    last = inst.last
    if state is S.STOPPED and last is not None and last.reason == "exited" and last.exit_code == 0:
        return True, "completed (exit 0)"
    if state in (S.STOPPED, S.CRASHLOOP, S.FAILED):
        return False, str(state)
    return None, str(state)


def health_note(inst: Instance, now: float) -> str:
    """``health starting (last check: connection refused, 3 s ago)``: the check's state and result."""
    state = inst.health or "starting"
    if inst.health_detail is None:
        return f"health {state} (not checked yet)"
    ago = max(0.0, now - (inst.health_at if inst.health_at is not None else now))
    return f"health {state} (last check: {inst.health_detail}, {ago:.0f} s ago)"


def _report(daemon: Daemon, inst: Instance, ok: bool, why: str) -> dict[str, Any]:
    """One instance's outcome; for one that did not come up: its last exit, event and stderr."""
    row: dict[str, Any] = {
        "bot": inst.label,
        "replica": inst.replica,
        "ok": ok,
        "state": str(inst.machine.state),
        "why": why,
    }
    if ok:
        return row
    if inst.last is not None:
        row["exit_code"] = inst.last.exit_code
    events = [e for e in daemon.store.events(bot=inst.name, limit=20) if e.replica in (None, inst.replica)]
    if events:
        row["last_event"] = events[-1].reason
    try:
        from clawpen.logs.query import read_logs

        logs = read_logs(daemon.services.logs_dir, inst.log_name, tail=STDERR_LINES, streams=("err",))
        row["stderr"] = [r.text for r in logs]
    except (OSError, ValueError, ClawpenError):
        row["stderr"] = []
    return row


async def _send(writer: Any, value: dict[str, Any]) -> bool:
    """Send a progress item; False when the client has gone."""
    try:
        writer.write(rpc.item(value))
        await writer.drain()
    except (ConnectionError, RuntimeError):
        return False
    return True


async def wait_for(daemon: Daemon, insts: list[Instance], timeout: float, stream: Any) -> dict[str, Any]:
    """Wait until each instance is up or will not come up (see the module's docs); progress
    items go to ``stream`` (the client's connection, or None)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadlines: dict[Instance, float] = {}
    for inst in insts:
        health = inst.bot.health
        own = health.start_period + health.interval + health.timeout if health is not None else 0.0
        deadlines[inst] = start + max(timeout, own)
    results: list[dict[str, Any]] = []
    beat = -math.inf
    seen: dict[Instance, tuple[BotState, str | None, float | None]] = {}
    while deadlines:
        now = daemon.services.clock()
        for inst in list(deadlines):
            ok, why = judge(inst, now)
            if daemon.instances.get(inst.name) is None or inst not in daemon.instances[inst.name]:
                ok, why = False, "removed or replaced while `up` waited"
            elif ok is None and loop.time() >= deadlines[inst]:
                ok, why = False, f"not up after {deadlines[inst] - start:g} s ({why})"
            if ok is None:
                continue
            del deadlines[inst]
            results.append(_report(daemon, inst, ok, why))
            if stream is not None and not await _send(stream, {"wait": f"{inst.label}: {why}"}):
                stream = None
        if not deadlines:
            break
        marks = {i: (i.machine.state, i.health, i.health_at) for i in deadlines}
        if stream is not None and (marks != seen or loop.time() - beat >= HEARTBEAT):
            beat, seen = loop.time(), marks
            waiting = {i.label: judge(i, now)[1] for i in deadlines}
            if not await _send(stream, {"waiting": waiting}):
                stream = None
        await asyncio.sleep(POLL)
    results.sort(key=lambda r: (r["bot"], r["replica"]))
    return {"ok": all(r["ok"] for r in results), "timeout": timeout, "bots": results}
