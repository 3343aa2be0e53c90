"""``clawpen doctor``: check this host for what the namespace sandbox tier needs, with fixes.

``sandbox tier`` checks: root, kernel (>= 5.3 for pidfd_open, 5.10+ recommended), bubblewrap
(>= 0.8.0), unprivileged user namespaces (tested for real: ``bwrap --unshare-user`` as uid 65534,
the way clawpen starts bwrap), seccomp, libseccomp + pyseccomp, the cgroup layout (v2 or
v1/hybrid), each controller, and creating (then removing) a test cgroup. ``host`` checks follow
clawpen's deployment practice (alert above 85% CPU or under 500 MB available memory; a dedicated
host has >= 4 cores and 8 GB): CPU, load, memory, swap, disk under the state directory, network
(read from /proc and /sys; nothing is contacted). ``container tier`` (optional: a warning when
no engine answers): each engine that answers (Docker Engine, Podman's Docker API), its version,
cgroup driver, rootless, userns-remap, the base image in its store. ``vm tier`` (optional):
QEMU, KVM or TCG and why, the guest kernel (:mod:`clawpen.vm.report`).

Warnings (``ok`` and ``warn``) do not fail :func:`checks_ok`. All I/O goes through :class:`Probe`
so tests can fake the host. ``detail`` and ``hint`` are single lines.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from clawpen.container.image import BASE_TAG
from clawpen.container.report import EngineReport
from clawpen.doctor_probe import RUNTIME_PATH
from clawpen.doctor_probe import Probe as Probe  # noqa: PLC0414 (re-export: tests fake it)
from clawpen.sandbox.cgroups import V1_CONTROLLERS, V2_CONTROLLERS

SANDBOX, HOST, CONTAINER, VM = "sandbox tier", "host", "container tier", "vm tier"
CLUSTER = "failover cluster"
GiB = 1024**3
NOBODY = 65534
CGROUP_ROOT = "/sys/fs/cgroup"
MIN_KERNEL, REC_KERNEL = (5, 3), (5, 10)
MIN_BWRAP, REC_LIBSECCOMP = (0, 8, 0), (2, 5, 0)
CPU_BUSY_PCT, HOST_CORES, HOST_MEMORY = 85.0, 4, 8 * 10**9
MEM_FAIL, MEM_WARN = 500 * 10**6, GiB
DISK_FAIL, DISK_FAIL_PCT = GiB, 5.0

_OPTIONAL = {"io": "io weights are not applied", "freezer": "kill falls back to repeated SIGKILL"}
_KCONFIG = {"memory": "MEMCG", "cpu": "CGROUP_SCHED", "pids": "CGROUP_PIDS", "blkio": "BLK_CGROUP"}
_KCONFIG |= {"io": "BLK_CGROUP", "freezer": "CGROUP_FREEZER"}
_USERNS_SYSCTLS = (  # sysctl, value that blocks, value that allows
    ("user.max_user_namespaces", 0, 15000),
    ("kernel.unprivileged_userns_clone", 0, 1),
    ("kernel.apparmor_restrict_unprivileged_userns", 1, 0),
)


@dataclass(frozen=True)
class Check:
    """One finding. ``hint`` says how to fix it when ``ok`` is false (or ``warn`` is true)."""

    group: str
    name: str
    ok: bool
    detail: str
    hint: str | None
    warn: bool = False


_sb, _host = partial(Check, SANDBOX), partial(Check, HOST)


@dataclass(frozen=True)
class CgroupLayout:
    """``version`` 2 (unified), 1 (v1; hybrid when a cgroup2 is mounted at ``unified`` too) or
    0 (nothing mounted); ``hierarchies`` maps each usable controller to its mount point."""

    version: int
    hierarchies: dict[str, str] = field(default_factory=dict)
    unified: str | None = None


def parse_cgroup_layout(mounts: str, v2_controllers: str | None, root: str = CGROUP_ROOT) -> CgroupLayout:
    """The layout from /proc/self/mounts text and the root's ``cgroup.controllers`` (``None`` when
    missing), decided as :func:`clawpen.sandbox.cgroups.detect` decides it."""
    top = os.path.normpath(root)
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = os.path.normpath(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
        if fields[2] == "cgroup2" and (unified is None or point == top):
            unified = point
        elif fields[2] == "cgroup" and (point == top or point.startswith(top.rstrip("/") + "/")):
            for controller in fields[3].split(","):
                if controller in V1_CONTROLLERS:
                    v1.setdefault(controller, point)
    if unified == top or (not v1 and v2_controllers is not None):
        offered = (v2_controllers or "").split()
        return CgroupLayout(2, {c: top for c in V2_CONTROLLERS if c in offered}, top)
    return CgroupLayout(1 if v1 else 0, v1, unified)


def _version(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in m.groups()) if m else ()


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 1024**2:.0f} MiB"


def _first_line(text: str, rc: int) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), f"exit status {rc}")


def _sysctl(p: Probe, name: str) -> int | None:
    text = (p.read_text("/proc/sys/" + name.replace(".", "/")) or "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _install(p: Probe, debian: str, other: str) -> str:
    """How to install a package: the apt-get command on Debian and its derivatives."""
    release = p.read_text("/etc/os-release") or ""
    if re.search(r"^ID(_LIKE)?=.*\b(debian|ubuntu)\b", release, re.MULTILINE):
        return f"apt-get install {debian}"
    return f"install {other} with your package manager (apt-get install {debian} on Debian)"


def _root(p: Probe) -> list[Check]:
    if (uid := p.euid()) == 0:
        return [_sb("root", True, "running as root", None)]
    hint = "run with sudo: clawpen needs root to switch to the bots' uids and create cgroups"
    return [_sb("root", False, f"running as uid {uid}, not root", hint)]


def _kernel(p: Probe) -> list[Check]:
    release = (p.read_text("/proc/sys/kernel/osrelease") or "").strip()
    v, hint = _version(release), "upgrade to Linux 5.10 or newer"
    if not v:
        return [_sb("kernel", False, f"cannot read the kernel release ({release!r})", hint)]
    if v < MIN_KERNEL:
        return [_sb("kernel", False, f"{_dotted(v)} (< 5.3: no pidfd_open)", hint)]
    if v < REC_KERNEL:
        return [_sb("kernel", True, f"{_dotted(v)} (>= 5.3, 5.10+ recommended)", hint, warn=True)]
    return [_sb("kernel", True, f"{_dotted(v)} (>= 5.10)", None)]


def _bubblewrap(p: Probe, path: str | None) -> list[Check]:
    if path is None:
        return [_sb("bubblewrap", False, "bwrap not found in PATH", _install(p, "bubblewrap", "bubblewrap"))]
    rc, out = p.run([path, "--version"])
    if not (v := _version(out) if rc == 0 else ()):
        hint = "reinstall it: " + _install(p, "--reinstall bubblewrap", "bubblewrap")
        return [_sb("bubblewrap", False, f"{path} --version failed: {_first_line(out, rc)}", hint)]
    found = f"bwrap {_dotted(v)} at {path}"
    if v < MIN_BWRAP:
        hint = "upgrade bubblewrap to >= 0.8.0 (clawpen uses --disable-userns, --bind-fd and --size)"
        return [_sb("bubblewrap", False, f"{found} (< 0.8.0)", hint)]
    if os.path.dirname(path) not in RUNTIME_PATH.split(":"):
        detail = f"{found} (clawpen runs bwrap with PATH={RUNTIME_PATH})"
        return [_sb("bubblewrap", True, detail, f"ln -s {path} /usr/bin/bwrap", warn=True)]
    return [_sb("bubblewrap", True, found, None)]


def _userns(p: Probe, bwrap: str | None) -> list[Check]:
    values = {key: _sysctl(p, key) for key, _, _ in _USERNS_SYSCTLS}
    found = ", ".join(f"{k.split('.')[1]}={v}" for k, v in values.items() if v is not None)
    found = f"; {found}" if found else ""
    fixes = [f"sysctl -w {key}={good}" for key, bad, good in _USERNS_SYSCTLS if values[key] == bad]
    if fixes:
        hint = "; ".join(fixes) + " (persist in /etc/sysctl.d/)"
        if values["kernel.apparmor_restrict_unprivileged_userns"] == 1:
            hint += "; Ubuntu 24.04+ restricts them with AppArmor"
    else:
        hint = "no CONFIG_USER_NS, a container's seccomp profile or an LSM blocks them; see dmesg"
    uid = p.euid()
    as_uid = NOBODY if uid == 0 else None
    who = f"uid {uid if as_uid is None else as_uid}"
    argv = [bwrap or "bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"]
    rc, out = (127, "no bwrap") if bwrap is None else p.run(argv, as_uid)
    if rc == 127:  # bwrap itself could not be started: judge by the sysctls alone
        hint, detail = "; ".join(["make bubblewrap work to test them", *fixes]), _first_line(out, rc)
        return [_sb("user namespaces", not fixes, f"not tested ({detail}){found}", hint, warn=True)]
    if rc == 0:
        return [_sb("user namespaces", True, f"work for {who}{found}", None)]
    detail = f"bwrap --unshare-user fails for {who}: {_first_line(out, rc)}{found}"
    return [_sb("user namespaces", False, detail, hint)]


def _seccomp(p: Probe) -> list[Check]:
    mode = re.search(r"^Seccomp:\s*(\d+)", p.read_text("/proc/self/status") or "", re.MULTILINE)
    actions = (p.read_text("/proc/sys/kernel/seccomp/actions_avail") or "").split()
    kconfig = "use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER"
    if mode is None:
        kernel = _sb("seccomp", False, "not in the kernel (no Seccomp in /proc/self/status)", kconfig)
    elif "errno" not in actions:
        kernel = _sb("seccomp", False, "no filter mode (no errno in seccomp/actions_avail)", kconfig)
    else:
        own = "unfiltered" if mode.group(1) == "0" else f"mode {mode.group(1)}"
        kernel = _sb("seccomp", True, f"filters supported (this process: {own})", None)
    try:
        lib = p.libseccomp_version()
    except (OSError, AttributeError) as exc:
        hint = _install(p, "libseccomp2", "libseccomp")
        return [kernel, _sb("libseccomp", False, f"libseccomp.so.2 does not load: {exc}", hint)]
    try:
        binding = p.module_version("pyseccomp")
    except (ImportError, OSError, AttributeError) as exc:
        hint = "install it into clawpen's environment: pip install 'pyseccomp>=0.1.2'"
        return [kernel, _sb("libseccomp", False, f"libseccomp {lib}; pyseccomp: {exc}", hint)]
    found = f"libseccomp {lib} (pyseccomp {binding})"
    if _version(lib) < REC_LIBSECCOMP:
        hint = "upgrade libseccomp to 2.5 or newer: older ones do not know recent syscalls"
        return [kernel, _sb("libseccomp", True, found, hint, warn=True)]
    return [kernel, _sb("libseccomp", True, found, None)]


def _controller(layout: CgroupLayout, role: str, known: dict[str, tuple[int, int]]) -> Check:
    """One controller: present, optional and missing (a warning), or missing (a failure)."""
    v2, name = layout.version == 2, f"cgroup {role}"
    ctrl = "blkio" if role == "io" and not v2 else role
    if v2 and role == "freezer":
        return _sb(name, True, "built into v2 (cgroup.freeze, cgroup.kill)", None)
    if ctrl in layout.hierarchies:
        where = "enabled in v2" if v2 else f"mounted at {layout.hierarchies[ctrl]}"
        return _sb(name, True, f"{ctrl} {where}", None)
    hierarchy, enabled = known.get(ctrl, (-1, -1))
    if hierarchy < 0:
        why, hint = "not built into this kernel", f"use a kernel with CONFIG_{_KCONFIG[ctrl]}"
    elif not enabled:
        why, hint = "disabled at boot", f"add cgroup_enable={ctrl} to the kernel command line and reboot"
    elif v2 and hierarchy > 0:
        why, hint = "bound to a v1 hierarchy", f"unmount v1 {ctrl} or boot with cgroup_no_v1=all"
    elif v2:
        why, hint = f"not offered by {CGROUP_ROOT}/cgroup.controllers", "check the cgroup2 mount and dmesg"
    else:
        mount = f"{CGROUP_ROOT}/{ctrl}"
        why, hint = "not mounted", f"mkdir -p {mount} && mount -t cgroup -o {ctrl} cgroup {mount}"
    optional = _OPTIONAL.get(role)
    detail = f"{ctrl} {why}" + (f" (optional: {optional})" if optional else "")
    return _sb(name, optional is not None, detail, hint, warn=optional is not None)


def _cgroups(p: Probe) -> list[Check]:
    root, mounts = CGROUP_ROOT, p.read_text("/proc/self/mounts") or ""
    layout = parse_cgroup_layout(mounts, p.read_text(f"{root}/cgroup.controllers"))
    if layout.version == 0:
        hint = f"mount -t cgroup2 none {root}"
        return [_sb("cgroups", False, f"no cgroup hierarchy mounted under {root}", hint)]
    if layout.version == 2:
        detail = f"v2 (unified) at {root}"
    elif layout.unified:
        detail = f"v1/hybrid (cgroup2 at {layout.unified} unused)"
    else:
        detail = f"v1 (controllers under {root})"
    known: dict[str, tuple[int, int]] = {}  # /proc/cgroups: controller -> (hierarchy id, enabled)
    for line in (p.read_text("/proc/cgroups") or "").splitlines():
        cols = line.split()
        if len(cols) == 4 and cols[1].isdigit() and cols[3].isdigit():
            known[cols[0]] = (int(cols[1]), int(cols[3]))
    checks = [_sb("cgroups", True, detail, None)]
    checks += [_controller(layout, role, known) for role in ("memory", "cpu", "pids", "io", "freezer")]
    tops = sorted({layout.hierarchies[c] for c in ("memory", "cpu", "pids") if c in layout.hierarchies})
    for top in tops:
        if (error := p.mkdir_rmdir(f"{top}/clawpen-doctor-{os.getpid()}")) is not None:
            if p.euid() != 0:
                hint = "run with sudo: creating cgroups needs root"
            elif "read-only" in error.lower():
                hint = "the cgroup filesystem is read-only (in a container?): run on the host"
            else:
                hint = "check the cgroup mounts and dmesg"
            return [*checks, _sb("cgroup create", False, f"cannot create a cgroup in {top}: {error}", hint)]
    if tops:
        where = tops[0] if len(tops) == 1 else f"{len(tops)} hierarchies"
        checks.append(_sb("cgroup create", True, f"created and removed a test cgroup in {where}", None))
    return checks


def _cpu(p: Probe) -> list[Check]:
    cores, busy = p.cpu_count(), p.cpu_percent()
    hints = []
    if busy > CPU_BUSY_PCT:
        hints.append(f"CPU above {CPU_BUSY_PCT:.0f}%: see what keeps it busy (top) before adding bots")
    if cores < HOST_CORES:
        hints.append(f"a dedicated host should have >= {HOST_CORES} cores")
    cpu = _host(
        "cpu",
        True,
        f"{cores} core{'s' if cores != 1 else ''}, {busy:.0f}% busy",
        "; ".join(hints) or None,
        bool(hints),
    )
    load = (p.read_text("/proc/loadavg") or "").split()[:3]
    if len(load) < 3:
        return [cpu, _host("load", True, "unknown (no /proc/loadavg)", None, warn=True)]
    high = float(load[1]) > cores
    hint = "the 5-minute load is above the core count: bots will wait for CPU" if high else None
    return [cpu, _host("load", True, f"{' '.join(load)} (1/5/15 min, {cores} cores)", hint, high)]


def _memory(p: Probe) -> list[Check]:
    info: dict[str, int] = {}  # /proc/meminfo in bytes
    for line in (p.read_text("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        if (parts := rest.split()) and parts[0].isdigit():
            info[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total, avail = info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    detail = f"available {_size(avail)} of {_size(total)}"
    hints = []
    if avail < MEM_WARN:
        hints.append("under 1 GiB available: bots may be OOM-killed")
    if total < 0.9 * HOST_MEMORY:  # "8 GB" of RAM shows as ~7.6 GiB MemTotal
        hints.append("a dedicated host should have >= 8 GB RAM")
    if avail < MEM_FAIL:
        memory = _host("memory", False, detail, "under 500 MB available: stop bots or services, or add RAM")
    else:
        memory = _host("memory", True, detail, "; ".join(hints) or None, warn=bool(hints))
    swap, swap_free = info.get("SwapTotal", 0), info.get("SwapFree", 0)
    used = f"{_size(swap)}, {100 * (swap - swap_free) / swap:.0f}% used" if swap else "none"
    return [memory, _host("swap", True, used, None)]


def _disk(p: Probe, state_dir: Path) -> list[Check]:
    path = state_dir.absolute()
    while not p.exists(str(path)) and path != path.parent:
        path = path.parent
    try:
        total, avail = p.disk_usage(str(path))
    except OSError as exc:
        return [_host("disk", False, f"cannot stat {path}: {exc.strerror}", None)]
    pct = 100 * avail / total if total else 0.0
    detail = f"free {_size(avail)} of {_size(total)} ({pct:.0f}%) for {state_dir}"
    if avail < DISK_FAIL or pct < DISK_FAIL_PCT:
        hint = f"free space under {path} (needs >= 1 GiB and 5%) or set CLAWPEN_HOME to a larger filesystem"
        return [_host("disk", False, detail, hint)]
    return [_host("disk", True, detail, None)]


def _network(p: Probe) -> list[Check]:
    flags = {
        i: (p.read_text(f"/sys/class/net/{i}/flags") or "0").strip() for i in p.listdir("/sys/class/net")
    }
    up = [iface for iface, hexa in flags.items() if iface != "lo" and int(hexa, 16) & 0x1]  # IFF_UP
    routes = []
    for line in (p.read_text("/proc/net/route") or "").splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[1] == f[7] == "00000000" and int(f[3], 16) & 0x1:  # RTF_UP
            routes.append(f"via {socket.inet_ntoa(bytes.fromhex(f[2])[::-1])} dev {f[0]}")
    for line in (p.read_text("/proc/net/ipv6_route") or "").splitlines():
        f = line.split()  # ::/0, not a reject route (RTF_REJECT) and not on lo
        if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo" and not int(f[8], 16) & 0x200:
            routes.append(f"IPv6 dev {f[9]}")
    if not up:
        hint = "bring an interface up (ip link set <iface> up) if bots need the network"
        return [_host("network", True, "no interface up besides lo", hint, warn=True)]
    if not routes:
        hint = "add one (ip route add default via <gateway>) if bots must reach other networks"
        return [_host("network", True, f"up: {', '.join(up)}; no default route", hint, warn=True)]
    return [_host("network", True, f"up: {', '.join(up)}; default route {', '.join(routes)}", None)]


def _engine(p: Probe) -> list[Check]:
    """Each engine that answers (Docker, Podman), the first as ``engine`` and ``base image``, a
    second as ``engine (podman)``...; an engine whose socket is there but does not answer warns."""
    checks: list[Check] = []
    for name in ("docker", "podman"):
        found = p.container_engine(name)
        tail = "" if not any(c.name == "engine" for c in checks) else f" ({name})"
        if isinstance(found, EngineReport):
            checks += _engine_checks(found, tail)
        elif "is not running" not in found.what:  # its socket is there: it should answer
            checks.append(Check(CONTAINER, f"engine{tail}", True, found.what, found.hint, warn=True))
    if not any(c.ok and not c.warn for c in checks):
        found = p.container_engine()
        if not isinstance(found, EngineReport):
            why = f"{found.what}; the container tier is optional"
            return [Check(CONTAINER, "engine", True, why, found.hint, warn=True)]
    return checks


def _engine_checks(found: EngineReport, tail: str) -> list[Check]:
    mode = "rootless" if found.rootless else "rootful"
    remap = "on" if found.userns_remap else "off"
    detail = f"{found.engine} {found.version} at {found.socket} ({mode}, userns-remap {remap}, "
    detail += f"cgroup driver {found.cgroup_driver}, cgroup v{found.cgroup_version})"
    base = Check(CONTAINER, f"base image{tail}", True, f"{BASE_TAG} is there", None)
    if not found.base_image:
        hint = "clawpen image build --base" + (f" --engine {found.engine}" if tail else "")
        base = Check(CONTAINER, f"base image{tail}", True, f"no {BASE_TAG}", hint, warn=True)
    return [Check(CONTAINER, f"engine{tail}", True, detail, None), base]


def run_checks(
    *, state_dir: Path, probe: Probe | None = None, spec_file: Path = Path("clawpen.toml")
) -> list[Check]:
    """Every sandbox tier check, then every host check, in display order.

    A check that crashes becomes a failed check instead of ending the doctor.
    """
    p = probe or Probe()
    bwrap = p.which("bwrap")
    steps: list[tuple[str, str, Callable[[], list[Check]]]] = [
        (SANDBOX, "root", lambda: _root(p)),
        (SANDBOX, "kernel", lambda: _kernel(p)),
        (SANDBOX, "bubblewrap", lambda: _bubblewrap(p, bwrap)),
        (SANDBOX, "user namespaces", lambda: _userns(p, bwrap)),
        (SANDBOX, "seccomp", lambda: _seccomp(p)),
        (SANDBOX, "cgroups", lambda: _cgroups(p)),
        (HOST, "cpu", lambda: _cpu(p)),
        (HOST, "memory", lambda: _memory(p)),
        (HOST, "disk", lambda: _disk(p, state_dir)),
        (HOST, "network", lambda: _network(p)),
        (CONTAINER, "engine", lambda: _engine(p)),
        (VM, "qemu", lambda: [Check(VM, *f) for f in p.vm_findings()]),
        (CLUSTER, "cluster", lambda: [Check(CLUSTER, *f) for f in p.cluster_findings(spec_file, state_dir)]),
    ]
    checks: list[Check] = []
    for group, name, step in steps:
        try:
            checks += step()
        except Exception as exc:
            checks.append(Check(group, name, False, f"check crashed: {type(exc).__name__}: {exc}", None))
    return checks


def checks_ok(checks: Sequence[Check]) -> bool:
    """True when nothing failed (warnings do not count)."""
    return all(c.ok for c in checks)
