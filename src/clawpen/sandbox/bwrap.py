"""Plan -> bubblewrap argv. Pure: the file descriptors it names are opened by the caller.

Kept apart from the tier so the exact command line can be tested from fixtures and shown by
``clawpen plan --argv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from clawpen.plan.model import Mount, Plan

PRLIMIT = "/usr/bin/prlimit"

_UNSHARE = {
    "user": "--unshare-user",
    "pid": "--unshare-pid",
    "ipc": "--unshare-ipc",
    "uts": "--unshare-uts",
    "cgroup": "--unshare-cgroup",
    "net": "--unshare-net",
}


class BwrapFds(NamedTuple):
    """Descriptors the caller has opened: ``data`` and ``pinned`` map a mount's dest to its fd."""

    block: int | None = None
    info: int | None = None
    seccomp: int | None = None
    status: int | None = None
    data: Mapping[str, int] = MappingProxyType({})
    pinned: Mapping[str, int] = MappingProxyType({})
    # Secret environment values: they travel only inside the --args memfd, never on an argv.
    secret_env: Mapping[str, str] = MappingProxyType({})


def _mount_args(m: Mount, fds: BwrapFds) -> list[str]:
    perms = (
        ["--perms", f"{m.mode:04o}"]
        if m.mode is not None and m.kind in ("tmpfs", "dir", "data", "secret")
        else []
    )
    match m.kind:
        case "ro" | "rw":
            if m.pin:
                flag = "--ro-bind-fd" if m.kind == "ro" else "--bind-fd"
                return [flag, str(fds.pinned[m.dest]), m.dest]
            return ["--ro-bind" if m.kind == "ro" else "--bind", str(m.source), m.dest]
        case "tmpfs":
            size = ["--size", str(m.size)] if m.size is not None else []
            return [*perms, *size, "--tmpfs", m.dest]
        case "proc":
            return ["--proc", m.dest]
        case "dev":
            return ["--dev", m.dest]
        case "dir":
            return [*perms, "--dir", m.dest]
        case "symlink":
            return ["--symlink", str(m.source), m.dest]
        case "data" | "secret":
            return [*perms, "--ro-bind-data", str(fds.data[m.dest]), m.dest]
        case "remount-ro":
            return ["--remount-ro", m.dest]
    raise ValueError(f"unknown mount kind {m.kind!r}")  # pragma: no cover - Literal exhausts it


def bwrap_argv(plan: Plan, fds: BwrapFds, bwrap: str = "bwrap") -> list[str]:
    """The full argv that runs ``plan.command`` in the sandbox the plan describes."""
    argv = [bwrap]
    # A bot with a gateway link runs in the network namespace the daemon made for it: bwrap is
    # started inside it (see clawpen.sandbox.namespace) and must not create another one.
    joined = ("net",) if plan.link is not None else ()
    argv += [_UNSHARE[ns] for ns in plan.namespaces if ns in _UNSHARE and ns not in joined]
    if "user" in plan.namespaces:
        argv.append("--disable-userns")
    argv += ["--hostname", plan.hostname, "--new-session"]
    if plan.die_with_parent:
        argv.append("--die-with-parent")
    for m in plan.mounts:
        argv += _mount_args(m, fds)
    argv += ["--chdir", plan.cwd, "--clearenv"]
    for name, value in (*plan.env, *fds.secret_env.items()):
        argv += ["--setenv", name, value]
    if fds.seccomp is not None:
        argv += ["--seccomp", str(fds.seccomp)]
    if fds.info is not None:
        argv += ["--info-fd", str(fds.info)]
    if fds.block is not None:
        argv += ["--block-fd", str(fds.block)]
    if fds.status is not None:
        argv += ["--json-status-fd", str(fds.status)]
    argv += ["--", *limited_command(plan)]
    return argv


def limited_command(plan: Plan) -> list[str]:
    """The command behind util-linux ``prlimit``, which sets the rlimits inside the sandbox and
    execs it (same pid). Setting them from outside would need CAP_SYS_RESOURCE over the
    sandbox's user namespace, which a root in a container may lack, and lowering them in the
    parent would be irreversible."""
    rl = plan.rlimits
    limits = [f"--nofile={rl.nofile}:{rl.nofile}", f"--core={rl.core}:{rl.core}"]
    if rl.fsize is not None:
        limits.append(f"--fsize={rl.fsize}:{rl.fsize}")
    return [PRLIMIT, *limits, "--", *plan.command]
