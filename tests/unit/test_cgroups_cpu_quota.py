"""``Cgroup.set_cpu_quota`` on a running cgroup (the start-up CPU allowance): v1 writes
``cpu.cfs_period_us`` and ``cpu.cfs_quota_us``, v2 ``cpu.max``; other limits stay; a host
without the cpu controller is a named error (on the fake cgroupfs of test_cgroups)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cgroups import LIMITS, FakeKernel, read, v1_host, v2_host
from test_cgroups import kernel as kernel  # noqa: PLC0414 (the fixture)

from clawpen.errors import SandboxError
from clawpen.plan.model import CgroupLimits


def test_v1_raises_and_lowers_the_quota_and_keeps_the_other_limits(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    cg = v1_host(kernel, tmp_path / "cg").create("bot", LIMITS)
    cpu = tmp_path / "cg" / "cpu,cpuacct" / "clawpen" / "bot"
    assert read(cpu / "cpu.cfs_quota_us") == "20000" and cg.cpu_quota() == 20_000
    cg.set_cpu_quota(200_000)
    assert cg.cpu_quota() == 200_000
    assert (read(cpu / "cpu.cfs_quota_us"), read(cpu / "cpu.cfs_period_us")) == ("200000", "100000")
    cg.set_cpu_quota(20_000)
    assert read(cpu / "cpu.cfs_quota_us") == "20000"
    assert read(tmp_path / "cg" / "memory" / "clawpen" / "bot" / "memory.limit_in_bytes") == str(64 << 20)


def test_v2_writes_cpu_max(kernel: FakeKernel, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cg = v2_host(kernel, root).create("bot", LIMITS)
    cg.set_cpu_quota(150_000, 100_000)
    assert read(root / "clawpen" / "bot" / "cpu.max") == "150000 100000"
    assert cg.cpu_quota() == 150_000
    assert read(root / "clawpen" / "bot" / "memory.max") == str(64 << 20)


def test_without_a_cpu_controller_it_is_a_named_error(kernel: FakeKernel, tmp_path: Path) -> None:
    cg = v2_host(kernel, tmp_path / "cg", offered="memory pids").create(
        "bot", CgroupLimits(memory_max=1 << 26)
    )
    assert cg.cpu_quota() is None
    with pytest.raises(SandboxError) as err:
        cg.set_cpu_quota(100_000)
    assert err.value.where == "cgroups: cpu quota"
    # a cgroup gone meanwhile (the bot exited): the write's error names the step
    host1 = v1_host(kernel, tmp_path / "cg1")
    assert host1.create("free", CgroupLimits()).cpu_quota() is None  # -1: no limit
    gone = host1.attach("never-made")
    with pytest.raises(SandboxError) as err:
        gone.set_cpu_quota(100_000)
    assert "cpu quota" in (err.value.where or "")
