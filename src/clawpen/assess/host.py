"""The host group of ``clawpen audit``: the dedicated host the deployment practice asks for.

Resources (cores, memory, swap), the disk layout, kernel features, the automatic-update policy,
SSH (:mod:`clawpen.assess.hostssh`), accounts, listening ports and the firewall
(:mod:`clawpen.assess.hostnet`), clawpen's own unit, time sync and snapshots. Files are read
under ``ctx.root``; the running kernel, processes and sockets only when ``ctx.live``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clawpen.assess import hostapt, hostnet, hostssh, hostsys, hostusers
from clawpen.assess.hostread import configured_sysctls, live_sysctl, read_text
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding
from clawpen.errors import ClawpenError
from clawpen.spec.loader import LoadedSpec, load_spec

PRACTICE = "deployment practice (dedicated host)"
GIB = 1024**3
MIN_CORES = 4
MIN_MEMORY = 7.5 * GIB  # "8 GB": MemTotal of an 8 GB machine is a little under 8 GiB

CORES = CheckInfo("host.cpu.cores", "host", "fewer than 4 CPU cores", PRACTICE + ": at least 4 cores")
MEMORY = CheckInfo("host.memory.size", "host", "less than 8 GB of memory", PRACTICE + ": at least 8 GB")
SWAP = CheckInfo(
    "host.memory.swap", "host", "no swap, or a swappiness that trades latency", "Lynis FILE-6332, FILE-6394"
)
DISK = CheckInfo(
    "host.disk.shared_with_system",
    "host",
    "clawpen's state or a bot workspace is on the system disk",
    PRACTICE + ": system disk apart from data disk",
)
SPEC = CheckInfo(
    "host.spec.unreadable", "host", "the spec could not be read", "clawpen audit (the check itself)"
)
SNAPSHOTS = CheckInfo(
    "host.snapshots.none",
    "host",
    "no scheduled snapshots",
    "deployment practice (daily incremental snapshots)",
)

CHECKS: tuple[CheckInfo, ...] = (
    CORES,
    MEMORY,
    SWAP,
    DISK,
    *hostsys.KERNEL_CHECKS,
    *hostapt.CHECKS,
    *hostssh.CHECKS,
    *hostusers.CHECKS,
    *hostnet.CHECKS,
    *hostsys.UNIT_CHECKS,
    *hostsys.TIME_CHECKS,
    SNAPSHOTS,
    SPEC,
)


def run(ctx: AuditContext) -> list[AuditFinding]:
    """Every host finding of ``ctx``."""
    out: list[AuditFinding] = []
    loaded: LoadedSpec | None = None
    if ctx.spec_path is not None:
        try:
            loaded = load_spec(ctx.spec_path)
        except ClawpenError as err:
            out.append(
                finding(
                    SPEC,
                    Severity.INFO,
                    f"the spec {ctx.spec_path} could not be read: {err}",
                    "the host checks that need the spec (workspaces, firewall, snapshots) were skipped",
                    "fix the spec (`clawpen validate`) and audit again",
                    where=str(ctx.spec_path),
                )
            )
    if ctx.live:
        out += resources()
        out += disk_layout(ctx, loaded)
    out += hostsys.kernel(ctx, hostsys.live_sysctl_at if ctx.live else _configured(ctx))
    out += hostapt.updates(ctx)
    out += hostssh.run(ctx)
    out += hostusers.users(ctx)
    out += hostnet.run(ctx, spec_has_firewall=loaded is not None and loaded.spec.host.firewall is not None)
    out += hostsys.unit(ctx)
    out += hostsys.time_sync(ctx)
    if loaded is not None:
        out += snapshots(loaded)
    return out


def _configured(ctx: AuditContext) -> hostsys.Sysctl:
    values = configured_sysctls(ctx)

    return values.get


def meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per field."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*(kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def resources(
    cores: int | None = None, mem_text: str | None = None, swappiness: str | None = None
) -> list[AuditFinding]:
    """Cores, memory and swap of the running host (the arguments replace what it reads)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if mem_text is None:
        mem_text = read_text(Path("/proc/meminfo")) or ""
    if swappiness is None:
        swappiness = live_sysctl("vm.swappiness")
    mem = meminfo(mem_text)
    out = []
    if cores < MIN_CORES:
        out.append(
            finding(
                CORES,
                Severity.MEDIUM if cores < 2 else Severity.LOW,
                f"{cores} CPU core{'s' if cores != 1 else ''} (the practice asks for at least {MIN_CORES})",
                "a busy bot competes with sshd, the daemon and the other bots for too few cores",
                "move the bots to a host with 4 or more cores, or cap each bot's cpu in the spec",
                subject="cores",
                data={"cores": cores},
            )
        )
    total = mem.get("MemTotal", 0)
    if total and total < MIN_MEMORY:
        gb = total / GIB
        out.append(
            finding(
                MEMORY,
                Severity.MEDIUM if total < 3.5 * GIB else Severity.LOW,
                f"{gb:.1f} GiB of memory (the practice asks for at least 8 GB)",
                "a bot that grows pushes the host into the OOM killer, which may pick sshd or the daemon",
                "move the bots to a host with 8 GB or more, or cap each bot's memory in the spec",
                subject="memory",
                data={"bytes": total},
            )
        )
    if "SwapTotal" in mem and mem["SwapTotal"] == 0:
        out.append(
            finding(
                SWAP,
                Severity.LOW,
                "no swap",
                "with no swap a short memory peak goes straight to the OOM killer",
                "add a swap file: fallocate -l 2G /swapfile && chmod 600 /swapfile && mkswap /swapfile "
                "&& swapon /swapfile (and a line in /etc/fstab); keep vm.swappiness low (10)",
                subject="swap",
            )
        )
    elif swappiness is not None and swappiness.isdigit() and int(swappiness) > 60:
        out.append(
            finding(
                SWAP,
                Severity.LOW,
                f"vm.swappiness is {swappiness}",
                "a high swappiness pages a bot's working memory out early and makes it slow to answer",
                'echo "vm.swappiness = 10" > /etc/sysctl.d/60-clawpen-swap.conf && sysctl --system',
                subject="swappiness",
            )
        )
    return out


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a workspace not made yet lands there)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_layout(ctx: AuditContext, loaded: LoadedSpec | None) -> list[AuditFinding]:
    """clawpen's state folder and the bots' workspaces on the root file system (live only)."""
    places: list[tuple[str, Path, str]] = []
    if ctx.state_dir is not None:
        places.append(("clawpen's state folder", ctx.state_dir, "state"))
    if loaded is not None:
        for name, bot in sorted(loaded.spec.bots.items()):
            if bot.workspace:
                ws = Path(os.path.expanduser(bot.workspace))
                line = f"bot {name!r}'s workspace"
                places.append((line, ws if ws.is_absolute() else loaded.base_dir / ws, f"bot:{name}"))
    try:
        root_dev = os.stat(ctx.root).st_dev
    except OSError:
        return []
    out = []
    for what, path, subject in places:
        try:
            dev = os.stat(_existing(path)).st_dev
        except OSError:
            continue
        if dev != root_dev:
            continue
        out.append(
            finding(
                DISK,
                Severity.MEDIUM,
                f"{what} {path} is on the system disk (the file system of /)",
                "when bot data fills the disk, the system fails with it (logs, package updates, sshd); "
                "a disk of its own keeps data and system apart and lets each be snapshotted and replaced",
                f"mount a data disk (say at /srv/clawpen) and move {path} there"
                + (
                    " (CLAWPEN_HOME for the state folder)" if subject == "state" else " (the bot's workspace)"
                ),
                where=str(path),
                subject=subject,
            )
        )
    return out


def snapshots(loaded: LoadedSpec) -> list[AuditFinding]:
    """Scheduled snapshots in the spec: every bot with a workspace, and clawpen's own state."""
    spec = loaded.spec
    file = str(loaded.path)
    out = []
    bare = sorted(name for name, bot in spec.bots.items() if bot.workspace and bot.snapshots is None)
    for name in bare:
        out.append(
            finding(
                SNAPSHOTS,
                Severity.MEDIUM,
                f"bot {name!r} has a workspace but no scheduled snapshots",
                "a script that deletes or corrupts the workspace leaves nothing to go back to",
                f'add to [bots.{name}]: snapshots = {{ every = "24h" }}',
                where=file,
                subject=f"bot:{name}",
            )
        )
    if spec.snapshots.state_every is None:
        out.append(
            finding(
                SNAPSHOTS,
                Severity.LOW,
                "clawpen's own state (database, vault, audit log) has no scheduled snapshot",
                "losing the state folder loses the vault's secrets and the audit trail",
                'add to [snapshots]: state_every = "24h"',
                where=file,
                subject="state",
            )
        )
    has_schedule = spec.snapshots.state_every is not None or any(b.snapshots for b in spec.bots.values())
    if has_schedule and spec.storage.warm is None:
        out.append(
            finding(
                SNAPSHOTS,
                Severity.LOW,
                "snapshots stay in the local repository only (no [storage] warm tier)",
                "a lost or broken system disk takes the snapshots with it",
                'add [storage.warm] repository = "sftp:backup@host:/srv/restic" (or a path on another disk)',
                where=file,
                subject="repository",
            )
        )
    return out
