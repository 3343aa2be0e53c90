"""The normalized policy of one bot: units parsed, paths resolved and checked.

A :class:`BotPolicy` is what the planner consumes. It comes either from a ``clawpen.toml`` bot
(:meth:`clawpen.spec.models.Bot.to_policy`) or straight from ``clawpen run`` flags
(:func:`policy_from_flags`). Both go through the same rule and unit functions; the flag path
avoids importing pydantic, which costs more than the whole sandbox set-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from clawpen.errors import ConfigError, PolicyError, UsageError
from clawpen.spec import bounds, rules, units
from clawpen.spec.container import ContainerSettings
from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits
from clawpen.spec.vm import VmSettings

DEFAULT_CPUS = 1.0
DEFAULT_MEMORY = 512 << 20
DEFAULT_PIDS = 256
DEFAULT_NOFILE = 1024
DEFAULT_TMP = 64 << 20
# Every bot gets a disk cap unless it opts out with "unlimited": RLIMIT_FSIZE on any one file, the
# size of /tmp (min(tmp, disk)) and, for `clawpen run`, the workspace's use. 10 GiB holds what bots
# keep (a browser profile, a model cache, a SQLite database, node_modules) while one runaway bot
# cannot fill a typical 25-100 GB VPS disk on its own.
DEFAULT_DISK = 10 << 30
MIN_DISK = 1 << 20
MIN_TMP = 1 << 20
MIN_MEMORY = 8 << 20
MAX_PIDS = 4_194_304
MAX_NOFILE = 1_048_576


class BotPolicy(NamedTuple):
    """One bot's policy in normal form: bytes, seconds, real absolute paths."""

    name: str
    command: tuple[str, ...]
    workspace: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    cpus: float | None = DEFAULT_CPUS
    memory: int | None = DEFAULT_MEMORY
    pids: int | None = DEFAULT_PIDS
    nofile: int = DEFAULT_NOFILE
    disk: int | None = DEFAULT_DISK  # None: "unlimited"
    tmp: int = DEFAULT_TMP
    io_weight: int | None = None
    ro: tuple[tuple[str, str], ...] = ()  # (host path, sandbox path)
    rw: tuple[tuple[str, str], ...] = ()
    egress: tuple[str, ...] | str = ()  # allowlist rules ("host:port"), or "open"
    allow_private: tuple[str, ...] = ()  # CIDRs egress may reach although private
    publish: tuple[str, ...] = ()  # "[HOST_IP:]HOST_PORT:BOT_PORT"
    expose: bool = False
    expose_from: tuple[str, ...] = ()  # source CIDRs for exposed ports
    bandwidth: int | None = None  # bits per second, each way
    burst: int | None = None  # bytes
    ipv6: bool = False
    secrets: tuple[str, ...] = ()  # vault names, delivered as /run/secrets/NAME (mode 0400)
    secret_env: tuple[str, ...] = ()  # of those, the ones also set as environment variables
    workspace_adopt: bool = False  # hand an existing folder with files of other owners to the bot
    net_limits: NetLimits = DEFAULT_NET_LIMITS  # quotas at the gateway (network.limits)
    container: ContainerSettings | None = None  # tier = "container": image and engine
    vm: VmSettings | None = None  # tier = "vm": kernel, memory, CPUs, root filesystem


def check_memory(value: int) -> int:
    if value < MIN_MEMORY:
        raise rules.RuleViolation(
            f"memory limit {value} bytes is too small to start a process",
            f"give at least {units.format_size(MIN_MEMORY)}",
        )
    return value


def check_pids(value: int) -> int:
    if not 1 <= value <= MAX_PIDS:
        raise rules.RuleViolation(f"pids = {value} is out of range", f"use 1 to {MAX_PIDS}, e.g. 256")
    return value


def check_nofile(value: int) -> int:
    if not 16 <= value <= MAX_NOFILE:
        raise rules.RuleViolation(f"nofile = {value} is out of range", f"use 16 to {MAX_NOFILE}")
    return value


def check_io_weight(value: int) -> int:
    if not 1 <= value <= 10_000:
        raise rules.RuleViolation(f"io_weight = {value} is out of range", "use 1 to 10000 (100 is normal)")
    return value


def check_disk(value: int) -> int:
    if value < MIN_DISK:
        raise rules.RuleViolation(
            f"disk = {value} bytes is too small for any file", 'give at least 1M, e.g. disk = "10G"'
        )
    return value


def check_tmp(value: int) -> int:
    if value < MIN_TMP:
        raise rules.RuleViolation(
            f"tmp = {value} bytes is too small for /tmp", 'give at least 1M, e.g. tmp = "64M"'
        )
    return value


T = TypeVar("T")


def _flag(where: str, fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except (rules.RuleViolation, units.UnitError) as err:
        raise UsageError(str(err), where=where, hint=err.hint) from None


def parse_env_pairs(pairs: Iterable[str], where: str) -> tuple[tuple[str, str], ...]:
    """``K=V`` strings (as given to ``--env``) to checked pairs; later ones win."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"{pair!r} is not NAME=VALUE", where=where, hint="write --env NAME=VALUE")
        _flag(where, bounds.check_env_entry, name, value)
        env[name] = value
    _flag(where, bounds.check_env, env)
    return tuple(env.items())


def policy_from_flags(
    command: Sequence[str],
    *,
    base_dir: str,
    name: str = "run",
    workspace: str | None = None,
    memory: str | None = None,
    cpus: str | None = None,
    pids: int | None = None,
    nofile: int | None = None,
    disk: str | None = None,
    tmp: str | None = None,
    env: Sequence[str] = (),
    ro: Sequence[str] = (),
    rw: Sequence[str] = (),
    secrets: Sequence[str] = (),
    secret_env: Sequence[str] = (),
) -> BotPolicy:
    """Build a policy from ``clawpen run`` flags, with the same rules as a spec file."""
    if not command:
        raise UsageError("no command to run", where="clawpen run", hint="write: clawpen run -- CMD ARGS...")
    _flag("clawpen run", bounds.check_argv, list(command), "the command")
    _flag("--name", rules.check_bot_name, name)

    def path(raw: str, writable: bool, where: str) -> str:
        _flag(where, bounds.check_source, raw, base_dir, where)
        check = rules.check_host_path
        return _flag(where, lambda: check(raw, writable=writable, base_dir=base_dir, base_is_spec=False))

    def mount(raw: str, writable: bool, where: str) -> tuple[str, str]:
        _flag(where, bounds.check_mount_source, raw, base_dir, where)
        return _flag(
            where, lambda: rules.check_mount(raw, writable=writable, base_dir=base_dir, base_is_spec=False)
        )

    def size(raw: str | None, where: str, default: int | None) -> int | None:
        return default if raw is None else _flag(where, units.parse_size, raw)

    mem = size(memory, "--memory", DEFAULT_MEMORY)
    if mem is not None:
        _flag("--memory", check_memory, mem)
    if pids is not None:
        _flag("--pids", check_pids, pids)
    if nofile is not None:
        _flag("--nofile", check_nofile, nofile)
    tmp_size = size(tmp, "--tmp", DEFAULT_TMP)
    if tmp_size is not None:
        _flag("--tmp", check_tmp, tmp_size)
    disk_cap = DEFAULT_DISK if disk is None else _flag("--disk", units.parse_disk, disk)
    if disk_cap is not None:
        _flag("--disk", check_disk, disk_cap)
    return BotPolicy(
        name=name,
        command=tuple(command),
        workspace=path(workspace, True, "--workspace") if workspace else None,
        env=parse_env_pairs(env, "--env"),
        cpus=DEFAULT_CPUS if cpus is None else _flag("--cpus", units.parse_cpus, cpus),
        memory=mem,
        pids=DEFAULT_PIDS if pids is None else pids,
        nofile=DEFAULT_NOFILE if nofile is None else nofile,
        disk=disk_cap,
        tmp=DEFAULT_TMP if tmp_size is None else tmp_size,
        ro=tuple(mount(p, False, "--ro") for p in ro),
        rw=tuple(mount(p, True, "--rw") for p in rw),
        secrets=tuple(
            _flag("--secret", rules.check_secret_name, n) for n in dict.fromkeys((*secrets, *secret_env))
        ),
        secret_env=tuple(_flag("--secret-env", rules.check_secret_name, n) for n in secret_env),
    )


def config_error(err: rules.RuleViolation | units.UnitError, where: str) -> ConfigError:
    """The person-facing error for a broken rule at ``where`` (a file:line and key path)."""
    cls = ConfigError if isinstance(err, units.UnitError) else PolicyError
    return cls(str(err), where=where, hint=err.hint)
