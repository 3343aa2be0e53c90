"""Warm restarts (clawpen.daemon.warm): the next sandbox is built while the bot runs, and it is
the same sandbox a cold start builds; a spare never runs the bot on its own, not even when the
daemon dies; it is thrown away when the spec or a secret changed, or when the bot stops."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import DaemonCli, alive, wait_for

from clawpen.paths import cgroup_scope
from clawpen.sandbox import cgroups

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SYS_KEYCTL = 250  # x86_64; denied by clawpen's seccomp filter, allowed to anyone outside it
# Each run: one line in the workspace, then its view of itself on stdout, then it waits.
BOT = (
    "import ctypes, hashlib, os, time\\n"
    "libc = ctypes.CDLL(None, use_errno=True)\\n"
    "r = libc.syscall(250, 0, -3, 0)\\n"
    "open('/workspace/starts', 'a').write('x\\\\n')\\n"
    "tok = hashlib.sha256(open('/run/secrets/TOK', 'rb').read()).hexdigest()[:12]\\n"
    "print('run keyctl', r, ctypes.get_errno(), 'secret', tok, flush=True)\\n"
    "time.sleep(float(os.environ.get('NAP', '300')))"
)


def spec(ws: Path, *, warm: bool = True, nap: str = "300", policy: str = "always") -> str:
    return f"""
        [bots.w]
        command = ["python3", "-c", "{BOT}"]
        workspace = "{ws}"
        secrets = ["TOK"]
        env = {{ NAP = "{nap}" }}
        resources = {{ memory = "256M", pids = 64, cpus = 0.5 }}
        [bots.w.restart]
        policy = "{policy}"
        warm = {str(warm).lower()}
        backoff_initial = "50ms"
        backoff_max = "50ms"
        window = "100ms"
        max_restarts = 1000
    """


def group(daemon: DaemonCli, slot: int) -> cgroups.Cgroup:
    name = f"{cgroup_scope(daemon.home)}w.0{'.b' if slot else ''}"
    return cgroups.detect().attach(name)


def pids(daemon: DaemonCli, slot: int) -> list[int]:
    cg = group(daemon, slot)
    return cg.pids() if os.path.isdir(cg.dirs[0]) else []


def bot_process(daemon: DaemonCli, slot: int) -> int:
    """The host pid of the python bot in a slot's cgroup."""
    for pid in pids(daemon, slot):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"python3\0"):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no bot process in slot {slot}: {pids(daemon, slot)}")


def starts(ws: Path) -> int:
    try:
        return (ws / "starts").read_text().count("x")
    except FileNotFoundError:
        return 0


def view(daemon: DaemonCli, pid: int, slot: int) -> dict[str, object]:
    """What the sandbox is, seen from the host: everything a cold and a warm start must share."""
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
    keep = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")
    host_ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in os.listdir("/proc/self/ns")}
    mounts = []
    for line in (proc / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        fstype, _source, options = right.split()
        mounts.append((f[4], f[5], fstype, options))  # mount point, its options, type, super options
    cg = group(daemon, slot)
    files = ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us", "cpu.max")
    limits = {
        n: Path(path, n).read_text().strip() for path in cg.dirs for n in files if Path(path, n).exists()
    }
    return {
        "status": {k: status[k].strip() for k in keep},
        "seccomp": (status["Seccomp"].strip(), status.get("Seccomp_filters", "").strip()),
        "unshared": sorted(n for n in host_ns if os.readlink(f"/proc/{pid}/ns/{n}") != host_ns[n]),
        "mounts": mounts,
        "limits": limits,
        "rlimits": (proc / "limits").read_text(),
        "cwd": os.readlink(proc / "cwd"),
        "environ": sorted((proc / "environ").read_bytes().split(b"\0")),
    }


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def runs(daemon: DaemonCli) -> list[str]:
    return [line for line in daemon.cli("logs", "w").stdout.splitlines() if "run keyctl" in line]


def test_a_warm_restart_is_the_same_sandbox_as_a_cold_start(daemon: DaemonCli, tmp_path: Path) -> None:
    ws = daemon.spec.parent / "ws"
    daemon.cli("secrets", "set", "TOK", stdin="s3cret-one\n")
    daemon.write(spec(ws))
    daemon.cli("up")
    daemon.wait_state("w", "running")
    assert wait_for(lambda: starts(ws) == 1, 10)
    cold = view(daemon, bot_process(daemon, 0), 0)
    # the spare: built in the other slot, held before the bot's command (nothing ran in it)
    assert wait_for(lambda: len(pids(daemon, 1)) == 1, 10), pids(daemon, 1)
    spare_pid = pids(daemon, 1)[0]
    assert Path(f"/proc/{spare_pid}/cmdline").read_bytes().startswith(b"bwrap\0")  # still bubblewrap
    time.sleep(0.5)
    assert starts(ws) == 1 and len(runs(daemon)) == 1
    first = bot_process(daemon, 0)
    os.kill(first, signal.SIGKILL)  # a crash
    assert wait_for(lambda: starts(ws) == 2, 10)
    assert wait_for(lambda: daemon.ps()["w"]["state"] == "running", 5)
    assert wait_for(lambda: not alive(first), 5)
    warm = view(daemon, bot_process(daemon, 1), 1)
    reasons = [e.get("reason") for e in daemon.events("w") if e.get("to_state") == "starting"]
    assert reasons[-1] == "restarting (warm)", reasons
    assert warm == cold
    # the filter and the uid are really there: keyctl fails with EPERM in both runs ...
    lines = runs(daemon)
    expected = f"run keyctl -1 1 secret {digest('s3cret-one')}"
    assert len(lines) == 2 and all(expected in line for line in lines), lines
    # ... and works outside the sandbox (the positive control)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(SYS_KEYCTL, 0, -3, 0) > 0
    assert cold["limits"] and any("268435456" in str(v) for v in cold["limits"].values())
    # the next spare is built in the slot the first run left
    assert wait_for(lambda: len(pids(daemon, 0)) == 1, 10)
    daemon.cli("stop", "w")
    assert wait_for(lambda: not pids(daemon, 0) and not pids(daemon, 1), 10), "a spare outlived its bot"
    assert starts(ws) == 2


def test_a_changed_secret_or_spec_is_never_served_by_a_stale_spare(daemon: DaemonCli, tmp_path: Path) -> None:
    ws = daemon.spec.parent / "ws"
    daemon.cli("secrets", "set", "TOK", stdin="old-value\n")
    daemon.write(spec(ws, nap="1"))  # each run lasts 1 s, then exits 0 and is restarted
    daemon.cli("up", "--detach")
    assert wait_for(lambda: len(runs(daemon)) >= 2, 15)
    assert all(f"secret {digest('old-value')}" in line for line in runs(daemon))
    daemon.cli("secrets", "set", "TOK", stdin="new-value\n")
    seen = len(runs(daemon))
    assert wait_for(lambda: len(runs(daemon)) >= seen + 2, 15)
    assert f"secret {digest('new-value')}" in runs(daemon)[-1], runs(daemon)[-3:]
    events = [e.get("reason") for e in daemon.events("w") if e.get("to_state") == "starting"]
    assert "restarting (warm)" in events and events.count("restarting") >= 1  # the misfit went cold
    daemon.cli("stop", "w")


def test_warm_false_keeps_no_spare_and_restarts_cold(daemon: DaemonCli, tmp_path: Path) -> None:
    ws = daemon.spec.parent / "ws"
    daemon.cli("secrets", "set", "TOK", stdin="x\n")
    daemon.write(spec(ws, warm=False))
    daemon.cli("up")
    daemon.wait_state("w", "running")
    assert wait_for(lambda: starts(ws) == 1, 10)
    time.sleep(1.0)
    assert pids(daemon, 1) == [] and not os.path.isdir(group(daemon, 1).dirs[0])
    os.kill(bot_process(daemon, 0), signal.SIGKILL)
    assert wait_for(lambda: starts(ws) == 2, 10)
    reasons = [e.get("reason") for e in daemon.events("w") if e.get("to_state") == "starting"]
    assert reasons[-1] == "restarting"
    assert pids(daemon, 1) == []
    daemon.cli("stop", "w")


def test_a_spare_left_by_a_killed_daemon_never_runs_and_the_next_daemon_removes_it(
    daemon: DaemonCli, tmp_path: Path
) -> None:
    ws = daemon.spec.parent / "ws"
    daemon.cli("secrets", "set", "TOK", stdin="x\n")
    daemon.write(spec(ws))
    daemon.cli("up")
    bwrap = daemon.wait_state("w", "running")["pid"]
    assert wait_for(lambda: len(pids(daemon, 1)) == 1, 10)
    stale = pids(daemon, 1)[0]
    old = daemon.pid()
    assert old
    os.kill(old, signal.SIGKILL)  # the spare's daemon is gone: its block pipe's writer closed
    assert wait_for(lambda: not alive(old), 5)
    time.sleep(1.5)
    assert alive(stale), "the spare must wait, not run"
    assert starts(ws) == 1, "a spare ran the bot without its daemon"
    # a new daemon adopts the running bot, removes the stale spare and builds a new one
    assert daemon.ps()["w"]["pid"] == bwrap
    assert wait_for(lambda: not alive(stale), 10), "the stale spare was not removed"
    assert wait_for(lambda: len(pids(daemon, 1)) == 1, 10)
    assert starts(ws) == 1
    os.kill(bot_process(daemon, 0), signal.SIGKILL)
    assert wait_for(lambda: starts(ws) == 2, 10)
    reasons = [e.get("reason") for e in daemon.events("w") if e.get("to_state") == "starting"]
    assert reasons[-1] == "restarting (warm)"
    daemon.cli("down")
    assert wait_for(lambda: not pids(daemon, 0) and not pids(daemon, 1), 10)


def test_the_daemon_turns_on_favordynmods_without_touching_the_hosts_cgroup_mounts(daemon: DaemonCli) -> None:
    before = [line for line in Path("/proc/self/mounts").read_text().splitlines() if " cgroup" in line]
    daemon.write('[bots.s]\ncommand = ["sleep", "300"]\nrestart = { policy = "no" }\n')
    daemon.cli("up")
    lines = daemon.cli("events", "--json").stdout.splitlines()
    notes = [line for line in lines if "favordynmods" in line]
    assert notes, "the daemon said nothing about favordynmods"
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    assert any("favordynmods" in line.split()[3] for line in mounts), notes
    after = [line for line in mounts if " cgroup" in line and "clawpen-favor" not in line]
    assert sorted(after) == sorted(
        x for x in before if "clawpen-favor" not in x
    )  # the host's are as they were
    daemon.cli("stop", "s")


def test_a_daemon_stopping_while_a_spare_is_built_leaves_no_process(tmp_path: Path) -> None:
    """The spare's build outlives the supervisor's task when the daemon stops right after a start:
    the finished build is thrown away (no held bubblewrap left; pytest turns a dropped running
    Popen into an error)."""
    import asyncio
    import tempfile

    from helpers import of_uids

    from clawpen.daemon.app import build
    from conftest import UID_BASE

    spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-w-", dir="/tmp"))
    spec_dir.chmod(0o755)
    (spec_dir / "clawpen.toml").write_text('[bots.quick]\ncommand = ["sleep", "300"]\n')
    uids: list[int] = []

    async def main(stop_after: float) -> None:
        daemon = build(tmp_path / f"state{stop_after}")
        try:
            await daemon.dispatch("up", {"file": str(spec_dir / "clawpen.toml")}, "root")
            inst = daemon.instances["quick"][0]
            for _ in range(5000):
                if inst.machine.state == "running":
                    break
                await asyncio.sleep(0.001)
            assert inst.machine.state == "running"
            uids.append(inst.plan().identity.uid)
            await asyncio.sleep(stop_after)  # 0: the spare is being built as the daemon stops
        finally:
            await daemon.shutdown()
            daemon.store.close()
            daemon.services.compressor.close(timeout=10)
            if daemon.services.spares is not None:
                daemon.services.spares.shutdown()

    os.environ["CLAWPEN_UID_BASE"] = str(UID_BASE + 32_768)  # none of the other tests' bot uids
    try:
        for stop_after in (0.0, 0.005, 0.02, 1.0):
            asyncio.run(main(stop_after))
    finally:
        os.environ.pop("CLAWPEN_UID_BASE", None)
        subprocess_rm = ["rm", "-rf", str(spec_dir)]
        __import__("subprocess").run(subprocess_rm, check=False)
    assert wait_for(lambda: not of_uids(uids), 5), of_uids(uids)
