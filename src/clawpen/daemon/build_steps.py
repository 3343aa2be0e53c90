"""Build steps: a bot's ``[bots.NAME.build]`` commands, run by the daemon during ``clawpen up``.

Called from :meth:`clawpen.daemon.server.Daemon.op_up` before anything changes. For each bot
with a ``build`` section:

1. the cache key is the hash of the steps, env, egress, memory, mount and the content of the
   ``inputs`` files; ``<state>-build/<bot>/<key>`` exists -> cached, nothing runs;
2. otherwise every step runs, one after the other, in its own sandbox built from the bot's
   policy (its uid, limits, read-only mounts; no workspace, no secrets; the sandbox tier, also
   for a container bot, whose container gets the output as a read-only bind) with the build's own
   egress allowlist (a gateway link of its own, replica ``BUILD_REPLICA``), writing into a
   staging folder mounted read-write at ``mount`` (``/opt/bot``) and a persistent cache folder
   at ``/build-cache``; each output line is shown (``clawpen up`` progress, ``build.log``);
3. on success the staging folder is renamed to ``<key>`` (atomic) and the bot is launched with
   it mounted read-only at ``mount`` (an extra ``filesystem.ro`` entry, so it is part of the
   stored policy and survives a daemon restart); on failure the staging folder is removed and
   ``clawpen up`` fails with the step, its exit and the last output lines: no bot is touched.

The build root sits next to the state folder (``<state>-build``, mode 0711), because the
bot's uid must be able to reach what it mounts and the state folder is closed (0700).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from clawpen.daemon.build_watch import Ticks, run_step, step_label
from clawpen.daemon.contents import META, tree_hash
from clawpen.errors import ConfigError, HostError
from clawpen.spec.build import CACHE_MOUNT, BuildSpec
from clawpen.spec.models import Bot, Filesystem
from clawpen.spec.policy import BotPolicy

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from clawpen.sandbox.tier import Tier

BUILD_TIER = "sandbox"  # a container bot's steps too: on the host, their output bound into the image
BUILD_REPLICA = 999  # the link key of a bot's build sandbox (replicas are 0..63)
KEEP_BUILDS = 3  # per bot, the most recently used ones (``keep``); the running bot's is never removed

Progress = Callable[[str], None]


class BuildResult(NamedTuple):
    bot: str
    key: str
    path: Path
    cached: bool
    seconds: float


def build_root(state: Path) -> Path:
    return Path(f"{state}-build")


def _digest_path(path: Path, h: Any) -> None:
    if path.is_dir():
        for child in sorted(path.iterdir()):
            h.update(child.name.encode() + b"\0")
            _digest_path(child, h)
    elif path.exists():
        h.update(hashlib.sha256(path.read_bytes()).digest())


def cache_key(build: BuildSpec, base_dir: str) -> str:
    """The hash of everything a build's output depends on."""
    h = hashlib.sha256()
    fields = build.model_dump(mode="json", exclude={"inputs", "timeout", "stall", "cache", "keep"})
    h.update(json.dumps(fields, sort_keys=True).encode())
    for raw in build.inputs:
        h.update(raw.encode() + b"\0")
        _digest_path(Path(base_dir, os.path.expanduser(raw)), h)
    return h.hexdigest()[:20]


def _mkdir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def step_policy(name: str, bot: Bot, base_dir: str, staging: Path, cache: Path) -> BotPolicy:
    """The bot's policy turned into its build's: build egress, rw output and cache, no workspace,
    no secrets, no published ports; always a sandbox-tier policy (``container=None``): a container
    bot's steps run on the host in the sandbox tier, and the bot gets their output as a read-only
    bind (so it must run on the image's userland)."""
    build = bot.build
    if build is None:
        raise ConfigError(f"bot {name} has no build section", where=f"bots.{name}.build")
    pol = bot.to_policy(name, base_dir)
    env = {**dict(pol.env), "HOME": f"{CACHE_MOUNT}/home", **build.env}
    return pol._replace(
        container=None,
        workspace=None,
        env=tuple(env.items()),
        memory=build.memory or pol.memory,
        tmp=max(pol.tmp, 512 << 20),
        disk=None,
        rw=(*pol.rw, (str(staging), build.mount), (str(cache), CACHE_MOUNT)),
        egress=tuple(build.egress),
        allow_private=tuple(build.allow_private),
        publish=(),
        expose=False,
        expose_from=(),
        secrets=(),
        secret_env=(),
    )


def run_build(  # noqa: PLR0917
    svc: Any,
    name: str,
    bot: Bot,
    base_dir: str,
    progress: Progress,
    running: frozenset[str] = frozenset(),
    ticks: Ticks | None = None,
    note: Progress | None = None,
) -> BuildResult:
    """Build ``bot`` (blocking), or find it in the cache (``running``: the outputs bots run now,
    never pruned). The output used is marked as used now (its mtime), so pruning keeps it.
    ``progress`` gets each output line, ``ticks`` a progress item every few seconds of a step,
    ``note`` a line at each step's start and end (the ``build`` events)."""
    from clawpen.daemon.tiers import tier_for
    from clawpen.sandbox.users import identity_for
    from clawpen.sandbox.workspace import prepare_workspace

    build = bot.build
    if build is None:
        raise ConfigError(f"bot {name} has no build section", where=f"bots.{name}.build")
    tier = tier_for(svc.tiers, BUILD_TIER, name)
    key = cache_key(build, base_dir)
    root = _mkdir(build_root(svc.state_dir), 0o711)
    bot_dir = _mkdir(root / name, 0o711)
    final = bot_dir / key
    if final.is_dir():
        _touch(final)
        _prune(bot_dir, build.keep, {final.name, *running})
        progress(f"build {name}: cached ({key})")
        return BuildResult(name, key, final, True, 0.0)
    ident = identity_for(name, svc.state_dir)
    cache = bot_dir / "cache"
    if build.cache:
        cache = Path(os.path.realpath(os.path.join(base_dir, os.path.expanduser(build.cache))))
    prepare_workspace(  # created for the bot's uid, or an existing folder handed over when adopted
        str(cache),
        ident.uid,
        ident.gid,
        adopt=build.cache_adopt,
        what="build cache",
        opt_in="set cache_adopt = true in the bot's [build]",
    )
    _mkdir(cache / "home", 0o700, ident.uid, ident.gid)
    network = svc.network
    if build.egress and network is None:
        raise HostError(
            f"the build of {name} needs egress ({', '.join(build.egress)}), but the daemon has no network",
            where=f"bots.{name}.build.egress",
            hint="clawpen doctor (network); or remove egress if the steps need no network",
        )
    staging = _mkdir(bot_dir / f".{key}.{os.getpid()}.tmp", 0o755, ident.uid, ident.gid)
    policy = step_policy(name, bot, base_dir, staging, cache)
    started = time.monotonic()
    link = None
    try:
        if policy.egress and network is not None:
            link = network.attach(name, BUILD_REPLICA, policy)
        with open(bot_dir / f"{key}.log", "w") as log:
            for i, argv in enumerate(build.steps, 1):
                _step(
                    svc,
                    tier,
                    policy,
                    build,
                    (i, argv),
                    log,
                    progress,
                    ticks or _no_tick,
                    note or _no_note,
                    started,
                    link,
                    bot_dir / f"{key}.log",
                )
        meta = {"key": key, "built_at": time.time(), "output_hash": _hash_output(staging)}
        (staging / META).write_text(json.dumps(meta) + "\n")
        os.rename(staging, final)
    finally:
        if link is not None:
            try:
                network.detach(name, BUILD_REPLICA)
            except Exception:  # the build's result stands; the leftover link is removed next time
                _log.exception("build of %s: removing its network link failed", name)
        shutil.rmtree(staging, ignore_errors=True)
    _prune(bot_dir, build.keep, {final.name, *running})
    seconds = time.monotonic() - started
    progress(f"build {name}: done in {seconds:.1f} s ({key})")
    return BuildResult(name, key, final, False, seconds)


def _no_tick(info: dict[str, Any]) -> None:
    return None


def _no_note(text: str) -> None:
    return None


def _step(  # noqa: PLR0917
    svc: Any,
    tier: Tier,
    policy: BotPolicy,
    build: BuildSpec,
    step: tuple[int, list[str]],
    log: Any,
    progress: Progress,
    ticks: Ticks,
    note: Progress,
    started: float,
    link: Any,
    log_path: Path,
) -> None:
    """Run step ``step`` (its number from 1, its argv) of ``policy.name``'s build; raises when it fails."""
    i, argv = step
    name, steps = policy.name, len(build.steps)
    progress(f"build {name}: step {i}/{steps}: {' '.join(argv)}")
    note(f"build of {name}: step {i}/{steps} started: {step_label(argv)}")
    log.write(f"$ {' '.join(argv)}\n")
    left = build.timeout - (time.monotonic() - started)
    info = {"bot": name, "step": i, "steps": steps, "command": step_label(argv)}
    t0 = time.monotonic()
    run = run_step(svc, tier, policy, argv, log, progress, ticks, info, max(1.0, left), build.stall, link)
    took = time.monotonic() - t0
    if run.code == 0 and not run.reason:
        note(f"build of {name}: step {i}/{steps} done in {took:.1f} s: {step_label(argv)}")
        return
    progress(f"build {name}: step {i}/{steps} failed after {took:.1f} s")
    note(f"build of {name}: step {i}/{steps} failed after {took:.1f} s: {step_label(argv)}: {run.reason}")
    tail = "\n".join(run.tail)
    hint = f"the whole output is in {log_path}; fix the step and run `clawpen up` again (nothing was changed)"
    if run.stalled:
        hint = (
            f"the step went silent (a download that stopped?); run `clawpen up` again (downloads already in "
            f"{CACHE_MOUNT} are reused), or raise bots.{name}.build.stall; the output is in {log_path}"
        )
    raise ConfigError(
        f"build step {i} of {name} failed ({run.reason}): {' '.join(argv)}" + (f"\n{tail}" if tail else ""),
        where=f"bots.{name}.build.steps[{i - 1}]",
        hint=hint,
    )


def _hash_output(staging: Path) -> str | None:
    try:
        return tree_hash(staging, skip=(META,))
    except OSError:
        return None


def _touch(output: Path) -> None:
    """Mark a build output as used now (pruning removes the least recently used first)."""
    try:
        os.utime(output)
    except OSError:
        _log.warning("build output %s: cannot mark it as used", output)


def running_outputs(rows: Any, name: str, root: Path) -> frozenset[str]:
    """The names of bot ``name``'s build outputs that its stored policy mounts (what it runs now)."""
    row = rows.get(name)
    if row is None:
        return frozenset()
    ro = ((row.policy.get("spec") or {}).get("filesystem") or {}).get("ro") or []
    prefix = f"{root / name}/"
    return frozenset(
        e.partition(":")[0][len(prefix) :] for e in ro if isinstance(e, str) and e.startswith(prefix)
    )


def _prune(bot_dir: Path, keep: int = KEEP_BUILDS, protect: set[str] | frozenset[str] = frozenset()) -> None:
    """Keep the ``keep`` most recently used outputs of a bot, and every output in ``protect``."""
    builds = sorted(
        (p for p in bot_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "cache"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in builds[keep:]:
        if old.name in protect:
            continue
        shutil.rmtree(old, ignore_errors=True)
        (bot_dir / f"{old.name}.log").unlink(missing_ok=True)


def with_build(bot: Bot, result: BuildResult) -> Bot:
    """``bot`` with its build output mounted read-only at the build's mount."""
    if bot.build is None:
        return bot
    entry = f"{result.path}:{bot.build.mount}"
    fs = Filesystem(ro=[*bot.filesystem.ro, entry], rw=list(bot.filesystem.rw))
    return bot.model_copy(update={"filesystem": fs})


def _ensure_gateway(daemon: Any, spec: Any) -> None:
    """Start the egress gateway before a build needs it (it starts by itself only once an
    applied spec gives a bot egress, which comes after the build), resolving names with the
    ``[gateway] dns_upstream`` of the spec being built (not only from the next apply on)."""
    gateway = daemon.components.get("gateway")
    if gateway is not None:
        gateway.resolver.set_upstream(list(spec.gateway.dns_upstream))
        gateway.ensure_gateway()


async def run_builds(daemon: Any, loaded: Any, names: set[str], writer: Any, args: dict[str, Any]) -> Any:
    """Build every bot in ``names`` that has a build section; returns ``loaded`` with those bots
    mounting their output. Raises (and changes nothing) when a build fails. With ``dry_run``
    nothing is built: bots whose build is cached get their mount, so the plan compares right.
    With ``progress``, each output line also goes to the client as an ``item``."""
    built = [n for n in sorted(names) if loaded.spec.bots[n].build is not None]
    if not built:
        return loaded
    from clawpen.daemon import rpc

    loop = asyncio.get_running_loop()
    stream = bool(args.get("progress")) and writer is not None

    def progress(line: str) -> None:
        if stream:
            loop.call_soon_threadsafe(writer.write, rpc.item({"build": line}))

    def ticks(info: dict[str, Any]) -> None:
        if stream:
            loop.call_soon_threadsafe(writer.write, rpc.item({"build_progress": info}))

    bots = dict(loaded.spec.bots)
    if not args.get("dry_run") and any(bots[n].build and bots[n].build.egress for n in built):
        _ensure_gateway(daemon, loaded.spec)
    for name in built:
        build = bots[name].build
        if args.get("dry_run"):
            if build is not None:
                key = cache_key(build, str(loaded.base_dir))
                path = build_root(daemon.services.state_dir) / name / key
                if path.is_dir():
                    bots[name] = with_build(bots[name], BuildResult(name, key, path, True, 0.0))
            continue
        daemon.note("build", f"build of {name} started", name)
        running = running_outputs(daemon.store.bots(), name, build_root(daemon.services.state_dir))

        def note(text: str, bot: str = name) -> None:
            loop.call_soon_threadsafe(daemon.note, "build", text, bot)

        try:
            result = await loop.run_in_executor(
                None,
                run_build,
                daemon.services,
                name,
                bots[name],
                str(loaded.base_dir),
                progress,
                running,
                ticks,
                note,
            )
        except Exception as err:
            daemon.note("build", f"build of {name} failed: {str(err).splitlines()[0]}", name)
            raise
        how = "cached" if result.cached else f"built in {result.seconds:.1f} s"
        daemon.note("build", f"build of {name}: {how} ({result.key})", name)
        bots[name] = with_build(bots[name], result)
    spec = loaded.spec.model_copy(update={"bots": bots})
    return dataclasses.replace(loaded, spec=spec)
