"""The VM tier under QEMU (TCG on this machine): a bot in a guest of its own, supervised by the
daemon like a sandbox bot (logs, secrets, its workspace, restarts, re-adoption after a daemon
SIGKILL, a clean stop through an ACPI power-down), QEMU itself confined as the bot's host uid.

Every test names the shared test kernel (vm_env.guest_kernel: Debian's, fetched once).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli, alive, wait_for
from vm_env import guest_kernel

from conftest import daemon_at

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.vm]
SECRET = "vm-s3cret-value-5678"
BOOT = 90  # seconds a boot may take under TCG on a loaded 2-core machine


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonCli]:
    with daemon_at(tmp_path / "state") as d:
        yield d


def vm_table(memory: str = "256M") -> str:
    return f'tier = "vm"\nvm = {{ kernel = "{guest_kernel()}", memory = "{memory}" }}\n'


def set_secret(d: DaemonCli, name: str, value: str) -> None:
    import subprocess

    subprocess.run([CLAWPEN, "secrets", "set", name], input=value + "\n", text=True, env=d.env, check=True)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _qemu_pid(root: int) -> int:
    """The QEMU process under the sandbox's bubblewrap (its only descendant running QEMU)."""
    todo = [root]
    while todo:
        pid = todo.pop()
        if os.readlink(f"/proc/{pid}/exe").endswith("/qemu-system-x86_64"):
            return pid
        for task in Path(f"/proc/{pid}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    raise AssertionError(f"no QEMU under {root}")


def test_a_vm_bot_boots_logs_keeps_its_secrets_and_stops_cleanly(daemon: DaemonCli, tmp_path: Path) -> None:
    set_secret(daemon, "API_TOKEN", SECRET)
    canary = tmp_path / f"canary-{uuid.uuid4().hex}"
    canary.write_text("host secret\n")
    canary.chmod(0o644)  # readable by every host uid: only the VM boundary keeps it from the bot
    (daemon.spec.parent / "ws").mkdir()
    probe = (
        "echo kernel=$(uname -r) uid=$(id -u) host=$(hostname); "
        "stat -c 'secret %a %u' /run/secrets/API_TOKEN; echo token=$(cat /run/secrets/API_TOKEN); "
        "echo env=$API_TOKEN; "
        "touch /usr/x 2>/dev/null && echo usr-writable || echo usr-readonly; "
        f"cat {canary} 2>/dev/null && echo canary-read || echo canary-unreachable; "
        "ls /proc/1/root/ >/dev/null 2>&1; echo hello > /workspace/hello && echo workspace-writable; "
        "awk '/^Seccomp:/ {print \\\"seccomp=\\\" $2}' /proc/self/status; "
        "unshare -U true 2>/dev/null && echo userns-allowed || echo userns-refused; "
        "touch /tmp/t && echo tmp-writable; echo to-stderr >&2; "
        "trap 'echo got-sigterm; exit 0' TERM; while :; do sleep 1; done"
    )
    daemon.write(f"""
        [bots.vmbox]
        {vm_table()}
        command = ["/bin/sh", "-c", "{probe}"]
        workspace = "ws"
        secrets = ["API_TOKEN"]
        secret_env = ["API_TOKEN"]
        restart = {{ policy = "no" }}
        resources = {{ pids = 64 }}
    """)
    daemon.cli("up", timeout=120)
    row = daemon.wait_state("vmbox", "running", timeout=30)
    assert wait_for(lambda: "tmp-writable" in daemon.cli("logs", "vmbox").stdout, BOOT), daemon.cli(
        "logs", "vmbox"
    ).stdout
    logs = daemon.cli("logs", "vmbox").stdout
    uid = os.stat(daemon.spec.parent / "ws").st_uid
    assert uid >= 1_900_000_000
    # the guest runs Debian's kernel, not the host's, and the bot as its uid there
    assert f"kernel={Path(guest_kernel()).name.removeprefix('vmlinuz-')}" in logs and f"uid={uid}" in logs
    assert "host=vmbox" in logs
    assert f"secret 400 {uid}" in logs
    assert "token=[REDACTED:API_TOKEN]" in logs and "env=[REDACTED:API_TOKEN]" in logs and SECRET not in logs
    assert "usr-readonly" in logs and "workspace-writable" in logs  # read-only root; the positive control
    assert (daemon.spec.parent / "ws" / "hello").read_text() == "hello\n"
    # the canary: readable on the host by any uid (the positive control), never inside the guest
    assert (
        canary.read_text() == "host secret\n" and "canary-unreachable" in logs and "canary-read" not in logs
    )
    assert " err to-stderr" in logs
    # the bot's own seccomp filter and no user namespaces, inside the guest as in the sandbox tier
    assert "seccomp=2" in logs and "userns-refused" in logs and "userns-allowed" not in logs
    # QEMU, from the host: the bot's uid, no capability, no new privileges, seccomp on
    qemu = _qemu_pid(row["pid"])
    status = _status(qemu)
    assert {int(u) for u in status["Uid"].split()} == {uid}
    assert status["CapEff"].strip("0\n") == "" and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    # the secret is in no file under the state folder
    assert not any(SECRET.encode() in p.read_bytes() for p in daemon.home.rglob("*") if p.is_file())
    started = time.monotonic()
    daemon.cli("down", timeout=60)
    assert time.monotonic() - started < 20  # the power-down reached the bot as SIGTERM
    assert "got-sigterm" in daemon.cli("logs", "vmbox").stdout
    events = daemon.events("vmbox")
    assert not any(e["kind"] == "kill" for e in events), "needed SIGKILL"
    assert not alive(qemu)


def test_a_crashed_vm_bot_restarts_and_a_new_daemon_adopts_it(daemon: DaemonCli) -> None:
    daemon.write(f"""
        [bots.crashy]
        {vm_table()}
        command = ["/bin/sh", "-c", "echo boot-$(cat /proc/sys/kernel/random/boot_id); sleep 2; exit 7"]
        restart = {{ policy = "on-failure", max_restarts = 5 }}
        [bots.steady]
        {vm_table()}
        command = ["/bin/sh", "-c", "echo steady-up; exec sleep 600"]
    """)
    daemon.cli("up", timeout=120)
    # crash -> restart: two boots (two guest boot ids), each ending with exit code 7
    assert wait_for(lambda: daemon.cli("logs", "crashy").stdout.count("boot-") >= 2, 2 * BOOT)
    exits = [e for e in daemon.events("crashy") if e.get("to_state") == "exited"]
    assert exits and exits[0]["reason"] == "exited with code 7", exits  # the bot's code, not QEMU's
    ids = {
        line.split("boot-")[1] for line in daemon.cli("logs", "crashy").stdout.splitlines() if "boot-" in line
    }
    assert len(ids) >= 2
    # a daemon SIGKILL leaves the VM running; the next daemon adopts it (same pid, no new boot)
    assert wait_for(lambda: "steady-up" in daemon.cli("logs", "steady").stdout, BOOT)
    before = daemon.ps()["steady"]
    pid = daemon.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid), 10)
    assert alive(before["pid"])
    daemon.cli("up", timeout=120)
    after = daemon.wait_state("steady", "running")
    assert after["pid"] == before["pid"]
    assert daemon.cli("logs", "steady").stdout.count("steady-up") == 1
    daemon.cli("down", timeout=60)
    assert not alive(before["pid"])


def test_a_vm_bot_on_its_loopback_is_health_checked_and_published(daemon: DaemonCli) -> None:
    """As in the other tiers, a server on the bot's 127.0.0.1 is what `publish` and the health
    check reach (QEMU forwards the port into the guest; init's relay dials the guest's loopback)."""
    from api_fixtures import free_port

    (daemon.spec.parent / "site").mkdir()
    (daemon.spec.parent / "site" / "index.html").write_text("served from the guest\n")
    port = free_port()
    daemon.write(f"""
        [bots.web]
        {vm_table()}
        command = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/site"]
        filesystem = {{ ro = ["./site:/site"] }}
        health = {{ http = "http://127.0.0.1:8000/", interval = "2s", timeout = "2s", retries = 3 }}
        network = {{ publish = ["127.0.0.1:{port}:8000"] }}
    """)
    daemon.cli("up", timeout=120)
    assert wait_for(lambda: daemon.ps().get("web", {}).get("health") == "healthy", BOOT), daemon.ps()
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as reply:
        assert reply.read() == b"served from the guest\n"
    daemon.cli("down", timeout=60)


def test_clawpen_run_runs_a_vm_bot_in_its_guest_and_exits_with_its_code(tmp_path: Path) -> None:
    import subprocess

    spec = tmp_path / "clawpen.toml"
    spec.write_text(
        f'[bots.once]\n{vm_table()}command = ["/bin/sh", "-c", "echo guest=$(uname -r); exit 5"]\n'
    )
    env = {**os.environ, "CLAWPEN_HOME": str(tmp_path / "state")}
    done = subprocess.run(
        [CLAWPEN, "run", "-f", str(spec), "once"], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 5, done
    assert f"guest={Path(guest_kernel()).name.removeprefix('vmlinuz-')}" in done.stdout
    assert os.uname().release not in done.stdout  # the host's kernel did not run it


def test_a_vm_bot_with_an_image_root_sees_that_system_not_the_hosts(daemon: DaemonCli) -> None:
    """``rootfs = "image:PATH"``: the guest's /usr comes from the tree (a static busybox here),
    the host's /usr is not in the guest (its python3 is the positive control, on the host)."""
    import shutil

    tree = daemon.spec.parent / "image"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "share").mkdir()
    (tree / "usr" / "share" / "image-id").write_text("busybox-image\n")
    busybox = shutil.which("busybox")
    assert busybox is not None and Path("/usr/bin/python3").exists()
    shutil.copy(busybox, tree / "usr" / "bin" / "busybox")
    for tool in ("sh", "cat", "echo", "test", "ls"):
        (tree / "usr" / "bin" / tool).symlink_to("busybox")
    probe = "cat /usr/share/image-id; test -e /usr/bin/python3 && echo host-usr || echo no-host-usr"
    daemon.write(f"""
        [bots.imaged]
        tier = "vm"
        vm = {{ kernel = "{guest_kernel()}", memory = "256M", rootfs = "image:./image" }}
        command = ["/bin/sh", "-c", "{probe}"]
        restart = {{ policy = "no" }}
    """)
    daemon.cli("up", timeout=120, check=False)
    assert wait_for(lambda: "host-usr" in daemon.cli("logs", "imaged").stdout, BOOT)
    logs = daemon.cli("logs", "imaged").stdout
    assert "busybox-image" in logs and "no-host-usr" in logs and " host-usr" not in logs, logs


def test_a_vm_bot_over_its_memory_is_killed_as_oom_inside_its_guest(daemon: DaemonCli) -> None:
    """resources.memory holds inside the guest (the bot's cgroup there): a bot that grows past
    it ends as `oom`, while a small allocation (the positive control) passes."""
    grow = "b = bytearray(16 << 20); print('small-ok', flush=True); b = bytearray(400 << 20); print('big-ok')"
    daemon.write(f"""
        [bots.hog]
        {vm_table("512M")}
        command = ["python3", "-c", "{grow}"]
        resources = {{ memory = "96M" }}
        restart = {{ policy = "no" }}
    """)
    daemon.cli("up", timeout=120, check=False)

    def oom() -> bool:
        return any(e.get("to_state") == "oom" for e in daemon.events("hog"))

    assert wait_for(oom, BOOT), daemon.events("hog")
    logs = daemon.cli("logs", "hog").stdout
    assert "small-ok" in logs and "big-ok" not in logs
