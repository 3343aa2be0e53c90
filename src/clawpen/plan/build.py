"""spec policy + host facts -> frozen :class:`~clawpen.plan.model.Plan`. Pure: no I/O here.

The host facts (:class:`HostFacts`) are gathered once by :meth:`HostFacts.probe`; everything
else is decided from the policy, so ``clawpen plan`` shows exactly what ``clawpen run`` does.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from clawpen.errors import PolicyError
from clawpen.plan.model import (
    CgroupLimits,
    Identity,
    Mount,
    NetLink,
    Plan,
    Rlimits,
    SeccompPolicy,
)
from clawpen.spec import learnmode
from clawpen.spec.policy import BotPolicy
from clawpen.spec.quotas import DEFAULT_NET_LIMITS
from clawpen.spec.units import format_size

WORKSPACE = "/workspace"
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# Host /etc entries a program may need; nothing else of the host's /etc is visible.
ETC_ALLOWED = (
    "alternatives", "ca-certificates", "ca-certificates.conf", "gai.conf", "host.conf", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "localtime", "mime.types", "os-release", "protocols", "services",
    "ssl/certs", "ssl/openssl.cnf", "timezone", "debian_version", "lsb-release", "xdg",
)  # fmt: skip
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SECRETS_DIR = "/run/secrets"
NAMESPACES = ("user", "pid", "mount", "ipc", "uts", "cgroup", "net")
# A container's own namespaces (the engine makes them; no user namespace: the bot's uid is a host
# uid; on cgroup v1 Docker shares the host's cgroup namespace): what `exec` and `cmd` checks join.
CONTAINER_NAMESPACES = ("pid", "mount", "ipc", "uts", "net")
SHM_SIZE = 16 << 20
RUN_SIZE = 1 << 20
PROXY_PORT = 3128  # clawpen.net.types.PROXY_PORT (not imported: the run path stays lean)
NO_PROXY = "localhost,127.0.0.1"
PREVIEW_LINK = NetLink("", "10.213.0.2", "10.213.0.1")  # `clawpen plan` outside the daemon


class HostFacts(NamedTuple):
    """What the planner needs to know about the host's root filesystem."""

    cpu_count: int
    system_dirs: tuple[tuple[str, str | None], ...]  # (path, symlink target) or (path, None) for a dir
    etc_entries: tuple[str, ...]
    memory: int | None = None  # MemTotal in bytes (a VM gets at most half); None: not known

    @classmethod
    def probe(cls) -> HostFacts:
        dirs: list[tuple[str, str | None]] = []
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                dirs.append((path, os.readlink(path)))
            elif os.path.isdir(path):
                dirs.append((path, None))
        etc = tuple(e for e in ETC_ALLOWED if os.path.exists(f"/etc/{e}"))
        return cls(
            cpu_count=os.cpu_count() or 1, system_dirs=tuple(dirs), etc_entries=etc, memory=_mem_total()
        )


def _mem_total() -> int | None:
    """The host's MemTotal (``/proc/meminfo``) in bytes, or None when it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _etc_files(policy: BotPolicy, ident: Identity, link: NetLink | None) -> tuple[Mount, ...]:
    home = WORKSPACE if policy.workspace else "/tmp"
    passwd = (
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
        f"{ident.name}:x:{ident.uid}:{ident.gid}:clawpen bot {ident.name}:{home}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\n{ident.name}:x:{ident.gid}:\nnogroup:x:65534:\n"
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{policy.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    resolv = (
        f"# clawpen: the clawpen gateway resolves names (egress allowlist)\nnameserver {link.gw_addr}\n"
        if link is not None
        else "# clawpen: this bot has no network (network.mode = none)\n"
    )
    nsswitch = (
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\n"
    )
    files = {
        "/etc/passwd": passwd,
        "/etc/group": group,
        "/etc/hosts": hosts,
        "/etc/hostname": f"{policy.name}\n",
        "/etc/resolv.conf": resolv,
        "/etc/nsswitch.conf": nsswitch,
    }
    return tuple(Mount("data", dest, data=text, mode=0o444) for dest, text in files.items())


def _env(policy: BotPolicy, ident: Identity, link: NetLink | None) -> tuple[tuple[str, str], ...]:
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": WORKSPACE if policy.workspace else "/tmp",
        "USER": ident.name,
        "LOGNAME": ident.name,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "CLAWPEN_BOT": policy.name,
    }
    if link is not None:
        proxy = f"http://{link.gw_addr}:{PROXY_PORT}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = proxy
        env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    env.update(policy.env)
    return tuple(env.items())


def _sandbox_mounts(policy: BotPolicy, ident: Identity, host: HostFacts, link: NetLink | None) -> list[Mount]:
    """The sandbox tier's root: the host's system folders read-only, generated /etc files,
    private /proc, /dev, /tmp, /run, then the bot's binds, all read-only at the end."""
    mounts: list[Mount] = [Mount("ro", "/usr", source="/usr")]
    for path, target in host.system_dirs:
        mounts.append(Mount("symlink", path, source=target) if target else Mount("ro", path, source=path))
    mounts += [Mount("ro", f"/etc/{e}", source=f"/etc/{e}") for e in host.etc_entries]
    mounts += _etc_files(policy, ident, link)
    mounts += [
        Mount("proc", "/proc"),
        Mount("dev", "/dev"),
        _tmp(policy),
        Mount("tmpfs", "/dev/shm", size=SHM_SIZE, mode=0o1777),
        Mount("tmpfs", "/run", size=RUN_SIZE, mode=0o755),
        Mount("dir", "/var", mode=0o755),
        Mount("symlink", "/var/tmp", source="../tmp"),
    ]
    return [*mounts, *_binds(policy), Mount("remount-ro", "/")]


def _tmp(policy: BotPolicy) -> Mount:
    size = policy.tmp if policy.disk is None else min(policy.tmp, policy.disk)
    return Mount("tmpfs", "/tmp", size=size, mode=0o1777)


def _container_mounts(policy: BotPolicy) -> list[Mount]:
    """The container tier's: a private /tmp and the bot's binds on the image's read-only root."""
    return [_tmp(policy), *_binds(policy)]


def _binds(policy: BotPolicy) -> list[Mount]:
    """The bot's own: workspace, its read-only and writable mounts, its secrets."""
    mounts = []
    if policy.workspace:
        mounts.append(Mount("rw", WORKSPACE, source=policy.workspace, pin=True))
    mounts += [Mount("ro", dest, source=src, pin=True) for src, dest in policy.ro]
    mounts += [Mount("rw", dest, source=src, pin=True) for src, dest in policy.rw]
    mounts += [Mount("secret", f"{SECRETS_DIR}/{name}", source=name, mode=0o400) for name in policy.secrets]
    return mounts


def build_plan(
    policy: BotPolicy,
    ident: Identity,
    host: HostFacts,
    seccomp: SeccompPolicy,
    *,
    die_with_parent: bool = True,
    link: NetLink | None = None,
) -> Plan:
    """Decide everything about running ``policy``; raises PolicyError for what the host cannot give.

    ``link``: the bot's gateway link allocated by the daemon (a bot with egress); without it, a
    bot with egress gets :data:`PREVIEW_LINK`, which shows the shape but cannot be run.
    """
    if policy.egress and link is None:
        link = PREVIEW_LINK
    if link is not None and (link.egress, link.limits) != (policy.egress, policy.net_limits):
        link = link._replace(egress=policy.egress, limits=policy.net_limits)
    if policy.cpus is not None and policy.cpus > host.cpu_count:
        raise PolicyError(
            f"cpus = {policy.cpus:g} asks for more CPUs than this host has ({host.cpu_count})",
            where=f"bots.{policy.name}.resources.cpus",
            hint=f"use a value from 0.01 to {host.cpu_count}",
        )
    if policy.vm is not None:
        from clawpen.spec.vm import check_host

        check_host(policy.vm, policy.name, cpu_count=host.cpu_count, host_memory=host.memory)
    if policy.container is not None:  # the image brings its own system: only the bot's binds
        mounts = _container_mounts(policy)
    else:
        mounts = _sandbox_mounts(policy, ident, host, link)
    quota = None if policy.cpus is None else max(1000, round(policy.cpus * 100_000))
    return Plan(
        bot=policy.name,
        command=policy.command,
        identity=ident,
        hostname=policy.name,
        namespaces=NAMESPACES if policy.container is None else CONTAINER_NAMESPACES,
        mounts=tuple(mounts),
        env=_env(policy, ident, link),
        cwd=WORKSPACE if policy.workspace else "/tmp",
        cgroup=CgroupLimits(
            memory_max=policy.memory,
            cpu_quota_us=quota,
            pids_max=policy.pids,
            io_weight=policy.io_weight,
        ),
        rlimits=Rlimits(nofile=policy.nofile, core=0, fsize=policy.disk),
        seccomp=seccomp,
        network="none" if link is None else "link",
        workspace=policy.workspace,
        workspace_adopt=policy.workspace_adopt,
        disk_max=policy.disk,
        die_with_parent=die_with_parent,
        secret_env=policy.secret_env,
        link=link,
        container=policy.container,
        vm=policy.vm,
    )


def describe_network(plan: Plan) -> str:
    """One line for humans: ``none (loopback only)`` or the link and where egress goes."""
    link = plan.link
    if link is None:
        return "none (loopback only)"
    egress = learnmode.describe(link.egress)
    where = " (example addresses: the daemon allocates them)" if link.preview else ""
    limits = ", ".join(
        f"{k} {v:g}" for k, v in link.limits._asdict().items() if v != getattr(DEFAULT_NET_LIMITS, k)
    )
    return (
        f"link {link.interface} {link.bot_addr}/{link.prefixlen} via gateway {link.gw_addr}{where}; "
        f"egress {egress} through the gateway" + (f"; limits: {limits}" if limits else "")
    )


def describe_limits(plan: Plan) -> str:
    """One line for humans, e.g. ``memory 512M, cpus 1, pids 256, nofile 1024``."""
    parts = []
    if plan.cgroup.memory_max is not None:
        parts.append(f"memory {format_size(plan.cgroup.memory_max)}")
    if plan.cgroup.cpu_quota_us is not None:
        parts.append(f"cpus {plan.cgroup.cpu_quota_us / plan.cgroup.cpu_period_us:g}")
    if plan.cgroup.pids_max is not None:
        parts.append(f"pids {plan.cgroup.pids_max}")
    parts.append(f"nofile {plan.rlimits.nofile}")
    if plan.disk_max is not None:
        parts.append(f"disk {format_size(plan.disk_max)}")
    return ", ".join(parts)
