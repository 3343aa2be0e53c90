"""Spec in, plan and bubblewrap argv out: the planner and the argv builder are pure."""

import json
import shutil
from pathlib import Path

import pytest

from clawpen.errors import PolicyError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Identity, SeccompPolicy
from clawpen.sandbox.bwrap import BwrapFds, bwrap_argv
from clawpen.spec.loader import load_spec
from clawpen.spec.policy import policy_from_flags

FIXTURES = Path(__file__).parent.parent / "fixtures"
HOST = HostFacts(
    cpu_count=4,
    system_dirs=(("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")),
    etc_entries=("ld.so.cache", "ssl/certs"),
)
IDENT = Identity(name="scraper", uid=1900000001, gid=1900000001)
SECCOMP = SeccompPolicy(errno_syscalls=("mount",))


@pytest.fixture
def plan(tmp_path):
    shutil.copy(FIXTURES / "basic.toml", tmp_path / "clawpen.toml")
    (tmp_path / "ws").mkdir()
    loaded = load_spec(tmp_path / "clawpen.toml")
    policy = loaded.spec.bots["scraper"].to_policy("scraper", str(loaded.base_dir))
    return build_plan(policy, IDENT, HOST, SECCOMP)


def test_plan_from_fixture(plan, tmp_path):
    assert plan.command == ("python3", "main.py", "--once")
    assert plan.cgroup.memory_max == 256 << 20
    assert plan.cgroup.cpu_quota_us == 50_000
    assert plan.cgroup.pids_max == 64
    assert plan.cgroup.swap_max == 0
    assert plan.rlimits.nofile == 512
    assert plan.rlimits.fsize == 1 << 30
    assert plan.rlimits.core == 0
    assert plan.disk_max == 1 << 30
    assert plan.namespaces == ("user", "pid", "mount", "ipc", "uts", "cgroup", "net")
    assert dict(plan.env)["MODE"] == "prod"
    assert dict(plan.env)["HOME"] == "/workspace"
    assert plan.cwd == "/workspace"
    kinds = {m.dest: m for m in plan.mounts}
    assert kinds["/workspace"].kind == "rw" and kinds["/workspace"].source == str(tmp_path / "ws")
    assert kinds["/workspace"].pin
    assert kinds["/usr/share/zoneinfo"].kind == "ro"
    assert kinds["/tmp"].size == 32 << 20
    assert kinds["/usr"].kind == "ro"
    assert plan.mounts[-1].kind == "remount-ro" and plan.mounts[-1].dest == "/"
    assert f"scraper:x:{IDENT.uid}:{IDENT.gid}" in (kinds["/etc/passwd"].data or "")
    # no host path other than the declared ones and the system folders
    sources = {m.source for m in plan.mounts if m.kind in ("ro", "rw")}
    assert sources == {
        "/usr",
        "/etc/ld.so.cache",
        "/etc/ssl/certs",
        str(tmp_path / "ws"),
        "/usr/share/zoneinfo",
    }
    json.dumps(plan.to_dict())


def test_bwrap_argv_from_fixture(plan, tmp_path):
    fds = BwrapFds(
        block=3,
        info=4,
        seccomp=5,
        data={m.dest: 10 + i for i, m in enumerate(m for m in plan.mounts if m.kind == "data")},
        pinned={"/workspace": 20, "/usr/share/zoneinfo": 21},
    )
    argv = bwrap_argv(plan, fds)
    joined = " ".join(argv)
    for flag in (
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--unshare-net",
        "--disable-userns",
        "--new-session",
        "--die-with-parent",
        "--clearenv",
    ):
        assert flag in argv
    assert "--bind-fd 20 /workspace" in joined
    assert "--ro-bind-fd 21 /usr/share/zoneinfo" in joined
    assert "--perms 1777 --size 33554432 --tmpfs /tmp" in joined
    assert "--ro-bind /usr /usr" in joined
    assert "--symlink usr/bin /bin" in joined
    assert "--seccomp 5" in joined and "--block-fd 3" in joined and "--info-fd 4" in joined
    assert "--remount-ro /" in joined
    assert argv[-4:] == ["--", "python3", "main.py", "--once"]
    # the root is made read-only after every mount below it
    assert joined.index("--remount-ro /") > joined.index("/workspace")
    assert "/root" not in joined and "/home" not in joined and "/var/run" not in joined


def test_cpus_beyond_host_is_refused(tmp_path):
    policy = policy_from_flags(["true"], base_dir=str(tmp_path), cpus="8")
    with pytest.raises(PolicyError) as err:
        build_plan(policy, IDENT, HOST, SECCOMP)
    assert "4" in (err.value.hint or "")


def test_flags_and_spec_give_the_same_plan(plan, tmp_path):
    policy = policy_from_flags(
        ["python3", "main.py", "--once"],
        base_dir=str(tmp_path),
        name="scraper",
        workspace="ws",
        memory="256M",
        cpus="0.5",
        pids=64,
        nofile=512,
        disk="1G",
        tmp="32M",
        env=["MODE=prod"],
        ro=["/usr/share/zoneinfo"],
    )
    assert build_plan(policy, IDENT, HOST, SECCOMP) == plan


def test_flag_errors_name_the_flag(tmp_path):
    from clawpen.errors import UsageError

    with pytest.raises(UsageError) as err:
        policy_from_flags(["true"], base_dir=str(tmp_path), memory="huge")
    assert err.value.where == "--memory"
    with pytest.raises(UsageError) as err:
        policy_from_flags(["true"], base_dir=str(tmp_path), rw=["/etc"])
    assert err.value.where == "--rw"
    with pytest.raises(UsageError):
        policy_from_flags([], base_dir=str(tmp_path))
    with pytest.raises(UsageError):
        policy_from_flags(["true"], base_dir=str(tmp_path), env=["NOEQUALS"])
