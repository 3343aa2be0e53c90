"""Helpers of bench/vm_bench.py: raw QEMU with the argv and initramfs clawpen's layout makes, the
plan the daemon would give a bot, /proc readings. Not a benchmark by itself."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from container_common import BenchError, descendants
from vm_env import guest_kernel

from clawpen.daemon.lifecycle import instance_plan
from clawpen.plan.build import HostFacts
from clawpen.plan.model import Plan
from clawpen.sandbox import cgroups
from clawpen.sandbox.seccomp import default_policy
from clawpen.spec.loader import parse_spec_text
from clawpen.staticbin import build_static
from clawpen.vm import accel as accel_mod
from clawpen.vm import initrd, kernel, layout


def first_byte(fd: int, timeout: float = 120.0) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(timeout * 1000)) or not os.read(fd, 64):
        raise BenchError("no output")


def cpu_seconds(pid: int | None) -> float:
    """A process's user + system CPU seconds, all threads (NaN when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Raw(NamedTuple):
    argv: list[str]
    stdio: tuple[int, int]  # the descriptor numbers the argv names (-add-fd)
    ctl: Path
    cgroup: Path | None = None  # a cpu cgroup to start QEMU in (None: the bench's own)


def beside_cgroup() -> Path | None:
    """A cpu cgroup of the anchor's own next to clawpen's bots (``<cpu hierarchy>/clawpen/``), no
    limit set in it: raw QEMU then competes for the CPU with the same weight as a bot's cgroup
    (every bot's cgroup is a child of ``clawpen``: on a host where other bots run, a process in
    the root cgroup gets a whole share of its own; the fair anchor sits beside the bot)."""
    host = cgroups.detect()
    top = host.hierarchies.get("cpu")
    if top is None or not (top / host.base).is_dir():
        return None
    path = top / host.base / f"vmbench-raw-{os.getpid()}"
    path.mkdir(exist_ok=True)
    return path


def raw_qemu(plan: Plan, work: Path, tag: str) -> Raw:
    """QEMU's argv of clawpen's layout for ``plan``, its sandbox paths replaced by host paths
    (the files of ``tag`` under ``work``)."""
    guest = kernel.configured(guest_kernel())
    cache = work / "raw-cache"
    hint = "install gcc"
    init = build_static("clawpen.vm", "init.c", "clawpen-vminit", cache, what="the guest's init", hint=hint)
    found = accel_mod.probe()
    tsc = None
    if found.name == "tcg":
        tool = build_static("clawpen.vm", "tsc.c", "clawpen-tsc", cache, what="the TSC probe", hint=hint)
        tsc = accel_mod.tsc_khz(tool) or None
    stdio = (100, 101)
    vm = layout.layout(
        plan,
        kernel=str(guest.image),
        ctl="/unused",
        modules=initrd.module_names(guest.modules),
        accel=found.name,
        secret_env={},
        stdio=stdio,
        tsc_khz=tsc,
    )
    base = initrd.base_archive(init, guest.modules, cache)
    image = work / f"raw-initrd-{tag}"
    image.write_bytes(initrd.instance_image(base, initrd.boot_orders(vm.orders)))
    ctl = work / f"raw-ctl-{tag}"
    ctl.mkdir()
    swaps = [
        (f"path={layout.GUEST_ROOT},", "path=/,"),
        (layout.KERNEL, str(guest.image)),
        (layout.INITRD, str(image)),
        (layout.CTL, str(ctl)),
    ]
    argv = []
    for arg in vm.plan.command:
        for old, new in swaps:
            arg = arg.replace(old, new)
        argv.append(arg)
    if any(layout.GUEST_ROOT in a for a in argv):
        raise BenchError("the bench bot has a writable share: give it none")
    return Raw(argv, stdio, ctl)


def raw_spawn(raw: Raw) -> tuple[subprocess.Popen[bytes], int]:
    """Raw QEMU started as root, and the read end of the guest's stdout port."""
    for f in raw.ctl.iterdir():
        f.unlink()
    r, w = os.pipe()
    err = os.open(os.devnull, os.O_WRONLY)
    os.dup2(w, raw.stdio[0], inheritable=True)
    os.dup2(err, raw.stdio[1], inheritable=True)
    os.close(w)
    os.close(err)
    try:
        join = None if raw.cgroup is None else (lambda cg=raw.cgroup: (cg / "cgroup.procs").write_text("0"))
        proc = subprocess.Popen(
            raw.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=raw.stdio, preexec_fn=join
        )
    except OSError:
        os.close(r)
        raise
    finally:
        for fd in raw.stdio:
            os.close(fd)
    return proc, r


def bench_plan(spec: Path, name: str, state: Path) -> Plan:
    """The plan the daemon would give bot ``name`` of ``spec``."""
    bot = parse_spec_text(spec.read_text(), spec).spec.bots[name]
    host = HostFacts.probe()
    return instance_plan(bot, name, 0, str(spec.parent), state_dir=state, host=host, seccomp=default_policy())


def qemu_pids(root: int) -> list[int]:
    out = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe").endswith("/qemu-system-x86_64"):
                out.append(pid)
    return out


def rss_parts(pid: int, guest_bytes: int) -> tuple[int, int]:
    """Bytes resident of QEMU's guest RAM mapping (anonymous, the guest's size) and of TCG's
    translation cache (the anonymous rwx mapping), from /proc/PID/smaps."""
    guest = tcg = 0
    size = perms = ""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if not fields[0].endswith(":"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                size, perms = str(end - start), fields[1] if len(fields) < 6 else "file"
            elif fields[0] == "Rss:":
                if perms == "rw-p" and int(size) == guest_bytes:
                    guest += int(fields[1]) * 1024
                elif perms == "rwxp":
                    tcg += int(fields[1]) * 1024
    return guest, tcg
