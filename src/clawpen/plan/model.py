"""The frozen plan: everything a tier needs to run one bot, decided before anything runs.

Records here and on the `clawpen run` path are ``NamedTuple``s rather than dataclasses:
importing ``dataclasses`` (it pulls in ``inspect``) and building the classes cost about 20 ms
of a ~90 ms ``clawpen run``; named tuples are as immutable and typed, and cost next to nothing.

A plan is built by :func:`clawpen.plan.build.build_plan` from a normalized policy and a few
host facts; it holds no open files and performs no I/O. ``clawpen plan BOT --json`` prints
:meth:`Plan.to_dict`.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from clawpen.spec.container import ContainerSettings
from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits
from clawpen.spec.vm import VmSettings

MountKind = Literal["ro", "rw", "tmpfs", "proc", "dev", "dir", "symlink", "data", "secret", "remount-ro"]


class Mount(NamedTuple):
    """One step of building the sandbox's root, applied in order.

    ``ro``/``rw``: bind ``source`` (a host path) at ``dest``; ``tmpfs``: a fresh tmpfs of
    ``size`` bytes; ``proc``/``dev``: fresh procfs / minimal /dev; ``dir``: an empty directory;
    ``symlink``: ``dest`` points at ``source``; ``data``: a read-only file holding ``data``;
    ``secret``: a read-only file holding the vault secret named ``source`` (the value is never
    in the plan: the tier reads it from the vault when it builds the sandbox);
    ``remount-ro``: make ``dest`` read-only once everything below it is in place.
    ``pin``: the host path is opened by the root parent and handed to bubblewrap as a file
    descriptor, so the bot's uid needs no access to the path's parent folders and a path swapped
    for a symlink after the checks cannot redirect the mount.
    """

    kind: MountKind
    dest: str
    source: str | None = None
    size: int | None = None
    data: str | None = None
    mode: int | None = None
    pin: bool = False


class Identity(NamedTuple):
    """The dedicated unprivileged host user a bot runs as."""

    name: str
    uid: int
    gid: int


class CgroupLimits(NamedTuple):
    """Values written into the bot's cgroup; ``None`` means no limit for that controller."""

    memory_max: int | None = None
    swap_max: int = 0
    cpu_quota_us: int | None = None
    cpu_period_us: int = 100_000
    pids_max: int | None = None
    io_weight: int | None = None


class Rlimits(NamedTuple):
    """Resource limits set on the sandbox's first process and inherited by its children."""

    nofile: int = 1024
    core: int = 0
    fsize: int | None = None


class SeccompPolicy(NamedTuple):
    """A deny-list seccomp policy, applied on every ABI in ``arches``.

    ``errno_syscalls`` fail with EPERM; ``enosys_syscalls`` fail with ENOSYS (so libc falls back,
    e.g. clone3 -> clone, whose flags can be checked); ``clone_ns_flags`` are the clone(2) flags
    that make it fail with EPERM; ``ioctls`` are ioctl request numbers that fail with EPERM;
    ``socket_families`` are address families socket(2) refuses with EPERM (AF_VSOCK: a VM's
    host services ignore network namespaces). i386's socketcall(2) hides its arguments, so it is
    refused as a whole when families are listed.
    """

    arches: tuple[str, ...] = ("x86_64", "x86", "x32")
    errno_syscalls: tuple[str, ...] = ()
    enosys_syscalls: tuple[str, ...] = ()
    clone_ns_flags: int = 0
    ioctls: tuple[int, ...] = ()
    socket_families: tuple[int, ...] = ()


class NetLink(NamedTuple):
    """A bot's link to the clawpen gateway (bots with egress; see :mod:`clawpen.net.links`).

    The daemon creates the network namespace at ``netns`` (a bind mount) with ``eth0`` =
    ``bot_addr/prefixlen`` and a default route via ``gw_addr`` *before* the sandbox starts;
    bubblewrap then runs inside it instead of creating an empty one. ``netns == ""`` marks a
    preview (``clawpen plan`` outside the daemon): the addresses are examples and the tier
    refuses to run it. ``limits``: the gateway's quotas for this bot instance.
    """

    netns: str
    bot_addr: str
    gw_addr: str
    prefixlen: int = 30
    interface: str = "eth0"
    egress: tuple[str, ...] | str = ()
    limits: NetLimits = DEFAULT_NET_LIMITS

    @property
    def preview(self) -> bool:
        return not self.netns


class Plan(NamedTuple):
    """Everything needed to run one bot in a sandbox; pure data."""

    bot: str
    command: tuple[str, ...]
    identity: Identity
    hostname: str
    namespaces: tuple[str, ...]
    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str
    cgroup: CgroupLimits
    rlimits: Rlimits
    seccomp: SeccompPolicy
    network: Literal["none", "link"] = "none"
    workspace: str | None = None
    disk_max: int | None = None
    die_with_parent: bool = True
    secret_env: tuple[str, ...] = ()  # vault secrets also given as environment variables
    link: NetLink | None = None  # set when network == "link"
    workspace_adopt: bool = False  # an existing workspace with other owners may be chowned to the bot
    container: ContainerSettings | None = None  # tier = "container": its image and engine
    vm: VmSettings | None = None  # tier = "vm": the guest's kernel, memory, CPUs and root

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as printed by ``clawpen plan --json``."""
        return jsonable(self)  # type: ignore[no-any-return]


def jsonable(value: Any) -> Any:
    """Records (named tuples) as dicts, recursively, for ``json.dumps``."""
    if hasattr(value, "_asdict"):
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value
