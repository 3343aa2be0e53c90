"""A test guest on pure cgroup v2: runs a command as root in a QEMU guest (TCG here) whose only
cgroup hierarchy is cgroup2 at /sys/fs/cgroup, to test clawpen's cgroup v2 code path on a host
that runs cgroup v1/hybrid.

Test code, not product code. The guest boots the shared test kernel (vm_env.guest_kernel) with
clawpen's guest init (src/clawpen/vm/init.c, built static) and its orders: the host's / shared
read-only over virtio-9p (it holds the repository, its .venv, python and bwrap at their paths),
tmpfs on /tmp, /run and /var/tmp, one writable share for results (``RESULTS`` in the guest),
``cgroup2 1`` (cgroup2 mounted at /sys/fs/cgroup; the kernel gets ``cgroup_no_v1=all``, so no v1
controller can be bound elsewhere) and ``exec 1`` (the command runs as root). The command's
stdout and stderr are virtio-serial ports written to files, the init reports how it ended on a
third ("exit N", "signal N"), and the guest kernel's console goes to a fourth file.

QEMU runs as root, unconfined (unlike the VM tier's, in the bot's sandbox): it is test code that
exports the host's / read-only and only a fresh results folder writable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from vm_env import KERNEL_CACHE, QEMU, guest_kernel

from clawpen.staticbin import build_static
from clawpen.vm import accel, initrd, kernel

RESULTS = "/tmp/guest-results"  # the writable share's mount point in the guest
REPO = Path(__file__).resolve().parents[2]  # shared read-only at its own path
MEMORY_MIB = 2048
CPUS = 2
CACHE = KERNEL_CACHE / "cgroup2-guest"  # the static init and the shared initramfs part
HINT = "the cgroup v2 test guest needs gcc and glibc's static libraries (apt-get install gcc libc6-dev)"


class GuestRun(NamedTuple):
    """How a guest run ended: the init's status line ("exit 0"; "" when QEMU was killed at the
    timeout), the command's stdout and stderr, the kernel's console, the results folder."""

    status: str
    out: str
    err: str
    console: str
    results: Path

    def report(self) -> str:
        """Everything the guest said, for an assertion message."""
        return (
            f"status: {self.status or '(none: killed at the timeout)'}\n--- stdout ---\n{self.out}"
            f"\n--- stderr ---\n{self.err}\n--- console ---\n{self.console}"
        )


def _orders(modules: Sequence[str], command: Sequence[str], env: Mapping[str, str], cwd: str) -> bytes:
    orders: list[tuple[str, ...]] = [("mod", name) for name in modules]
    orders += [("root", "root")]
    # tmpfs first: the results share is mounted on a folder made in the guest's /tmp
    orders += [("tmpfs", "/tmp", "768M", "1777"), ("tmpfs", "/run", "64M", "755")]
    orders += [("tmpfs", "/var/tmp", "64M", "1777"), ("share", "results", RESULTS)]
    # the repository (its tests and .venv) at its own path, also when that is under /tmp (a CI clone)
    orders += [("share", "repo", str(REPO))]
    orders += [("hostname", "cgroup2-guest"), ("cgroup2", "1"), ("exec", "1"), ("cwd", cwd)]
    orders += [("nofile", "65536")]
    orders += [("arg", a) for a in command]
    orders += [("env", f"{k}={v}") for k, v in env.items()]
    return initrd.boot_orders(orders)


def qemu_argv(work: Path, tsc_khz: int) -> list[str]:
    """QEMU's command line: microvm under TCG, the kernel and initramfs in ``work``, the host's /
    read-only and ``work/results`` writable over 9p, the guest's ports as files in ``work``."""
    argv = [QEMU, "-name", "clawpen-cgroup2-guest", "-nodefaults", "-no-user-config", "-display", "none"]
    argv += ["-no-reboot", "-M", "microvm,acpi=on,rtc=on,pit=on,pic=on", "-accel", "tcg,tb-size=256"]
    argv += ["-cpu", "max", "-m", f"{MEMORY_MIB}M", "-smp", str(CPUS)]
    argv += ["-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd")]
    cmdline = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init cgroup_no_v1=all"
    if tsc_khz:
        cmdline += f" tsc_early_khz={tsc_khz} tsc=reliable"
    argv += ["-append", cmdline]
    argv += ["-chardev", f"file,id=con,path={work / 'console'}", "-serial", "chardev:con"]
    argv += ["-device", "virtio-serial-device"]
    for port in ("stdout", "stderr", "status"):
        argv += ["-chardev", f"file,id={port},path={work / port},append=on"]
        argv += ["-device", f"virtserialport,chardev={port},name=org.clawpen.{port}"]
    shares = (("root", "/", True), ("results", str(work / "results"), False), ("repo", str(REPO), True))
    for tag, path, ro in shares:
        opts = f"local,id={tag},path={path},security_model=none,multidevs=remap"
        argv += ["-fsdev", opts + (",readonly=on" if ro else "")]
        argv += ["-device", f"virtio-9p-device,fsdev={tag},mount_tag={tag}"]
    return argv


def run(command: Sequence[str], *, env: Mapping[str, str], cwd: str, work: Path, timeout: float) -> GuestRun:
    """Boot the guest, run ``command`` (as root, in ``cwd``, with only ``env``) and power off;
    QEMU is killed after ``timeout`` seconds. ``work``: an empty folder for the guest's files."""
    found = kernel.resolve(guest_kernel(), KERNEL_CACHE, fetch=False)
    init = build_static("clawpen.vm", "init.c", "clawpen-vminit", CACHE, what="the guest's init", hint=HINT)
    tsc = build_static("clawpen.vm", "tsc.c", "clawpen-tsc", CACHE, what="the TSC probe", hint=HINT)
    mods = initrd.module_order(found.modules)
    base = initrd.base_archive(init, found.modules, CACHE, mods)
    orders = _orders([name for name, _ in mods], command, env, cwd)
    (work / "results").mkdir(mode=0o755)
    (work / "initrd").write_bytes(initrd.instance_image(base, orders))
    (work / "vmlinuz").symlink_to(found.image)
    for port in ("stdout", "stderr", "status", "console"):
        (work / port).touch()
    with subprocess.Popen(
        qemu_argv(work, accel.tsc_khz(tsc)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as qemu:
        try:
            said, _ = qemu.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(qemu.pid, signal.SIGKILL)
            said, _ = qemu.communicate()

    def text(name: str) -> str:
        return (work / name).read_text(errors="replace")

    console = text("console") + (f"\n--- QEMU ---\n{said}" if said.strip() else "")
    ends = [line for line in text("status").splitlines() if not line.startswith("started ")]
    return GuestRun(ends[-1] if ends else "", text("stdout"), text("stderr"), console, work / "results")


def main() -> None:
    """By hand: ``python tests/integration/cgroup2_guest.py CMD...`` runs CMD in the guest."""
    import sys

    with tempfile.TemporaryDirectory(prefix="cgroup2-guest-") as tmp:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "LANG": "C.UTF-8"}
        done = run(sys.argv[1:], env=env, cwd="/", work=Path(tmp), timeout=600)
        print(done.report())


if __name__ == "__main__":
    main()
