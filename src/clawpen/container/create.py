"""A plan -> the Docker SDK's ``containers.create`` arguments (pure: no engine, no I/O).

Hardened by default, against Docker's own defaults (CIS Docker Benchmark, section 5): the bot's
own host uid (never 0), every capability dropped, no-new-privileges, a read-only root with a
private /tmp, the plan's pids/memory/nofile limits (swap off; the CPU quota is clawpen's, on the
cgroup parent: see :func:`clawpen.container.tier.cpu_limit`), no privileges, no host
namespaces, no engine network (``none``: the link is clawpen's), no engine restart policy and
no engine log (clawpen supervises and logs), an init, the container's cgroup under clawpen's
tree. The only writable bind is the workspace; the engine's socket is never mounted.

The bot's command does not run until clawpen opens the gate (see :data:`GATE_SCRIPT`): the host's
static busybox, bound read-only at /.clawpen/busybox, waits on the FIFO /.clawpen/gate, then
``exec``s the bot's argv, given as arguments (never composed into a shell string), with its
stdout and stderr on the daemon's named pipes, opened read-write like the sandbox tier's (no
reader never means EPIPE), before the gate (see :data:`GATE_SCRIPT_LOGS`).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from clawpen.errors import PolicyError
from clawpen.plan.build import SECRETS_DIR, WORKSPACE
from clawpen.plan.model import Plan

CLAWPEN_DIR = "/.clawpen"
BUSYBOX = f"{CLAWPEN_DIR}/busybox"
GATE = f"{CLAWPEN_DIR}/gate"
OUT = f"{CLAWPEN_DIR}/out"
ERR = f"{CLAWPEN_DIR}/err"
LOADER = f"{CLAWPEN_DIR}/seccomp-exec"
PROGRAM = f"{CLAWPEN_DIR}/seccomp.bpf"
SECRET_ENV = "CLAWPEN_SECRET_ENV"  # noqa: S105 - names only: the loader reads the values from /run/secrets
GATE_EXIT = 125  # the gate closed without opening: clawpen gave up on the start
# Constant scripts: the bot's argv follows as "$@"; the loader stacks clawpen's seccomp filter.
GATE_SCRIPT = f'read _ <{GATE} || exit {GATE_EXIT}; exec {LOADER} {PROGRAM} "$@"'
# The log pipes are opened before the gate is read: the gate opens only once the container holds
# them, so the daemon may close its own ends then (a FIFO with no writer reads as EOF, and the
# daemon stops reading a run's pipes at EOF: opened after the gate, a run's output was lost
# whenever the daemon closed its ends first).
GATE_SCRIPT_LOGS = f'exec 1<>{OUT} 2<>{ERR}; read _ <{GATE} || exit {GATE_EXIT}; exec {LOADER} {PROGRAM} "$@"'
ENGINE_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock", "/run/podman/podman.sock")
LABEL = "clawpen"
SECRETS_SIZE = 4 << 20


class HostFiles(NamedTuple):
    """Host paths the container binds: the static busybox, the gate FIFO, the seccomp loader and
    program (:mod:`clawpen.container.loader`), the bot's log pipes (``None``: no redirect);
    ``secrets``: give it a /run/secrets tmpfs (the tier fills it)."""

    busybox: str
    gate: str
    loader: str
    program: str
    out: str | None = None
    err: str | None = None
    secrets: bool = False


def labels(plan: Plan, replica: int, state: str, cgroup: str) -> dict[str, str]:
    """The labels clawpen puts on a bot's container (`docker ps --filter label=clawpen.bot=...`)."""
    return {
        f"{LABEL}.bot": plan.bot,
        f"{LABEL}.replica": str(replica),
        f"{LABEL}.state": state,
        f"{LABEL}.cgroup": cgroup,
    }


def _bind(source: str, target: str, *, read_only: bool) -> dict[str, Any]:
    from docker.types import Mount

    return Mount(target, source, type="bind", read_only=read_only)


def _check_source(bot: str, source: str) -> None:
    """Never the engine's socket (root on the host for whoever holds it)."""
    from clawpen.container.engine import socket_of

    real = os.path.realpath(source)
    for sock in (*ENGINE_SOCKETS, socket_of("docker"), socket_of("podman")):  # also where they listen
        if real == os.path.realpath(sock) or os.path.realpath(sock).startswith(real.rstrip("/") + "/"):
            raise PolicyError(
                f"refusing to mount {source}: it is or holds the container engine's socket ({sock}), "
                "which gives root on the host",
                where=f"bots.{bot}.filesystem.ro",
                hint="remove the mount; clawpen never hands a bot the engine",
            )


def mounts(plan: Plan, files: HostFiles) -> list[dict[str, Any]]:
    """The binds: clawpen's files, the workspace (the only writable one), the plan's read-only
    mounts."""
    found = [
        _bind(files.busybox, BUSYBOX, read_only=True),
        _bind(files.gate, GATE, read_only=True),
        _bind(files.loader, LOADER, read_only=True),
        _bind(files.program, PROGRAM, read_only=True),
    ]
    if files.out is not None and files.err is not None:
        found += [_bind(files.out, OUT, read_only=False), _bind(files.err, ERR, read_only=False)]
    for mount in plan.mounts:
        if not mount.pin or mount.source is None:  # the host's system folders: the image has its own
            continue
        if mount.kind == "rw" and mount.dest != WORKSPACE:
            raise PolicyError(
                f"{mount.dest}: a container bot's only writable host folder is its workspace",
                where=f"bots.{plan.bot}.filesystem.rw",
                hint="use the workspace (at /workspace), or mount the folder read-only",
            )
        _check_source(plan.bot, mount.source)
        found.append(_bind(mount.source, mount.dest, read_only=mount.kind != "rw"))
    return found


def create_kwargs(
    plan: Plan,
    *,
    name: str,
    labels: dict[str, str],
    files: HostFiles,
    cgroup_parent: str | None,
    secret_env: tuple[str, ...] = (),
    engine: str = "docker",
    nproc: int = 0,
    engine_memory: bool = True,
) -> dict[str, Any]:
    """``client.containers.create(**create_kwargs(...))`` for ``plan`` (see the module's docs), on
    ``engine`` (``docker`` or ``podman``: see :func:`podman_kwargs`, which gives ``nproc``);
    ``engine_memory=False``: the memory limit is not the engine's, clawpen sets it on the cgroup
    parent."""
    from docker.types import LogConfig, Ulimit

    if plan.container is None:
        raise PolicyError(
            f"{plan.bot} is not a container bot", where=f"bots.{plan.bot}.tier", hint='set tier = "container"'
        )
    uid, gid = plan.identity.uid, plan.identity.gid
    if uid == 0 or gid == 0:
        raise PolicyError(
            f"{plan.bot} would run as root in its container",
            where=f"bots.{plan.bot}",
            hint="clawpen gives every bot its own unprivileged host uid; check the uid registry",
        )
    tmp = next((m for m in plan.mounts if m.kind == "tmpfs" and m.dest == "/tmp"), None)
    tmp_size = tmp.size if tmp is not None and tmp.size else 64 << 20
    rl = plan.rlimits
    ulimits = [Ulimit(name="nofile", soft=rl.nofile, hard=rl.nofile), Ulimit(name="core", soft=0, hard=0)]
    if rl.fsize is not None:
        ulimits.append(Ulimit(name="fsize", soft=rl.fsize, hard=rl.fsize))
    cg = plan.cgroup
    logs = files.out is not None and files.err is not None
    kwargs: dict[str, Any] = {
        "image": plan.container.image,
        "entrypoint": [BUSYBOX, "sh", "-c", GATE_SCRIPT_LOGS if logs else GATE_SCRIPT, "clawpen-gate"],
        "command": list(plan.command),
        "name": name,
        "labels": labels,
        "hostname": plan.hostname,
        "user": f"{uid}:{gid}",
        "group_add": [],
        "working_dir": plan.cwd,
        # secret_env: names only; the values never reach the engine's config (`docker inspect`)
        "environment": {**dict(plan.env), **({SECRET_ENV: ",".join(secret_env)} if secret_env else {})},
        "network_mode": "none",
        "ipc_mode": "private",
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={tmp_size},mode=1777"},  # + /run/secrets below
        "mounts": mounts(plan, files),
        "ulimits": ulimits,
        "restart_policy": {"Name": "no"},
        "log_config": LogConfig(type="none"),
        "init": True,
        "stdin_open": False,
        "tty": False,
    }
    if cg.pids_max is not None:
        kwargs["pids_limit"] = cg.pids_max
    if cg.memory_max is not None and engine_memory:
        kwargs["mem_limit"] = cg.memory_max
        kwargs["memswap_limit"] = cg.memory_max + cg.swap_max  # swap off by default
    # no cpu_quota/cpu_period: the CPU quota is on clawpen's cgroup around the container (the
    # cgroup parent), where the start-up allowance changes it (see clawpen.container.tier.cpu_limit)
    if files.secrets:  # filled by the tier before the gate opens; read-only to the bot (0500/0400)
        kwargs["tmpfs"][SECRETS_DIR] = (
            f"rw,nosuid,nodev,noexec,size={SECRETS_SIZE},mode=0500,uid={uid},gid={gid}"
        )
    if cgroup_parent is not None:
        kwargs["cgroup_parent"] = cgroup_parent
    if plan.link is not None:  # names resolve at the gateway, as in the sandbox's resolv.conf
        kwargs["dns"] = [plan.link.gw_addr]
    return podman_kwargs(kwargs, nproc=nproc) if engine == "podman" else kwargs


def podman_kwargs(kwargs: dict[str, Any], *, nproc: int) -> dict[str, Any]:
    """Docker's arguments as Podman's Docker API takes them, with the same effect (pure):

    - its tmpfs options know no ``uid=``/``gid=``: ``U`` makes the tmpfs the container user's;
    - rootful, it raises RLIMIT_NPROC to 1048576 where Docker leaves the engine's own: a root
      without CAP_SYS_RESOURCE (a host that is itself a container) cannot, and the container
      fails to start; clawpen gives it ``nproc`` (the daemon's own, at most pid_max: see
      :func:`clawpen.container.tier.host_nproc`) instead.
    """
    from docker.types import Ulimit

    tmpfs = dict(kwargs["tmpfs"])
    if SECRETS_DIR in tmpfs:
        opts = [o for o in tmpfs[SECRETS_DIR].split(",") if not o.startswith(("uid=", "gid="))]
        tmpfs[SECRETS_DIR] = ",".join([*opts, "U"])
    ulimits = [*kwargs["ulimits"], Ulimit(name="nproc", soft=nproc, hard=nproc)]
    return {**kwargs, "tmpfs": tmpfs, "ulimits": ulimits}
