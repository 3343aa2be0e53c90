"""Host checks of ``clawpen audit`` on the system's own settings: kernel features and sysctls,
clawpen's systemd unit and time sync. Used by :mod:`clawpen.assess.host`."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from clawpen.assess.hostread import dpkg_installed, process_names, read_text, run_command
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding

# a sysctl's value and where it was read ("/proc/sys/..." or "file:line"), None when unknown
Sysctl = Callable[[str], "tuple[str, str] | None"]

SYSCTL_FILE = "/etc/sysctl.d/60-clawpen-hardening.conf"
KRNL = "Lynis KRNL-6000 (sysctl {})"


def _kinfo(key: str, title: str, source: str = "") -> CheckInfo:
    name = key.rsplit(".", maxsplit=1)[-1]
    return CheckInfo(f"host.kernel.{name}", "host", title, source or KRNL.format(key))


# key, wanted values, value to set, severity, check, why
SYSCTLS: tuple[tuple[str, tuple[str, ...], str, Severity, CheckInfo, str], ...] = (
    (
        "kernel.dmesg_restrict",
        ("1",),
        "1",
        Severity.LOW,
        _kinfo("kernel.dmesg_restrict", "any user can read the kernel log"),
        "the kernel log shows addresses and hardware details that help an exploit",
    ),
    (
        "kernel.kptr_restrict",
        ("1", "2"),
        "2",
        Severity.LOW,
        _kinfo("kernel.kptr_restrict", "kernel pointers are shown to users"),
        "kernel addresses in /proc defeat address randomisation for a local exploit",
    ),
    (
        "fs.protected_symlinks",
        ("1",),
        "1",
        Severity.MEDIUM,
        _kinfo("fs.protected_symlinks", "symlinks in shared folders are followed blindly"),
        "a link planted in /tmp can make a privileged process write any file",
    ),
    (
        "fs.protected_hardlinks",
        ("1",),
        "1",
        Severity.MEDIUM,
        _kinfo("fs.protected_hardlinks", "users may hard-link files they do not own"),
        "a hard link to a privileged file lets a later chown or write hit it",
    ),
    (
        "net.ipv4.ip_forward",
        ("0",),
        "0",
        Severity.LOW,
        _kinfo(
            "net.ipv4.ip_forward",
            "the host routes IPv4 between its interfaces",
            KRNL.format("net.ipv4.conf.all.forwarding"),
        ),
        "a router host passes traffic the firewall's input chain never sees (clawpen's bots do not "
        "need it; Docker turns it on for its containers)",
    ),
    (
        "kernel.yama.ptrace_scope",
        ("1", "2", "3"),
        "1",
        Severity.LOW,
        _kinfo("kernel.yama.ptrace_scope", "any process may trace others of its user"),
        "a compromised process reads the memory (keys, tokens) of every other process of its user",
    ),
)
USERNS = CheckInfo(
    "host.kernel.userns",
    "host",
    "user namespaces: off, or open to every user",
    "clawpen's sandboxes (bubblewrap); Lynis KRNL-6000 profile (kernel.unprivileged_userns_clone)",
)
SECCOMP = CheckInfo(
    "host.kernel.seccomp", "host", "the kernel has no seccomp", "clawpen's sandboxes (seccomp filters)"
)
CGROUP2 = CheckInfo(
    "host.kernel.cgroup2",
    "host",
    "no cgroup v2 (unified) hierarchy",
    "clawpen's limits (cgroup v2 controllers)",
)
KERNEL_CHECKS = (USERNS, SECCOMP, CGROUP2, *(s[4] for s in SYSCTLS))

EXPOSURE = CheckInfo(
    "host.unit.exposure", "host", "clawpen's unit is exposed", "systemd-analyze security; Lynis BOOT-5264"
)
HARDENING = CheckInfo(
    "host.unit.hardening",
    "host",
    "clawpen's unit lacks hardening directives",
    "systemd-analyze security (the directives it rates); src/clawpen/daemon/systemd.py",
)
NO_UNIT = CheckInfo(
    "host.unit.missing", "host", "clawpen runs without its systemd unit", "deployment practice (operations)"
)
UNIT_CHECKS = (EXPOSURE, HARDENING, NO_UNIT)

TIME = CheckInfo(
    "host.time.sync",
    "host",
    "no time synchronisation",
    "Lynis TIME-3104, TIME-3185; CIS Debian Linux 12 (time sync)",
)
TIME_CHECKS = (TIME,)

UNIT = "/etc/systemd/system/clawpen.service"
TIME_PACKAGES = ("systemd-timesyncd", "chrony", "ntp", "ntpsec", "openntpd")
TIME_DAEMONS = ("systemd-timesyn", "chronyd", "ntpd", "openntpd")


def kernel(ctx: AuditContext, sysctl: Sysctl) -> list[AuditFinding]:
    """Kernel features and hardening sysctls (the running kernel's when live; else the values the
    root's sysctl files set: a key they do not set is not judged)."""
    out = []
    for key, good, value, severity, info, why in SYSCTLS:
        found = sysctl(key)
        if found is None or found[0] in good:
            continue
        out.append(
            finding(
                info,
                severity,
                f"{key} = {found[0]} (wanted {' or '.join(good)})",
                why,
                f'add "{key} = {value}" to {SYSCTL_FILE}, then `sysctl --system`',
                where=found[1],
                subject=key,
                data={"value": found[0]},
            )
        )
    most = sysctl("user.max_user_namespaces")
    clone = sysctl("kernel.unprivileged_userns_clone")
    if most is not None and most[0] == "0":
        out.append(
            finding(
                USERNS,
                Severity.HIGH,
                "user namespaces are off (user.max_user_namespaces = 0)",
                "clawpen's bubblewrap sandboxes need user namespaces: bots cannot start",
                'remove the setting, or set "user.max_user_namespaces = 15000" in '
                f"{SYSCTL_FILE}, then `sysctl --system`",
                where=most[1],
                subject="user.max_user_namespaces",
            )
        )
    elif clone is not None and clone[0] == "1":
        out.append(
            finding(
                USERNS,
                Severity.LOW,
                "every user may create user namespaces (kernel.unprivileged_userns_clone = 1)",
                "user namespaces open kernel code to unprivileged users, a frequent path of local "
                "exploits; clawpen's daemon runs as root and does not need it (Debian's bubblewrap "
                "package turns it on for rootless use)",
                f'add "kernel.unprivileged_userns_clone = 0" to {SYSCTL_FILE} (it sorts after '
                "50-bubblewrap.conf), then `sysctl --system`; keep it on when clawpen runs rootless (as "
                "a user) or a bot nests its own sandbox (Chromium)",
                where=clone[1],
                subject="kernel.unprivileged_userns_clone",
            )
        )
    if ctx.live:
        status = read_text(Path("/proc/self/status")) or ""
        if "Seccomp:" not in status:
            out.append(
                finding(
                    SECCOMP,
                    Severity.HIGH,
                    "the kernel has no seccomp (no Seccomp: line in /proc/self/status)",
                    "clawpen filters each bot's system calls with seccomp; without it a bot reaches "
                    "every kernel call",
                    "boot a kernel built with CONFIG_SECCOMP_FILTER (every Debian kernel is)",
                    where="/proc/self/status",
                )
            )
        out += cgroups(read_text(Path("/proc/self/mounts")) or "")
    return out


def cgroups(mounts: str) -> list[AuditFinding]:
    """cgroup v2 at /sys/fs/cgroup (none), v1 hierarchies with a memory controller (low: clawpen
    falls back to them) or no usable controllers at all (high); ``mounts`` is /proc/self/mounts."""
    kinds = {}
    for line in mounts.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] in ("cgroup", "cgroup2"):
            kinds[f[1]] = (f[2], f[3].split(","))
    top = kinds.get("/sys/fs/cgroup")
    if top and top[0] == "cgroup2":
        return []
    v1_memory = any(kind == "cgroup" and "memory" in opts for kind, opts in kinds.values())
    fix = (
        "boot with systemd.unified_cgroup_hierarchy=1 (Debian 12's default): remove "
        "systemd.legacy_systemd_cgroup_controller and systemd.unified_cgroup_hierarchy=0 from "
        "GRUB_CMDLINE_LINUX, `update-grub`, reboot"
    )
    if v1_memory:
        return [
            finding(
                CGROUP2,
                Severity.LOW,
                "cgroups are v1 (or hybrid): /sys/fs/cgroup is not the unified v2 hierarchy",
                "clawpen falls back to the v1 controllers, where a killed bot's processes are frozen "
                "and killed one by one and delegation is weaker than v2's",
                fix,
                where="/proc/self/mounts",
            )
        ]
    return [
        finding(
            CGROUP2,
            Severity.HIGH,
            "no cgroup controllers are mounted (neither v2 at /sys/fs/cgroup nor a v1 memory hierarchy)",
            "clawpen caps each bot's memory, CPU and processes with cgroups: without them a bot "
            "can take the whole host",
            fix,
            where="/proc/self/mounts",
        )
    ]


def live_sysctl_at(key: str) -> tuple[str, str] | None:
    path = Path("/proc/sys", *key.split("."))
    try:
        return path.read_text().strip(), str(path)
    except OSError:
        return None


def _unit_values(ctx: AuditContext) -> dict[str, str]:
    """``[Service]`` settings of clawpen.service and its drop-ins (the last value wins; an empty
    value resets)."""
    values: dict[str, str] = {}
    files = [ctx.path(UNIT)]
    with contextlib.suppress(OSError):
        files += sorted(ctx.path(UNIT + ".d").glob("*.conf"))
    for path in files:
        section = ""
        for raw in (read_text(path) or "").splitlines():
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
                key, value = (p.strip() for p in line.split("=", 1))
                if value:
                    values[key] = value
                else:
                    values.pop(key, None)
    return values


# directive -> accepted values (empty: any value); what a root daemon that builds sandboxes can have
WANTED = {
    "ProtectSystem": ("strict", "full"),
    "NoNewPrivileges": ("yes", "true"),
    "PrivateTmp": ("yes", "true"),
    "PrivateDevices": ("yes", "true"),
    "ProtectKernelModules": ("yes", "true"),
    "ProtectClock": ("yes", "true"),
    "RestrictSUIDSGID": ("yes", "true"),
    "LockPersonality": ("yes", "true"),
    "RestrictRealtime": ("yes", "true"),
    "SystemCallArchitectures": ("native",),
    "CapabilityBoundingSet": (),
    "SystemCallFilter": (),
    "UMask": ("0077", "0027", "077", "027"),
}
NOT_FOR_CLAWPEN = (
    "User= (it starts each bot as its own uid), ProtectKernelTunables/ProtectControlGroups/"
    "ProtectHostname (bubblewrap needs a fresh /proc, cgroups and sethostname), "
    "MemoryDenyWriteExecute (bots' JITs)"
)


def unit(ctx: AuditContext) -> list[AuditFinding]:
    """clawpen.service's exposure: systemd-analyze's rating (live when systemd runs, else offline
    on the root's unit file), or the hardening directives the unit file lacks."""
    path = ctx.path(UNIT)
    if not path.exists():
        return [
            finding(
                NO_UNIT,
                Severity.INFO,
                f"{UNIT} is not installed",
                "without its unit the daemon does not start at boot nor restart after a crash, and runs "
                "without the sandboxing the unit gives it",
                "clawpen daemon install && systemctl enable --now clawpen",
                where=UNIT,
            )
        ]
    if ctx.live and ctx.root == Path("/") and Path("/run/systemd/system").is_dir():
        argv = ["systemd-analyze", "security", "--no-pager", "clawpen.service"]
    else:
        argv = [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--root={ctx.root}",
            "--no-pager",
            "clawpen.service",
        ]
    done = run_command(argv, timeout=30)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", done.stdout if done else "")
    if m:
        level, label = float(m.group(1)), m.group(2).upper()
        if label not in ("MEDIUM", "EXPOSED", "UNSAFE"):
            return []
        return [
            finding(
                EXPOSURE,
                Severity.MEDIUM if label == "MEDIUM" else Severity.HIGH,
                f"systemd-analyze rates clawpen.service {level} {label} (clawpen's own unit rates 4.1 OK)",
                "the daemon runs as root and starts every bot: a sandboxed unit limits what a hijacked "
                "daemon can change on the host",
                "clawpen daemon install (rewrites the hardened unit), then `systemctl daemon-reload && "
                "systemctl restart clawpen`; see `systemd-analyze security clawpen.service`",
                where=UNIT,
                data={"exposure": level, "label": label},
            )
        ]
    values = _unit_values(ctx)
    missing = [k for k, ok in WANTED.items() if k not in values or (ok and values[k].lower() not in ok)]
    if not missing:
        return []
    return [
        finding(
            HARDENING,
            Severity.HIGH if len(missing) >= 6 else Severity.MEDIUM,
            f"clawpen.service lacks {len(missing)} hardening directive{'s' if len(missing) > 1 else ''}: "
            + ", ".join(missing),
            "the daemon runs as root and starts every bot: a sandboxed unit limits what a hijacked daemon "
            f"can change on the host (not expected, as the daemon needs them: {NOT_FOR_CLAWPEN})",
            "clawpen daemon install (rewrites the hardened unit), then `systemctl daemon-reload && "
            "systemctl restart clawpen`",
            where=UNIT,
            data={"missing": missing},
        )
    ]


def time_sync(ctx: AuditContext) -> list[AuditFinding]:
    """A time-sync client: timedatectl's NTP setting when systemd runs, else a running daemon
    (live) or an installed package (another root)."""
    installed = sorted(set(TIME_PACKAGES) & dpkg_installed(ctx))
    how = ""
    if ctx.live and ctx.root == Path("/"):
        done = None
        if Path("/run/systemd/system").is_dir():
            done = run_command(["timedatectl", "show"])
        props = dict(
            line.split("=", 1)
            for line in (done.stdout if done and done.returncode == 0 else "").splitlines()
            if "=" in line
        )
        running = sorted(set(TIME_DAEMONS) & process_names())
        if props.get("NTP") == "yes" or running:
            return []
        how = "no time-sync daemon runs" + (f" ({', '.join(installed)} installed)" if installed else "")
        if props.get("NTP") == "no":
            how = "timedatectl says NTP=no and " + how
    elif installed or ctx.path("/usr/sbin/chronyd").exists():
        return []
    else:
        how = "no time-sync client is installed (systemd-timesyncd, chrony, ntp)"
    return [
        finding(
            TIME,
            Severity.MEDIUM,
            how,
            "TLS certificates, log timestamps, login-burst detection and leases all need the right time",
            "apt-get install systemd-timesyncd && timedatectl set-ntp true (or chrony); in a container "
            "the host keeps the clock: audit the host",
        )
    ]
