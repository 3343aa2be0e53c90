"""cgroups.py against fake sysfs trees: which file gets which value, detection, kill, errors.

A small fake kernel stands in for cgroupfs: ``os.mkdir`` under a fake hierarchy fills the new
directory with the interface files the controllers would show (v2: only those enabled in the
parent's ``cgroup.subtree_control``), ``os.rmdir`` refuses (EBUSY) while ``cgroup.procs`` lists a
pid, and ``os.kill`` is recorded (never sent) and makes the killed pid leave every cgroup.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from clawpen.errors import SandboxError
from clawpen.plan.model import CgroupLimits
from clawpen.sandbox import cgroups
from clawpen.sandbox.cgroups import CgroupHost, detect

UNLIMITED = "9223372036854771712\n"
V1_FILES: dict[str, dict[str, str]] = {
    "memory": {
        "memory.limit_in_bytes": UNLIMITED,
        "memory.memsw.limit_in_bytes": UNLIMITED,
        "memory.swappiness": "60\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "memory.usage_in_bytes": "0\n",
        "memory.max_usage_in_bytes": "0\n",
    },
    "cpu": {
        "cpu.cfs_period_us": "100000\n",
        "cpu.cfs_quota_us": "-1\n",
        "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
    },
    "cpuacct": {"cpuacct.usage": "0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "blkio": {"blkio.bfq.weight": "100\n"},
    "freezer": {"freezer.state": "THAWED\n"},
}
V2_CORE = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.kill": "",
    "cgroup.freeze": "0\n",
    "cgroup.subtree_control": "",
    "cgroup.controllers": "",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}
V2_FILES: dict[str, dict[str, str]] = {
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    },
    "cpu": {"cpu.max": "max 100000\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "io": {"io.weight": "default 100\n"},
}
LIMITS = CgroupLimits(
    memory_max=64 << 20, swap_max=0, cpu_quota_us=20_000, cpu_period_us=100_000, pids_max=16, io_weight=100
)


class FakeKernel:
    """Fake cgroupfs behaviour for directories below registered hierarchy mount points."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.v1: dict[str, tuple[str, ...]] = {}  # mount point -> controllers
        self.v2: str | None = None
        self.files = {k: dict(v) for k, v in V1_FILES.items()}
        self.v2_files = {k: dict(v) for k, v in V2_FILES.items()}
        self.v2_core = dict(V2_CORE)
        self.killed: list[tuple[int, int, dict[str, str]]] = []
        self.rmdir_busy = 0
        self.mkdir_error: OSError | None = None
        self._mkdir, self._rmdir = os.mkdir, os.rmdir
        monkeypatch.setattr(os, "mkdir", self.mkdir)
        monkeypatch.setattr(os, "rmdir", self.rmdir)
        monkeypatch.setattr(os, "kill", self.kill)

    def mount_v1(self, point: Path, *controllers: str) -> None:
        point.mkdir(parents=True)
        (point / "cgroup.procs").write_text("")
        self.v1[str(point)] = controllers

    def mount_v2(self, point: Path, offered: str = "cpuset cpu io memory hugetlb pids rdma misc") -> None:
        point.mkdir(parents=True, exist_ok=True)
        for name, text in self.v2_core.items():
            (point / name).write_text(text)
        (point / "cgroup.controllers").write_text(offered + "\n")
        self.v2 = str(point)

    def _hierarchy(self, path: str) -> str | None:
        for point in [*self.v1, self.v2]:
            if point is not None and path.startswith(point + "/"):
                return point
        return None

    def mkdir(self, path: str | Path, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        point = self._hierarchy(str(path))
        if point is not None and self.mkdir_error is not None:
            raise self.mkdir_error
        self._mkdir(path, mode)
        if point is None:
            return
        new = Path(path)
        if point == self.v2:
            files = dict(self.v2_core)
            enabled = (new.parent / "cgroup.subtree_control").read_text().split()
            for controller in (c[1:] for c in enabled if c.startswith("+")):
                files.update(self.v2_files.get(controller, {}))
        else:
            files = {"cgroup.procs": "", "tasks": ""}
            for controller in self.v1[point]:
                files.update(self.files[controller])
        for name, text in files.items():
            (new / name).write_text(text)

    def rmdir(self, path: str | Path, *, dir_fd: int | None = None) -> None:
        if self._hierarchy(str(path)) is None:
            self._rmdir(path)
            return
        procs = Path(path) / "cgroup.procs"
        if self.rmdir_busy > 0 or (procs.exists() and procs.read_text().strip()):
            self.rmdir_busy -= 1
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        for child in Path(path).iterdir():
            if child.is_file():
                child.unlink()
        self._rmdir(path)

    def kill(self, pid: int, sig: int) -> None:
        states = {}
        for point in [*self.v1, self.v2]:
            for state in Path(point or "/nonexistent").rglob("freezer.state"):
                states[str(state)] = state.read_text()
            for events in Path(point or "/nonexistent").rglob("cgroup.events"):
                states[str(events)] = events.read_text()
        self.killed.append((pid, sig, states))
        if sig != signal.SIGKILL:
            return
        for point in [*self.v1, self.v2]:
            for procs in Path(point or "/nonexistent").rglob("cgroup.procs"):
                left = [p for p in procs.read_text().split() if int(p) != pid]
                procs.write_text("".join(f"{p}\n" for p in left))


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    return FakeKernel(monkeypatch)


def v1_host(kernel: FakeKernel, root: Path, *, comount: bool = True) -> CgroupHost:
    lines = [f"tmpfs {root} tmpfs rw,nosuid 0 0"]
    groups = [("memory",), ("cpu", "cpuacct") if comount else ("cpu",), ("pids",), ("blkio",), ("freezer",)]
    if not comount:
        groups.append(("cpuacct",))
    for controllers in groups:
        point = root / ",".join(controllers)
        kernel.mount_v1(point, *controllers)
        lines.append(f"cgroup {point} cgroup rw,nosuid,relatime,{','.join(controllers)} 0 0")
    mounts = root.parent / "mounts"
    mounts.write_text("\n".join(lines) + "\n")
    return detect(root, mounts)


def v2_host(
    kernel: FakeKernel, root: Path, offered: str = "cpuset cpu io memory hugetlb pids rdma misc"
) -> CgroupHost:
    kernel.mount_v2(root, offered)
    mounts = root.parent / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n")
    return detect(root, mounts)


def read(path: Path) -> str:
    return path.read_text().strip()


# --- detection ---------------------------------------------------------------------------------


def test_detect_v1_hybrid_from_mounts(tmp_path: Path) -> None:
    root = tmp_path / "cg root"
    for sub in ("cpu,cpuacct", "memory", "pids", "freezer", "systemd", "unified", "devices"):
        (root / sub).mkdir(parents=True)
    esc = str(root).replace(" ", "\\040")
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"proc /proc proc rw 0 0\n"
        f"tmpfs {esc} tmpfs ro,mode=755 0 0\n"
        f"cgroup {esc}/cpu,cpuacct cgroup rw,nosuid,relatime,cpu,cpuacct 0 0\n"
        f"cgroup {esc}/memory cgroup rw,relatime,memory 0 0\n"
        f"cgroup {esc}/pids cgroup rw,relatime,pids 0 0\n"
        f"cgroup {esc}/freezer cgroup rw,relatime,freezer 0 0\n"
        f"cgroup {esc}/devices cgroup rw,relatime,devices 0 0\n"
        f"cgroup {esc}/systemd cgroup rw,relatime,xattr,name=systemd 0 0\n"
        f"cgroup2 {esc}/unified cgroup2 rw,relatime 0 0\n"
        f"cgroup /elsewhere/blkio cgroup rw,blkio 0 0\n"
        "short line\n"
    )
    host = detect(root, mounts)
    assert host.version == 1
    assert host.controllers == {"cpu", "cpuacct", "memory", "pids", "freezer"}
    assert host.hierarchies["cpu"] == host.hierarchies["cpuacct"] == root / "cpu,cpuacct"
    assert host.hierarchies["memory"] == root / "memory"
    cg = host.attach("bot")
    assert cg.dirs == tuple(
        str(root / h / "clawpen" / "bot") for h in ("memory", "cpu,cpuacct", "pids", "freezer")
    )


def test_detect_v2_from_mounts(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n")
    host = detect(root, mounts)
    assert host.version == 2
    assert host.controllers == {"cpu", "io", "memory", "pids"}
    assert host.attach("bot").dirs == (str(root / "clawpen" / "bot"),)


def test_detect_v2_without_mount_entry_and_few_controllers(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("memory pids\n")
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    host = detect(root, mounts)
    assert host.version == 2
    assert host.controllers == {"memory", "pids"}


def test_detect_nothing_mounted(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    with pytest.raises(SandboxError) as info:
        detect(tmp_path / "cgroup", mounts)
    assert info.value.where == "cgroups: detect"
    assert "no cgroup hierarchy" in info.value.what


def test_detect_unreadable_mounts_names_file(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as info:
        detect(tmp_path, tmp_path / "missing-mounts")
    assert info.value.where == "cgroups: detect"
    assert "missing-mounts" in info.value.what


@pytest.mark.parametrize("name", ["", "..", "../etc", "a/b", ".hidden", "-x", "x" * 129, "a..b"])
def test_bad_names_rejected(kernel: FakeKernel, tmp_path: Path, name: str) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    with pytest.raises(SandboxError) as info:
        host.create(name, LIMITS)
    assert info.value.where == "cgroups: create"
    assert not (tmp_path / "cg" / "memory" / "clawpen").exists()


# --- v1 limits ---------------------------------------------------------------------------------


def test_v1_create_writes_limits(kernel: FakeKernel, tmp_path: Path) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    cg = host.create("bot", LIMITS)
    mem = tmp_path / "cg" / "memory" / "clawpen" / "bot"
    cpu = tmp_path / "cg" / "cpu,cpuacct" / "clawpen" / "bot"
    assert len(cg.dirs) == 5  # cpu and cpuacct share one directory
    assert read(mem / "memory.limit_in_bytes") == str(64 << 20)
    assert read(mem / "memory.memsw.limit_in_bytes") == str(64 << 20)
    assert read(mem / "memory.swappiness") == "0"
    assert read(mem / "memory.oom_control") == "0"  # oom_kill_disable stays 0: the OOM killer kills
    assert read(cpu / "cpu.cfs_period_us") == "100000"
    assert read(cpu / "cpu.cfs_quota_us") == "20000"
    assert read(tmp_path / "cg" / "pids" / "clawpen" / "bot" / "pids.max") == "16"
    blkio = tmp_path / "cg" / "blkio" / "clawpen" / "bot"
    assert read(blkio / "blkio.bfq.weight") == "100"
    assert not (blkio / "blkio.weight").exists()  # absent file skipped, never created
    assert read(tmp_path / "cg" / "freezer" / "clawpen" / "bot" / "freezer.state") == "THAWED"


def test_v1_memsw_written_after_limit(
    kernel: FakeKernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    opened: list[str] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777) -> int:
        opened.append(os.path.basename(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    host.create("bot", LIMITS)
    assert opened.index("memory.limit_in_bytes") < opened.index("memory.memsw.limit_in_bytes")
    assert opened.index("cpu.cfs_period_us") < opened.index("cpu.cfs_quota_us")


def test_v1_swap_allowed(kernel: FakeKernel, tmp_path: Path) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    host.create("bot", CgroupLimits(memory_max=100, swap_max=50))
    mem = tmp_path / "cg" / "memory" / "clawpen" / "bot"
    assert read(mem / "memory.limit_in_bytes") == "100"
    assert read(mem / "memory.memsw.limit_in_bytes") == "150"
    assert read(mem / "memory.swappiness") == "60"  # left alone: swap is allowed


def test_v1_unset_limits_stay_default(kernel: FakeKernel, tmp_path: Path) -> None:
    host = v1_host(kernel, tmp_path / "cg", comount=False)
    cg = host.create("bot", CgroupLimits())
    assert len(cg.dirs) == 6
    assert read(tmp_path / "cg" / "memory" / "clawpen" / "bot" / "memory.limit_in_bytes") == UNLIMITED.strip()
    assert read(tmp_path / "cg" / "memory" / "clawpen" / "bot" / "memory.swappiness") == "0"
    assert read(tmp_path / "cg" / "cpu" / "clawpen" / "bot" / "cpu.cfs_quota_us") == "-1"
    assert read(tmp_path / "cg" / "pids" / "clawpen" / "bot" / "pids.max") == "max"


def test_v1_missing_optional_files_tolerated(kernel: FakeKernel, tmp_path: Path) -> None:
    for controller, name in [
        ("memory", "memory.memsw.limit_in_bytes"),
        ("memory", "memory.swappiness"),
        ("memory", "memory.oom_control"),
        ("blkio", "blkio.bfq.weight"),
        ("freezer", "freezer.state"),
    ]:
        del kernel.files[controller][name]
    kernel.files["blkio"]["blkio.weight"] = "500\n"
    host = v1_host(kernel, tmp_path / "cg")
    host.create("bot", CgroupLimits(memory_max=1 << 20, io_weight=5))
    mem = tmp_path / "cg" / "memory" / "clawpen" / "bot"
    assert read(mem / "memory.limit_in_bytes") == str(1 << 20)
    assert not (mem / "memory.memsw.limit_in_bytes").exists()
    assert read(tmp_path / "cg" / "blkio" / "clawpen" / "bot" / "blkio.weight") == "10"  # clamped


def test_v1_io_weight_skipped_without_blkio(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    kernel.mount_v1(root / "pids", "pids")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup {root}/pids cgroup rw,pids 0 0\n")
    host = detect(root, mounts)
    cg = host.create("bot", CgroupLimits(pids_max=3, io_weight=300))
    assert cg.dirs == (str(root / "pids" / "clawpen" / "bot"),)
    assert read(root / "pids" / "clawpen" / "bot" / "pids.max") == "3"


def test_v1_missing_required_file_names_step_and_cleans_up(kernel: FakeKernel, tmp_path: Path) -> None:
    del kernel.files["pids"]["pids.max"]
    host = v1_host(kernel, tmp_path / "cg")
    with pytest.raises(SandboxError) as info:
        host.create("bot", LIMITS)
    assert info.value.where == "cgroups: limits"
    assert str(tmp_path / "cg" / "pids" / "clawpen" / "bot" / "pids.max") in info.value.what
    assert info.value.hint
    assert not any(os.path.exists(d) for d in host.attach("bot").dirs)


def test_missing_controller_for_a_limit(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    kernel.mount_v1(root / "memory", "memory")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup {root}/memory cgroup rw,memory 0 0\n")
    host = detect(root, mounts)
    with pytest.raises(SandboxError) as info:
        host.create("bot", CgroupLimits(pids_max=10))
    assert info.value.where == "cgroups: create"
    assert "pids" in info.value.what
    assert not (root / "memory" / "clawpen").exists()


def test_mkdir_permission_error_names_step(kernel: FakeKernel, tmp_path: Path) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    kernel.mkdir_error = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(SandboxError) as info:
        host.create("bot", LIMITS)
    assert info.value.where == "cgroups: create"
    assert "clawpen/bot" in info.value.what
    assert info.value.hint is not None and "root" in info.value.hint


def test_stale_cgroup_is_killed_and_recreated(kernel: FakeKernel, tmp_path: Path) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    old = host.create("bot", CgroupLimits(pids_max=5))
    old.add(4242)
    pids_max = tmp_path / "cg" / "pids" / "clawpen" / "bot" / "pids.max"
    assert read(pids_max) == "5"
    new = host.create("bot", LIMITS)
    assert kernel.killed and kernel.killed[0][:2] == (4242, signal.SIGKILL)
    assert new.pids() == []
    assert read(pids_max) == "16"


# --- v2 ----------------------------------------------------------------------------------------


def test_v2_create_enables_controllers_and_writes_limits(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    host = v2_host(kernel, root)
    cg = host.create("bot", LIMITS)
    path = root / "clawpen" / "bot"
    assert cg.dirs == (str(path),)
    assert read(root / "cgroup.subtree_control") == "+memory +cpu +pids +io"
    assert read(root / "clawpen" / "cgroup.subtree_control") == "+memory +cpu +pids +io"
    assert read(path / "memory.max") == str(64 << 20)
    assert read(path / "memory.swap.max") == "0"
    assert read(path / "cpu.max") == "20000 100000"
    assert read(path / "pids.max") == "16"
    assert read(path / "io.weight") == "default 100"


def test_v2_only_offered_controllers_enabled(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    host = v2_host(kernel, root, offered="memory pids")
    host.create("bot", CgroupLimits(memory_max=1000, pids_max=2, io_weight=50))
    assert read(root / "cgroup.subtree_control") == "+memory +pids"
    assert read(root / "clawpen" / "bot" / "memory.max") == "1000"
    assert not (root / "clawpen" / "bot" / "io.weight").exists()
    with pytest.raises(SandboxError) as info:
        host.create("cpu-bot", CgroupLimits(cpu_quota_us=1000))
    assert (info.value.where, "cpu" in info.value.what) == ("cgroups: create", True)


def test_v2_bfq_weight_and_no_swap_file(kernel: FakeKernel, tmp_path: Path) -> None:
    del kernel.v2_files["memory"]["memory.swap.max"]
    kernel.v2_files["io"] = {"io.bfq.weight": "default 100\n"}
    root = tmp_path / "cg"
    host = v2_host(kernel, root)
    host.create("bot", CgroupLimits(memory_max=4096, io_weight=5000))
    assert read(root / "clawpen" / "bot" / "io.bfq.weight") == "default 1000"
    assert not (root / "clawpen" / "bot" / "memory.swap.max").exists()


def test_v2_stats_and_oom(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    host = v2_host(kernel, root)
    cg = host.create("bot", LIMITS)
    path = root / "clawpen" / "bot"
    assert not cg.oom_killed()
    (path / "cpu.stat").write_text("usage_usec 1500\nnr_periods 9\nnr_throttled 4\nthrottled_usec 70\n")
    (path / "memory.current").write_text("4096\n")
    (path / "memory.peak").write_text("8192\n")
    (path / "pids.current").write_text("3\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 2\n")
    assert cg.stats() == cgroups.CgroupStats(
        cpu_usage_ns=1_500_000,
        memory_current=4096,
        memory_peak_bytes=8192,
        pids_current=3,
        oom_kills=2,
        cpu_throttled_periods=4,
        cpu_throttled_ns=70_000,
    )
    assert cg.oom_killed()


def test_v2_kill_uses_cgroup_kill(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cg = v2_host(kernel, root).create("bot", CgroupLimits())
    cg.add(31337)
    cg.kill()
    assert read(root / "clawpen" / "bot" / "cgroup.kill") == "1"
    assert kernel.killed == []  # the kernel does it: no pid-by-pid signals


def test_v2_kill_without_cgroup_kill_freezes(
    kernel: FakeKernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    del kernel.v2_core["cgroup.kill"]
    root = tmp_path / "cg"
    cg = v2_host(kernel, root).create("bot", CgroupLimits())
    path = root / "clawpen" / "bot"
    cg.add(31337)
    (path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    real_kill = kernel.kill

    def kill_and_depopulate(pid: int, sig: int) -> None:
        real_kill(pid, sig)
        (path / "cgroup.events").write_text("populated 0\nfrozen 1\n")

    monkeypatch.setattr(os, "kill", kill_and_depopulate)
    cg.kill()
    assert [k[:2] for k in kernel.killed] == [(31337, signal.SIGKILL)]
    assert read(path / "cgroup.freeze") == "0"  # thawed again


def test_v2_kill_times_out_with_named_step(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cg = v2_host(kernel, root).create("bot", CgroupLimits())
    (root / "clawpen" / "bot" / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(SandboxError) as info:
        cg.kill(timeout=0.05)
    assert info.value.where == "cgroups: kill"


# --- membership, stats, kill, remove (v1) ------------------------------------------------------


def test_add_moves_into_every_hierarchy(kernel: FakeKernel, tmp_path: Path) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    cg = host.create("bot", LIMITS)
    cg.add(1234)
    for path in cg.paths:
        assert read(path / "cgroup.procs") == "1234"
    (cg.paths[0] / "cgroup.procs").write_text("1234\n77\n")
    assert cg.pids() == [77, 1234]


def test_add_failure_names_step(kernel: FakeKernel, tmp_path: Path) -> None:
    cg = v1_host(kernel, tmp_path / "cg").create("bot", LIMITS)
    (cg.paths[-1] / "cgroup.procs").unlink()
    with pytest.raises(SandboxError) as info:
        cg.add(1234)
    assert info.value.where == "cgroups: add"
    assert str(cg.paths[-1] / "cgroup.procs") in info.value.what


def test_v1_stats_and_oom(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cg = v1_host(kernel, root).create("bot", LIMITS)
    mem = root / "memory" / "clawpen" / "bot"
    cpu = root / "cpu,cpuacct" / "clawpen" / "bot"
    assert not cg.oom_killed()
    (cpu / "cpuacct.usage").write_text("123456789\n")
    (cpu / "cpu.stat").write_text("nr_periods 10\nnr_throttled 7\nthrottled_time 900\n")
    (mem / "memory.usage_in_bytes").write_text("1000\n")
    (mem / "memory.max_usage_in_bytes").write_text("2000\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    (root / "pids" / "clawpen" / "bot" / "pids.current").write_text("4\n")
    assert cg.stats() == cgroups.CgroupStats(
        cpu_usage_ns=123456789,
        memory_current=1000,
        memory_peak_bytes=2000,
        pids_current=4,
        oom_kills=1,
        cpu_throttled_periods=7,
        cpu_throttled_ns=900,
    )
    assert cg.oom_killed()


def test_v1_kill_freezes_kills_thaws(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cg = v1_host(kernel, root).create("bot", LIMITS)
    cg.add(555)
    (cg.paths[0] / "cgroup.procs").write_text("555\n556\n")
    cg.kill()
    state = str(root / "freezer" / "clawpen" / "bot" / "freezer.state")
    assert sorted(k[:2] for k in kernel.killed) == [(555, signal.SIGKILL), (556, signal.SIGKILL)]
    assert all(k[2][state] == "FROZEN" for k in kernel.killed)  # killed while frozen
    assert read(Path(state)) == "THAWED"
    assert cg.pids() == []
    cg.kill()  # idempotent: nothing left, nothing sent
    assert len(kernel.killed) == 2


def test_v1_kill_without_freezer(kernel: FakeKernel, tmp_path: Path) -> None:
    del kernel.files["freezer"]["freezer.state"]
    cg = v1_host(kernel, tmp_path / "cg").create("bot", LIMITS)
    cg.add(555)
    cg.kill()
    assert [k[:2] for k in kernel.killed] == [(555, signal.SIGKILL)]


def test_signal_reaches_every_pid(kernel: FakeKernel, tmp_path: Path) -> None:
    cg = v1_host(kernel, tmp_path / "cg").create("bot", LIMITS)
    (cg.paths[0] / "cgroup.procs").write_text("10\n11\n")
    (cg.paths[1] / "cgroup.procs").write_text("12\n")
    cg.signal(signal.SIGTERM)
    assert sorted(k[:2] for k in kernel.killed) == [(p, signal.SIGTERM) for p in (10, 11, 12)]


def test_signal_tolerates_exited_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cgroup.procs").write_text("999999\n")

    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError(errno.ESRCH, "No such process")

    monkeypatch.setattr(os, "kill", gone)
    cgroups.Cgroup("bot", 1, {"pids": str(tmp_path)}).signal(signal.SIGTERM)


def test_remove_is_idempotent_and_retries_ebusy(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    host = v1_host(kernel, root)
    cg = host.create("bot", LIMITS)
    cg.add(99)
    kernel.rmdir_busy = 2
    cg.remove()
    assert not any(p.exists() for p in cg.paths)
    assert (root / "memory" / "clawpen").is_dir()  # the shared parent stays for other bots
    cg.remove()
    assert cg.pids() == []


def test_remove_error_names_step(kernel: FakeKernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cg = v1_host(kernel, tmp_path / "cg").create("bot", LIMITS)

    def denied(path: str, *, dir_fd: int | None = None) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", path)

    monkeypatch.setattr(os, "rmdir", denied)
    with pytest.raises(SandboxError) as info:
        cg.remove()
    assert info.value.where == "cgroups: remove"
    assert cg.dirs[0] in info.value.what


def test_context_manager_removes(kernel: FakeKernel, tmp_path: Path) -> None:
    host = v1_host(kernel, tmp_path / "cg")
    with host.create("bot", LIMITS) as cg:
        cg.add(7)
        assert all(p.is_dir() for p in cg.paths)
    assert not any(p.exists() for p in cg.paths)
    assert [k[:2] for k in kernel.killed] == [(7, signal.SIGKILL)]


def test_unreadable_file_names_step(kernel: FakeKernel, tmp_path: Path) -> None:
    cg = v1_host(kernel, tmp_path / "cg").create("bot", LIMITS)
    procs = cg.paths[0] / "cgroup.procs"
    procs.unlink()
    procs.mkdir()  # reading a directory fails with EISDIR
    with pytest.raises(SandboxError) as info:
        cg.pids()
    assert info.value.where == "cgroups: read"
    assert str(procs) in info.value.what
    procs.rmdir()


def test_missing_mount_point_is_not_created(tmp_path: Path) -> None:
    host = CgroupHost(1, tmp_path, {"pids": tmp_path / "pids"})  # hierarchy vanished
    with pytest.raises(SandboxError) as info:
        host.create("bot", CgroupLimits(pids_max=1))
    assert info.value.where == "cgroups: create"
    assert str(tmp_path / "pids" / "clawpen") in info.value.what
    assert not (tmp_path / "pids").exists()
