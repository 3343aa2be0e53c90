"""The VM tier (``tier = "vm"``): the bot runs in a QEMU guest, QEMU in the bot's namespace sandbox.

:class:`VmTier` turns the bot's plan into a plan that runs QEMU (:mod:`clawpen.vm.layout`) and
hands it to the namespace tier, so QEMU runs as the bot's host uid, in the bot's cgroup (with the
VM's memory and CPU limits), under clawpen's seccomp filter and QEMU's own (``-sandbox on``), in
the bot's network namespace (its user-mode network stack opens its sockets there: the guest's
traffic meets the gateway, allowlist, DNS and connection log as a sandbox bot's does), seeing no
host file but what it shares. The guest's initramfs carries clawpen's init and its orders
(:mod:`clawpen.vm.initrd`); the kernel is Debian's (:mod:`clawpen.vm.kernel`).

:class:`VmSandbox` is the running VM as the supervisor sees it: SIGTERM is an ACPI power-down
through QMP (the guest's init passes it to the bot as SIGTERM), and how the bot ended is what the
guest's init wrote on the status port, not QEMU's own exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from clawpen.errors import ClawpenError, NotReady, SandboxError
from clawpen.fsutil import write_atomic
from clawpen.paths import cache_dir
from clawpen.sandbox import seccomp
from clawpen.sandbox.tier import (
    EXIT_OOM,
    EXIT_SETUP,
    RunningSandbox,
    RunResult,
    SandboxRecord,
    Stdio,
    ended_within,
)
from clawpen.staticbin import build_static
from clawpen.vm import accel as accel_mod
from clawpen.vm import initrd, kernel, layout, qmp

if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Sequence
    from typing import IO

    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import CgroupStats
    from clawpen.sandbox.namespace import NamespaceTier

    _Stream = int | IO[bytes] | None

INIT_HINT = "install gcc (it builds clawpen's guest init, once), or use the sandbox tier"
# QEMU resolves these as the bot's uid (bubblewrap binds by path), so they live outside clawpen's
# 0700 state folder: the kernel fetched for "auto" (public data) and each VM's control folder
# (its QMP socket and status file, 0700 and the bot's; the parent 0711, names not listable).
KERNEL_CACHE = Path("/var/cache/clawpen")
CTL_ROOT = Path("/run/clawpen-vm")
CTL_SIZE = 256 << 10
STATUS_MAX = 4096  # bytes of the status file read (the guest writes two short lines)


def _run(argv: list[str], what: str) -> None:
    import subprocess

    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise SandboxError(f"cannot {what}: {done.stderr.strip()[-200:]}", where="vm", hint="clawpen doctor")


def release_ctl(ctl: Path) -> None:
    """Unmount and remove a VM's control folder (left by a run that ended, or never was)."""
    if os.path.ismount(ctl):
        _run(["umount", "--lazy", str(ctl)], "unmount the VM's control folder")
    shutil.rmtree(ctl, ignore_errors=True)


class VmTier:
    """Runs a bot in a QEMU guest (a :class:`~clawpen.sandbox.tier.Tier`)."""

    name = "vm"
    makes_netns = False  # QEMU runs in the netns the daemon made for the bot, as a sandbox bot does

    def __init__(self, state: Path, sandbox: NamespaceTier, *, accel: str | None = None) -> None:
        self._state = state
        self._sandbox = sandbox
        self._accel = accel  # None: probed on first use
        self.accel_reason = ""
        self._tsc_khz: int | None = None
        self._probe_lock = threading.Lock()

    def accel(self) -> str:
        return self._host_probes()[0]

    def tsc_khz(self) -> int | None:
        """The host's TSC rate for a TCG guest (measured once), None under KVM."""
        accel, khz = self._host_probes()
        return khz if accel == "tcg" and khz else None

    def _host_probes(self) -> tuple[str, int]:
        """KVM or TCG, and the TSC rate, answered together: VMs start in threads of the daemon,
        and a guest started with a half-set answer (TCG without the rate) can hang at boot."""
        with self._probe_lock:
            if self._accel is None:
                self._accel, self.accel_reason, self._tsc_khz = self._probe_host()
            return self._accel, self._tsc_khz or 0

    def _probe_host(self) -> tuple[str, str, int]:
        """Probed once per host boot and QEMU, and kept in clawpen's cache (each `clawpen run`
        would pay ~0.2 s for them)."""
        cache = cache_dir(self._state)
        key = f"{_boot_id()}:{_mtime(accel_mod.QEMU)}"
        saved = cache / "vm-host.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(saved.read_text())
            if data["key"] == key:
                return str(data["accel"]), str(data["reason"]), int(data["tsc_khz"])
        found = accel_mod.probe()
        khz = 0
        if found.name == "tcg":
            tool = build_static(
                "clawpen.vm", "tsc.c", "clawpen-tsc", cache, what="the TSC probe", hint=INIT_HINT
            )
            khz = accel_mod.tsc_khz(tool)
        record = {"key": key, "accel": found.name, "reason": found.reason, "tsc_khz": khz}
        with contextlib.suppress(OSError):
            cache.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(saved, json.dumps(record).encode(), mode=0o600)
        return found.name, found.reason, khz

    def ctl_dir(self, cgroup_name: str) -> Path:
        """The VM's control folder; ``cgroup_name`` carries the daemon's scope (one per state)."""
        return CTL_ROOT / cgroup_name.replace("/", "_")

    def _prepare(
        self, plan: Plan, cgroup_name: str, secrets: Mapping[str, bytes], stdio: tuple[int, int]
    ) -> tuple[Plan, dict[str, bytes]]:
        if plan.vm is None:
            raise SandboxError("the plan has no vm settings", where="vm", hint='set tier = "vm"')
        cache = cache_dir(self._state)
        guest = kernel.resolve(plan.vm.kernel, KERNEL_CACHE)
        init = build_static(
            "clawpen.vm", "init.c", "clawpen-vminit", cache, what="the guest's init", hint=INIT_HINT
        )
        mods = initrd.module_order(guest.modules)  # read once: the archive's key and the orders
        base = initrd.base_archive(init, guest.modules, cache, mods)
        ctl = self.ctl_dir(cgroup_name)
        release_ctl(ctl)
        ctl.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(ctl.parent, 0o711)  # noqa: S103 - traversable by QEMU's uid, not listable
        ctl.mkdir(mode=0o700)
        # A tmpfs of its own, small: what QEMU writes there (the status port, the console) comes
        # from the guest, which must not fill the host's /run.
        opts = (
            f"size={CTL_SIZE},mode=0700,uid={plan.identity.uid},gid={plan.identity.gid},nosuid,nodev,noexec"
        )
        _run(["mount", "-t", "tmpfs", "-o", opts, "clawpen-vm", str(ctl)], "mount the VM's control folder")
        secret_env = {n: secrets[n].decode(errors="replace") for n in plan.secret_env if n in secrets}
        vm = layout.layout(
            plan,
            kernel=str(guest.image),
            ctl=str(ctl),
            modules=[name for name, _ in mods],
            accel=self.accel(),
            secret_env=secret_env,
            stdio=stdio,
            tsc_khz=self.tsc_khz(),
            image_has=_image_has(plan),
        )
        bpf = seccomp.bpf_for(plan.seccomp, cache)  # the bot's own filter, loaded by the guest's init
        image = initrd.instance_image(base, initrd.boot_orders(vm.orders), bpf)
        return vm.plan, {**secrets, layout.INITRD_SECRET: image}

    def run(
        self, plan: Plan, *, timeout: float | None = None, secrets: Mapping[str, bytes] = MappingProxyType({})
    ) -> RunResult:
        """Run the VM bot in the foreground (``clawpen run``-like: stdio inherited)."""
        box = self.start(plan, secrets=secrets)
        try:
            if not ended_within(box, timeout):
                box.kill()
                ended_within(box, 10.0)
            return box.collect()
        except BaseException:  # Ctrl-C: the VM goes with clawpen
            box.kill()
            ended_within(box, 10.0)
            raise
        finally:
            box.teardown()

    def start(
        self,
        plan: Plan,
        *,
        cgroup_name: str | None = None,
        stdio: Stdio = Stdio(),  # noqa: B008 - an immutable record
        status_fd: int | None = None,
        secrets: Mapping[str, bytes] = MappingProxyType({}),
        wire_net: Callable[[int], None] | None = None,
    ) -> VmSandbox:
        name = cgroup_name or f"{plan.bot}-{os.getpid()}"
        out, err = _write_only(stdio.stdout, 1), _write_only(stdio.stderr, 2)
        try:
            qplan, qsecrets = self._prepare(plan, name, secrets, (out, err))
            inner = self._sandbox.start(
                qplan,
                cgroup_name=name,
                stdio=stdio._replace(extra=(out, err)),
                status_fd=status_fd,
                secrets=qsecrets,
            )
        except BaseException:  # nothing of a start that failed stays mounted
            with contextlib.suppress(ClawpenError):
                release_ctl(self.ctl_dir(name))
            raise
        finally:
            os.close(out)
            os.close(err)
        return VmSandbox(inner, self.ctl_dir(name))

    def adopt(self, record: SandboxRecord, *, status: Path, started_at: float) -> VmSandbox | None:
        inner = self._sandbox.adopt(record, status=status, started_at=started_at)
        if inner is None or record.cgroup is None:
            return None
        return VmSandbox(inner, self.ctl_dir(record.cgroup))


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return "?"


def _mtime(path: str) -> int:
    with contextlib.suppress(OSError):
        return os.stat(path).st_mtime_ns
    return 0


def _parse_end(line: str) -> tuple[str, int, bool] | None:
    """``exit N`` / ``signal N [oom]`` from the status port; anything else (the guest could be
    hostile) is None. Codes are kept to what a process can end with."""
    words = line.split()
    if len(words) < 2 or words[0] not in ("exit", "signal") or not words[1].isdigit() or len(words[1]) > 3:
        return None
    code = int(words[1])
    if code > (255 if words[0] == "exit" else 64):
        return None
    return words[0], code, words[2:] == ["oom"]


def _image_has(plan: Plan) -> frozenset[str]:
    """Which of the plan's system binds a ``rootfs = "image:PATH"`` tree has."""
    root = plan.vm.image_root if plan.vm is not None else None
    if root is None:
        return frozenset()
    return frozenset(d for d in layout.image_binds(plan) if os.path.lexists(root + d))


def _write_only(fd: int | None, default: int) -> int:
    """A write-only descriptor of the stream ``fd`` (``None``: clawpen's own ``default``): QEMU's
    fd sets hand a descriptor to a file chardev only when its access mode is the one asked for,
    and the daemon's log pipes are open read-write."""
    return os.open(f"/proc/self/fd/{default if fd is None else fd}", os.O_WRONLY)


class VmSandbox:
    """A running VM bot (a :class:`~clawpen.sandbox.tier.RunningSandbox`) over the namespace
    sandbox that runs its QEMU."""

    def __init__(self, inner: RunningSandbox, ctl: Path) -> None:
        self.inner = inner
        self.ctl = ctl

    @property
    def pid(self) -> int:
        return self.inner.pid

    @property
    def sandbox_pid(self) -> int | None:
        return self.inner.sandbox_pid

    @property
    def cgroup_name(self) -> str | None:
        return self.inner.cgroup_name

    def exit_fd(self) -> int:
        return self.inner.exit_fd()

    def signal(self, signum: int) -> None:
        """SIGTERM and SIGINT: an ACPI power-down (the guest's init sends the bot SIGTERM); QEMU
        that does not answer QMP gets the signal itself. Others are not passed into a guest."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self._started():
                self.inner.signal(signum)  # still booting: no bot to stop yet, QEMU quits at once
                return
            try:
                qmp.command(self.ctl, "system_powerdown", timeout=1.0)
            except ClawpenError:
                self.inner.signal(signum)
            return
        if signum == signal.SIGKILL:
            self.inner.kill()
            return
        raise SandboxError(
            f"signal {signal.Signals(signum).name} cannot be sent into a VM bot",
            where="signal",
            hint="stop or restart the bot (a power-down sends the bot SIGTERM)",
        )

    def kill(self, *, monitor: bool = False) -> None:
        """QMP ``quit`` first (QEMU ends at once, its files closed), then SIGKILL to everything
        in the cgroup, for a QEMU that did not answer."""
        with contextlib.suppress(ClawpenError):
            qmp.command(self.ctl, "quit", timeout=0.5)
        self.inner.kill(monitor=monitor)

    def stats(self) -> CgroupStats:
        return self.inner.stats()

    def record(self) -> SandboxRecord:
        return self.inner.record()

    def guest_status(self) -> list[str]:
        """The lines the guest's init wrote on its status port (``started T``, then how the bot
        ended)."""
        try:
            with open(self.ctl / "status", "rb") as f:
                return f.read(STATUS_MAX).decode(errors="replace").splitlines()
        except OSError:
            return []

    def collect(self) -> RunResult:
        """How the bot ended, as the guest's init reported it; QEMU's own end when it could not
        (QEMU killed, the guest crashed or never booted)."""
        outer = self.inner.collect()
        ends = [end for end in map(_parse_end, self.guest_status()) if end is not None]
        if not ends:
            if outer.reason == "exited" and outer.exit_code == 0:
                return outer._replace(
                    exit_code=EXIT_SETUP,
                    reason="setup-failed",
                    message=f"the guest stopped before its bot ran{self._console()}",
                )
            return outer
        kind, code, oom = ends[0]
        if kind == "exit":
            return outer._replace(exit_code=code, reason="exited", signal=None, message="")
        signum = code
        if oom:
            return outer._replace(
                exit_code=EXIT_OOM,
                reason="oom",
                signal=None,
                message="killed by the OOM killer in its guest: memory limit reached",
            )
        return outer._replace(exit_code=128 + signum, reason="signaled", signal=signum, message="")

    def _console(self) -> str:
        """The end of the guest kernel's console (its errors), for a message."""
        try:
            with open(self.ctl / "console", "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 600))
                tail = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        lines = [line for line in tail.splitlines()[-4:] if "reboot: Power down" not in line]
        return f"; the guest kernel said: {' | '.join(lines)}" if lines else ""

    def teardown(self) -> None:
        self.inner.teardown()
        with contextlib.suppress(ClawpenError):
            release_ctl(self.ctl)

    def enter(
        self,
        plan: Plan,
        command: Sequence[str],
        *,
        bpf: bytes,
        stdin: _Stream = None,
        stdout: _Stream = None,
        stderr: _Stream = None,
        start_timeout: float = 10.0,
    ) -> subprocess.Popen[bytes]:
        raise SandboxError(
            "commands cannot be run inside a VM bot yet (no guest agent)",
            where="exec",
            hint="use an http or tcp health check; read the bot's files in its workspace",
        )

    # --- health checks (an edit of the vmnet helper's; see /work/brief/vmnet-notes.md) ---
    accepts_first = True  # QEMU's forwards accept before the guest does (daemon/health.py's tcp check)

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]:
        """A socket in the bot's network namespace: QEMU forwards the guest's ports there.
        NotReady while the guest boots (a health check's start period begins with the bot)."""
        if not self._started():
            raise NotReady("the guest is still booting", where="health")
        return self.inner.open_socket(host, uid=uid)

    def _started(self) -> bool:
        return any(line.startswith("started") for line in self.guest_status())
