"""doctor.py against a fake host (a Probe subclass), plus one run against this machine.

The fake is a healthy Debian 12 box with cgroup v2, bwrap 0.8.0 and enough of everything; each
test breaks one thing and checks the finding and its fix.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pytest

from clawpen.container.report import EngineReport
from clawpen.doctor import (
    CONTAINER,
    HOST,
    SANDBOX,
    CgroupLayout,
    Check,
    Probe,
    checks_ok,
    parse_cgroup_layout,
    run_checks,
)
from clawpen.errors import ClawpenError, HostError
from clawpen.finding import Finding as VmFinding

GiB = 1024**3
MOUNTS_V2 = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime,errors=remount-ro 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
"""
# This machine's table: v1 controllers under /sys/fs/cgroup plus an empty cgroup2 at unified/.
MOUNTS_HYBRID = """\
proc /proc proc rw,relatime 0 0
/dev/vda / ext4 rw,relatime,discard 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
PROC_CGROUPS_V2 = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + "".join(
    f"{c}\t0\t12\t1\n" for c in ("cpuset", "cpu", "cpuacct", "blkio", "memory", "freezer", "pids")
)
PROC_CGROUPS_HYBRID = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + "".join(
    f"{c}\t{h}\t1\t1\n"
    for c, h in (
        ("cpuset", 3),
        ("cpu", 1),
        ("cpuacct", 2),
        ("blkio", 7),
        ("memory", 4),
        ("freezer", 6),
        ("pids", 8),
    )
)
MEMINFO = "MemTotal: 16314928 kB\nMemFree: 9000000 kB\nMemAvailable: {avail} kB\nSwapTotal: 0 kB\n"
ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nID=debian\n'
DEBIAN_NO_USERNS = (
    "bwrap: No permissions to creating new namespace, likely because the kernel does not allow "
    "non-privileged user namespaces. On e.g. debian this can be enabled with "
    "'sysctl kernel.unprivileged_userns_clone=1'."
)


class FakeProbe(Probe):
    """A healthy Debian 12 host with cgroup v2; tests change the attributes they care about."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {
            "/proc/sys/kernel/osrelease": "6.1.0-18-amd64\n",
            "/proc/sys/user/max_user_namespaces": "63422\n",
            "/proc/self/mounts": MOUNTS_V2,
            "/proc/cgroups": PROC_CGROUPS_V2,
            "/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
            "/proc/self/status": "Name:\tpython3\nSeccomp:\t0\nSeccomp_filters:\t0\n",
            "/proc/sys/kernel/seccomp/actions_avail": "kill_process kill_thread trap errno trace log allow\n",
            "/proc/meminfo": MEMINFO.format(avail=12_000_000),
            "/proc/loadavg": "0.30 0.25 0.20 1/230 4242\n",
            "/proc/net/route": ROUTE,
            "/sys/class/net/lo/flags": "0x9\n",
            "/sys/class/net/eth0/flags": "0x1003\n",
            "/etc/os-release": DEBIAN,
        }
        self.dirs = {"/", "/var", "/var/lib"}
        self.uid = 0
        self.bwrap: str | None = "/usr/bin/bwrap"
        self.bwrap_version = "bubblewrap 0.8.0"
        self.userns: tuple[int, str] = (0, "")
        self.mkdir_error: str | None = None
        self.disk = (100 * GiB, 40 * GiB)
        self.busy = 10.0
        self.libseccomp: str | Exception = "2.5.4"
        self.runs: list[tuple[list[str], int | None]] = []
        self.mkdirs: list[str] = []
        self.disk_paths: list[str] = []
        self.engine: EngineReport | ClawpenError = EngineReport(
            "docker", "/run/docker.sock", "20.10.24", "cgroupfs", "2", False, False, True
        )
        self.podman: EngineReport | ClawpenError = HostError(
            "the podman engine is not running", where="container engine", hint="start podman"
        )

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix) :].split("/")[0] for p in self.files if p.startswith(prefix)})

    def exists(self, path: str) -> bool:
        return path in self.dirs

    def which(self, name: str) -> str | None:
        return self.bwrap if name == "bwrap" else None

    def euid(self) -> int:
        return self.uid

    def run(self, argv: Sequence[str], as_uid: int | None = None, timeout: float = 10.0) -> tuple[int, str]:
        self.runs.append((list(argv), as_uid))
        if list(argv[1:]) == ["--version"]:
            return 0, self.bwrap_version
        if "--unshare-user" in argv:
            return self.userns
        raise AssertionError(f"unexpected command {argv}")

    def mkdir_rmdir(self, path: str) -> str | None:
        self.mkdirs.append(path)
        return self.mkdir_error

    def disk_usage(self, path: str) -> tuple[int, int]:
        self.disk_paths.append(path)
        return self.disk

    def cpu_count(self) -> int:
        return 8

    def cpu_percent(self) -> float:
        return self.busy

    def libseccomp_version(self) -> str:
        if isinstance(self.libseccomp, Exception):
            raise self.libseccomp
        return self.libseccomp

    def container_engine(self, wanted: str = "auto") -> EngineReport | ClawpenError:
        return self.podman if wanted == "podman" else self.engine

    def vm_findings(self) -> list[VmFinding]:
        return [VmFinding("qemu", True, "/usr/bin/qemu-system-x86_64: QEMU emulator version 7.2.22")]

    def cluster_findings(self, spec_file: Path, state_dir: Path) -> list[VmFinding]:
        return []  # no spec with a [cluster] (tests/integration/test_ha_etcd.py checks a real one)

    def module_version(self, name: str) -> str:
        assert name == "pyseccomp"
        return "0.1.2"


STATE = Path("/var/lib/clawpen")


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def check(probe: FakeProbe, name: str, state: Path = STATE) -> Check:
    return by_name(run_checks(state_dir=state, probe=probe))[name]


def test_healthy_v2_host_passes_with_one_line_details() -> None:
    probe = FakeProbe()
    checks = run_checks(state_dir=STATE, probe=probe)
    assert [c.name for c in checks] == [
        "root",
        "kernel",
        "bubblewrap",
        "user namespaces",
        "seccomp",
        "libseccomp",
        "cgroups",
        "cgroup memory",
        "cgroup cpu",
        "cgroup pids",
        "cgroup io",
        "cgroup freezer",
        "cgroup create",
        "cpu",
        "load",
        "memory",
        "swap",
        "disk",
        "network",
        "engine",
        "base image",
        "qemu",
    ]
    assert [c for c in checks if not c.ok or c.warn] == []
    assert checks_ok(checks)
    assert {c.group for c in checks[:13]} == {SANDBOX} and {c.group for c in checks[13:19]} == {HOST}
    assert {c.group for c in checks[19:21]} == {CONTAINER} and checks[21].group == "vm tier"
    found = by_name(checks)
    assert found["kernel"].detail == "6.1.0 (>= 5.10)"
    assert found["bubblewrap"].detail == "bwrap 0.8.0 at /usr/bin/bwrap"
    assert found["libseccomp"].detail == "libseccomp 2.5.4 (pyseccomp 0.1.2)"
    assert found["cgroups"].detail == "v2 (unified) at /sys/fs/cgroup"
    assert found["cgroup freezer"].detail.startswith("built into v2")
    assert found["memory"].detail == "available 11.4 GiB of 15.6 GiB"
    assert found["disk"].detail == "free 40.0 GiB of 100.0 GiB (40%) for /var/lib/clawpen"
    assert found["network"].detail == "up: eth0; default route via 192.0.2.1 dev eth0"
    assert found["swap"].detail == "none"
    # The userns test runs bwrap as nobody with the real command line; v2 gets one test cgroup.
    assert (["/usr/bin/bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"], 65534) in probe.runs
    assert [os.path.dirname(p) for p in probe.mkdirs] == ["/sys/fs/cgroup"]
    # What the CLI prints: one line each, and --json is plain dicts.
    assert all("\n" not in c.detail and "\n" not in (c.hint or "") for c in checks)
    assert json.loads(json.dumps([asdict(c) for c in checks]))[0] == {
        "group": SANDBOX,
        "name": "root",
        "ok": True,
        "detail": "running as root",
        "hint": None,
        "warn": False,
    }


def test_missing_bwrap_gives_the_apt_hint() -> None:
    probe = FakeProbe()
    probe.bwrap = None
    checks = by_name(run_checks(state_dir=STATE, probe=probe))
    assert not checks["bubblewrap"].ok
    assert checks["bubblewrap"].hint == "apt-get install bubblewrap"
    userns = checks["user namespaces"]
    assert userns.ok and userns.warn and userns.detail.startswith("not tested (no bwrap)")
    assert probe.runs == []
    assert userns.hint == "make bubblewrap work to test them"
    assert not checks_ok(list(checks.values()))


def test_missing_bwrap_elsewhere_names_the_package() -> None:
    probe = FakeProbe()
    probe.bwrap = None
    probe.files["/etc/os-release"] = 'NAME="Fedora Linux"\nID=fedora\n'
    assert check(probe, "bubblewrap").hint == (
        "install bubblewrap with your package manager (apt-get install bubblewrap on Debian)"
    )


def test_old_bwrap_fails() -> None:
    probe = FakeProbe()
    probe.bwrap_version = "bubblewrap 0.6.1"
    found = check(probe, "bubblewrap")
    assert not found.ok
    assert found.detail == "bwrap 0.6.1 at /usr/bin/bwrap (< 0.8.0)"
    assert found.hint is not None and ">= 0.8.0" in found.hint and "--disable-userns" in found.hint


def test_userns_disabled_on_debian_gives_the_clone_sysctl() -> None:
    probe = FakeProbe()
    probe.files["/proc/sys/kernel/unprivileged_userns_clone"] = "0\n"
    probe.userns = (1, DEBIAN_NO_USERNS)
    found = check(probe, "user namespaces")
    assert not found.ok
    assert found.detail.startswith("bwrap --unshare-user fails for uid 65534: bwrap: No permissions")
    assert found.detail.endswith("; max_user_namespaces=63422, unprivileged_userns_clone=0")
    assert found.hint == "sysctl -w kernel.unprivileged_userns_clone=1 (persist in /etc/sysctl.d/)"


def test_userns_restricted_by_apparmor_on_ubuntu() -> None:
    probe = FakeProbe()
    probe.files["/etc/os-release"] = "NAME=Ubuntu\nVERSION_ID=24.04\nID=ubuntu\nID_LIKE=debian\n"
    probe.files["/proc/sys/kernel/unprivileged_userns_clone"] = "1\n"
    probe.files["/proc/sys/kernel/apparmor_restrict_unprivileged_userns"] = "1\n"
    probe.userns = (1, "bwrap: setting up uid map: Permission denied\n")
    found = check(probe, "user namespaces")
    assert not found.ok
    assert "setting up uid map: Permission denied" in found.detail
    assert found.hint is not None
    assert found.hint.startswith("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
    assert "Ubuntu 24.04+" in found.hint and "unprivileged_userns_clone" not in found.hint


def test_userns_limit_of_zero_gives_the_max_user_namespaces_sysctl() -> None:
    probe = FakeProbe()
    probe.files["/proc/sys/user/max_user_namespaces"] = "0\n"
    probe.userns = (1, "bwrap: No space left on device\n")
    found = check(probe, "user namespaces")
    assert not found.ok
    assert found.hint is not None and found.hint.startswith("sysctl -w user.max_user_namespaces=15000")


def test_userns_not_tested_when_bwrap_cannot_start() -> None:
    probe = FakeProbe()
    probe.files["/proc/sys/kernel/unprivileged_userns_clone"] = "0\n"
    probe.userns = (127, "Permission denied")
    found = check(probe, "user namespaces")
    assert not found.ok and found.warn
    assert (
        found.detail
        == "not tested (Permission denied); max_user_namespaces=63422, unprivileged_userns_clone=0"
    )
    assert found.hint == "make bubblewrap work to test them; sysctl -w kernel.unprivileged_userns_clone=1"


def test_userns_blocked_without_a_sysctl_culprit_points_elsewhere() -> None:
    probe = FakeProbe()
    probe.userns = (1, "")
    found = check(probe, "user namespaces")
    assert not found.ok and "exit status 1" in found.detail
    assert found.hint is not None and "dmesg" in found.hint and "sysctl" not in found.hint


def test_not_root_fails_with_sudo_and_tests_userns_as_itself() -> None:
    probe = FakeProbe()
    probe.uid = 1000
    probe.mkdir_error = "Permission denied"
    checks = by_name(run_checks(state_dir=STATE, probe=probe))
    assert not checks["root"].ok and checks["root"].hint is not None and "sudo" in checks["root"].hint
    assert checks["user namespaces"].ok and "uid 1000" in checks["user namespaces"].detail
    assert all(as_uid is None for _, as_uid in probe.runs)
    create = checks["cgroup create"]
    assert not create.ok and create.detail.endswith("Permission denied")
    assert create.hint == "run with sudo: creating cgroups needs root"


@pytest.mark.parametrize(
    ("avail_kb", "ok", "warn", "hint"),
    [
        (300_000, False, False, "under 500 MB available"),
        (800_000, True, True, "under 1 GiB available"),
        (12_000_000, True, False, None),
    ],
)
def test_memory_thresholds(avail_kb: int, ok: bool, warn: bool, hint: str | None) -> None:
    probe = FakeProbe()
    probe.files["/proc/meminfo"] = MEMINFO.format(avail=avail_kb)
    checks = run_checks(state_dir=STATE, probe=probe)
    found = by_name(checks)["memory"]
    assert (found.ok, found.warn) == (ok, warn)
    if hint is None:
        assert found.hint is None
    else:
        assert found.hint is not None and found.hint.startswith(hint)
    assert checks_ok(checks) is ok


def test_low_memory_fails() -> None:
    probe = FakeProbe()
    probe.files["/proc/meminfo"] = MEMINFO.format(avail=400_000)
    found = check(probe, "memory")
    assert not found.ok
    assert found.detail == "available 391 MiB of 15.6 GiB"


def test_small_host_and_busy_cpu_warn_without_failing() -> None:
    probe = FakeProbe()
    probe.files["/proc/meminfo"] = (
        "MemTotal: 4000000 kB\nMemAvailable: 3000000 kB\nSwapTotal: 1048576 kB\nSwapFree: 786432 kB\n"
    )
    probe.busy = 97.0
    checks = by_name(run_checks(state_dir=STATE, probe=probe))
    assert (
        checks["memory"].ok
        and checks["memory"].warn
        and checks["memory"].hint == "a dedicated host should have >= 8 GB RAM"
    )
    assert checks["cpu"].ok and checks["cpu"].warn and checks["cpu"].detail == "8 cores, 97% busy"
    assert checks["cpu"].hint is not None and "85%" in checks["cpu"].hint
    assert checks["swap"].detail == "1.0 GiB, 25% used" and not checks["swap"].warn
    assert checks_ok(list(checks.values()))


def test_parse_hybrid_mounts() -> None:
    layout = parse_cgroup_layout(MOUNTS_HYBRID, "")
    assert layout.version == 1
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.hierarchies == {
        c: f"/sys/fs/cgroup/{c}" for c in ("cpu", "cpuacct", "memory", "freezer", "blkio", "pids")
    }


def test_parse_v2_mounts_uses_the_offered_controllers() -> None:
    layout = parse_cgroup_layout(MOUNTS_V2, "cpuset cpu memory pids\n")
    assert layout == CgroupLayout(
        2, {"cpu": "/sys/fs/cgroup", "memory": "/sys/fs/cgroup", "pids": "/sys/fs/cgroup"}, "/sys/fs/cgroup"
    )


def test_parse_v1_comounts_and_nothing() -> None:
    mounts = (
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup /elsewhere/pids cgroup rw,pids 0 0\n"
    )
    layout = parse_cgroup_layout(mounts, None)
    assert layout == CgroupLayout(
        1,
        {
            "cpu": "/sys/fs/cgroup/cpu,cpuacct",
            "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
            "memory": "/sys/fs/cgroup/memory",
        },
    )
    assert parse_cgroup_layout("proc /proc proc rw 0 0\n", None).version == 0


def test_hybrid_host_checks_every_v1_hierarchy() -> None:
    probe = FakeProbe()
    probe.files["/proc/self/mounts"] = MOUNTS_HYBRID
    probe.files["/proc/cgroups"] = PROC_CGROUPS_HYBRID
    del probe.files["/sys/fs/cgroup/cgroup.controllers"]
    checks = by_name(run_checks(state_dir=STATE, probe=probe))
    assert checks["cgroups"].detail == "v1/hybrid (cgroup2 at /sys/fs/cgroup/unified unused)"
    assert checks["cgroup io"].detail == "blkio mounted at /sys/fs/cgroup/blkio"
    assert checks["cgroup freezer"].detail == "freezer mounted at /sys/fs/cgroup/freezer"
    assert checks["cgroup create"].detail == "created and removed a test cgroup in 3 hierarchies"
    assert sorted(os.path.dirname(p) for p in probe.mkdirs) == [
        f"/sys/fs/cgroup/{c}" for c in ("cpu", "memory", "pids")
    ]
    assert all(re.fullmatch(r"clawpen-doctor-\d+", os.path.basename(p)) for p in probe.mkdirs)
    assert checks_ok(list(checks.values()))


def test_v1_missing_controllers() -> None:
    probe = FakeProbe()
    probe.files["/proc/self/mounts"] = "\n".join(
        line for line in MOUNTS_HYBRID.splitlines() if "memory" not in line and "freezer" not in line
    )
    probe.files["/proc/cgroups"] = PROC_CGROUPS_HYBRID.replace("memory\t4\t1\t1", "memory\t0\t1\t0")
    del probe.files["/sys/fs/cgroup/cgroup.controllers"]
    checks = by_name(run_checks(state_dir=STATE, probe=probe))
    memory = checks["cgroup memory"]
    assert not memory.ok and memory.detail == "memory disabled at boot"
    assert memory.hint == "add cgroup_enable=memory to the kernel command line and reboot"
    freezer = checks["cgroup freezer"]
    assert freezer.ok and freezer.warn and "optional" in freezer.detail
    assert (
        freezer.hint
        == "mkdir -p /sys/fs/cgroup/freezer && mount -t cgroup -o freezer cgroup /sys/fs/cgroup/freezer"
    )


def test_v2_controller_held_by_v1_and_read_only_cgroupfs() -> None:
    probe = FakeProbe()
    probe.files["/sys/fs/cgroup/cgroup.controllers"] = "cpu io pids\n"
    probe.files["/proc/cgroups"] = PROC_CGROUPS_V2.replace("memory\t0", "memory\t4")
    probe.mkdir_error = "Read-only file system"
    checks = by_name(run_checks(state_dir=STATE, probe=probe))
    assert not checks["cgroup memory"].ok
    assert checks["cgroup memory"].hint == "unmount v1 memory or boot with cgroup_no_v1=all"
    assert not checks["cgroup create"].ok
    assert checks["cgroup create"].hint is not None and "read-only" in checks["cgroup create"].hint


@pytest.mark.parametrize(
    ("release", "ok", "warn"),
    [("6.18.44-fc-v782", True, False), ("5.4.0-150-generic", True, True), ("4.19.0-26-amd64", False, False)],
)
def test_kernel_versions(release: str, ok: bool, warn: bool) -> None:
    probe = FakeProbe()
    probe.files["/proc/sys/kernel/osrelease"] = release + "\n"
    found = check(probe, "kernel")
    assert (found.ok, found.warn) == (ok, warn)
    assert found.detail.startswith(".".join(release.split("-", maxsplit=1)[0].split(".")[:3]))


def test_seccomp_missing() -> None:
    probe = FakeProbe()
    probe.files["/proc/self/status"] = "Name:\tpython3\n"
    probe.libseccomp = OSError("libseccomp.so.2: cannot open shared object file: No such file or directory")
    checks = by_name(run_checks(state_dir=STATE, probe=probe))
    assert (
        not checks["seccomp"].ok
        and checks["seccomp"].hint is not None
        and "CONFIG_SECCOMP" in checks["seccomp"].hint
    )
    assert not checks["libseccomp"].ok and checks["libseccomp"].hint == "apt-get install libseccomp2"


def test_disk_walks_up_to_an_existing_parent_and_fails_when_low() -> None:
    probe = FakeProbe()
    probe.disk = (100 * GiB, 4 * GiB)  # 4%: under 5%
    found = check(probe, "disk", STATE / "deep" / "er")
    assert probe.disk_paths == ["/var/lib"]
    assert not found.ok and found.hint is not None and "CLAWPEN_HOME" in found.hint
    probe.disk = (4 * GiB, GiB // 2)  # 12%, but under 1 GiB
    assert not check(probe, "disk").ok


def test_network_without_default_route_or_interface_warns() -> None:
    probe = FakeProbe()
    probe.files["/proc/net/route"] = ROUTE.splitlines()[0] + "\n"
    found = check(probe, "network")
    assert found.ok and found.warn and found.detail == "up: eth0; no default route"
    probe.files["/sys/class/net/eth0/flags"] = "0x1002\n"
    found = check(probe, "network")
    assert found.ok and found.warn and found.detail == "no interface up besides lo"


def test_a_crashing_check_fails_alone() -> None:
    class Broken(FakeProbe):
        def cpu_percent(self) -> float:
            raise RuntimeError("no /proc/stat")

    checks = by_name(run_checks(state_dir=STATE, probe=Broken()))
    assert not checks["cpu"].ok and checks["cpu"].detail == "check crashed: RuntimeError: no /proc/stat"
    assert checks["memory"].ok and checks["disk"].ok


@pytest.mark.root
@pytest.mark.bwrap
def test_this_host_passes_the_sandbox_tier_checks(tmp_path: Path) -> None:
    checks = run_checks(state_dir=tmp_path / "state")
    sandbox = [c for c in checks if c.group == SANDBOX]
    assert [c for c in sandbox if not c.ok] == []
    names = {c.name for c in sandbox}
    assert {
        "root",
        "kernel",
        "bubblewrap",
        "user namespaces",
        "seccomp",
        "libseccomp",
        "cgroup create",
    } <= names
    assert {"cgroup memory", "cgroup cpu", "cgroup pids"} <= names
    assert by_name(checks)["user namespaces"].detail.startswith("work for uid 65534")
    assert {c.name for c in checks if c.group == HOST} == {"cpu", "load", "memory", "swap", "disk", "network"}
    # its probe cgroup is gone (clawpen-doctor-<pid>: a doctor running alongside has its own)
    assert glob.glob(f"/sys/fs/cgroup/**/clawpen-doctor-{os.getpid()}", recursive=True) == []
    # The real probe, as clawpen uses it: a command as nobody, and files that are not there.
    assert Probe().run(["id", "-u"], 65534) == (0, "65534")
    assert Probe().read_text("/nonexistent/clawpen") is None
    assert re.fullmatch(r"\d+\.\d+\.\d+", Probe().libseccomp_version())


def test_container_engine_is_described_and_its_absence_only_warns() -> None:
    probe = FakeProbe()
    probe.engine = HostError("the docker engine is not running", where="container engine", hint="start it")
    probe.podman = EngineReport(
        "podman", "/run/podman/podman.sock", "4.3.1", "systemd", "2", True, True, False
    )
    found = by_name(run_checks(state_dir=STATE, probe=probe))
    assert found["engine"].detail == (
        f"podman 4.3.1 at {probe.podman.socket} (rootless, userns-remap on, cgroup driver systemd, cgroup v2)"
    )
    assert (found["base image"].ok, found["base image"].warn) == (True, True)
    assert found["base image"].hint == "clawpen image build --base"
    # both engines answer: each is reported, Docker first (the one `engine = "auto"` picks)
    probe.engine = FakeProbe().engine
    found = by_name(run_checks(state_dir=STATE, probe=probe))
    assert found["engine"].detail.startswith("docker 20.10.24") and found[
        "engine (podman)"
    ].detail.startswith("podman 4.3.1")
    assert found["base image (podman)"].hint == "clawpen image build --base --engine podman"
    # Docker's socket is there but it does not answer: a warning, with Podman still reported
    probe.engine = HostError(
        "the docker engine at /run/docker.sock does not answer", where="e", hint="restart"
    )
    found = by_name(run_checks(state_dir=STATE, probe=probe))
    assert (found["engine"].warn, found["engine"].hint) == (True, "restart")
    assert not found["engine (podman)"].warn
    probe.engine = HostError("no container engine is running", where="container engine", hint="start one")
    probe.podman = HostError("the podman engine is not running", where="container engine", hint="start one")
    checks = run_checks(state_dir=STATE, probe=probe)
    engine = by_name(checks)["engine"]
    assert (engine.ok, engine.warn, engine.hint) == (True, True, "start one")
    assert engine.detail.startswith("no container engine is running")
    assert "base image" not in by_name(checks)
    assert checks_ok(checks)  # the container tier is optional


@pytest.mark.docker
def test_this_hosts_engine_is_reported_from_its_answers() -> None:
    """The real probe against the running dockerd: the facts match what `docker info` says."""
    import subprocess

    found = Probe().container_engine()
    assert isinstance(found, EngineReport), found
    info = json.loads(
        subprocess.run(["docker", "info", "--format", "{{json .}}"], capture_output=True, check=True).stdout
    )
    assert (found.engine, found.cgroup_driver, found.version) == (
        "docker",
        info["CgroupDriver"],
        info["ServerVersion"],
    )
    assert found.rootless == any("rootless" in o for o in info["SecurityOptions"])
    assert found.userns_remap == any("name=userns" in o for o in info["SecurityOptions"])


@pytest.mark.root
@pytest.mark.podman
def test_this_hosts_podman_is_reported_from_its_answers() -> None:
    """The real probe against Podman's API service (started by the tests): what `podman info`
    says; and the doctor lists it next to Docker."""
    import subprocess

    found = Probe().container_engine("podman")
    assert isinstance(found, EngineReport), found
    info = json.loads(
        subprocess.run(["podman", "info", "--format", "json"], capture_output=True, check=True).stdout
    )
    assert (found.engine, found.socket, found.rootless) == ("podman", "/run/podman/podman.sock", False)
    assert found.cgroup_driver == info["host"]["cgroupManager"]
    assert found.version == info["version"]["Version"]
    checks = by_name(run_checks(state_dir=STATE))
    assert checks["engine"].detail.startswith("docker ")  # Docker answers too, and comes first
    assert checks["engine (podman)"].detail.startswith(f"podman {found.version} at /run/podman/podman.sock")


def test_the_vm_tier_is_optional_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """No QEMU: a warning with the package to install, never a failure; the real findings on this
    host name QEMU, the accelerator with its reason, and the guest kernel."""
    import shutil as shutil_mod

    from clawpen.vm import report

    real = report.findings()
    names = [f.name for f in real]
    if shutil_mod.which("qemu-system-x86_64"):
        assert names[:2] == ["qemu", "accelerator"] and "guest kernel" in names
        assert any(f.name == "accelerator" and ("KVM" in f.detail or "TCG" in f.detail) for f in real)
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    (missing,) = report.findings()
    assert missing.ok and missing.warn and "qemu-system-x86" in (missing.hint or "")
