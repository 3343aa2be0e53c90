"""A VM bot's plan -> the sandbox plan that runs QEMU, QEMU's argv, and the guest's orders. Pure.

QEMU runs in the bot's own namespace sandbox (its uid, cgroup, seccomp filter and network
namespace). Inside it, the bot's filesystem as the sandbox tier would give it is built a second
time under :data:`GUEST_ROOT` and shared with the guest read-only over virtio-9p; each writable
bind (the workspace, ``filesystem.rw``) is a writable share of its own. QEMU's own view holds the
host's system folders, the kernel, the instance's initramfs (in memory: it holds the bot's
environment) and the control folder (QMP socket, status file) and nothing of the bot's data
but through those shares. /proc, /dev and /sys of QEMU's sandbox are never shared: the guest
mounts its own.
"""

from __future__ import annotations

from typing import NamedTuple

from clawpen.plan.model import CgroupLimits, Mount, Plan, Rlimits
from clawpen.spec.vm import MIB, VmSettings

GUEST_ROOT = "/vm/root"
KERNEL = "/vm/kernel"
INITRD = "/vm/initrd"
CTL = "/vm/ctl"
QMP = f"{CTL}/qmp"
STATUS = f"{CTL}/status"
CONSOLE = f"{CTL}/console"  # the guest kernel's errors (the tier quotes them when a boot fails)
INITRD_SECRET = "clawpen:vm-initrd"  # noqa: S105 - the key the tier hands the image under (never a vault name)
QEMU = "/usr/bin/qemu-system-x86_64"
TB_SIZE_MIB = 64  # TCG's translation cache (QEMU's default is 1 GiB)
OVERHEAD = 256 * MIB  # QEMU's own memory above the guest's RAM, in its cgroup
QEMU_PIDS = 512  # QEMU's threads: vCPUs, the 9p worker pool, I/O
QEMU_NOFILE = 8192  # 9p keeps a host descriptor per file the guest holds open
GUEST_NET = "10.0.2.15"  # QEMU user-mode networking's guest address (init.c)
RELAY_BASE = 61000  # the guest's relay port of the i-th forwarded port (init.c "fwd")
_SHARED_KINDS = ("ro", "symlink", "data", "secret", "dir", "rw")


class VmLayout(NamedTuple):
    """What :func:`layout` decided: the plan that runs QEMU and the guest's orders."""

    plan: Plan
    orders: tuple[tuple[str, ...], ...]


def _system(m: Mount) -> bool:
    """A bind of the host's system (/usr, /etc entries), not one of the bot's own."""
    return m.kind == "ro" and not m.pin and not m.dest.startswith("/run")


def _guest_tree(
    plan: Plan, image: tuple[str, frozenset[str]] | None
) -> tuple[list[Mount], list[tuple[str, ...]]]:
    """The bot's mounts re-rooted under GUEST_ROOT, and the guest's share/tmpfs orders.
    ``image``: ``rootfs = "image:PATH"``'s PATH and which of the system binds it has: the guest's
    system comes from there instead of the host."""
    tree: list[Mount] = []
    orders: list[tuple[str, ...]] = []
    dests = [m.dest for m in plan.mounts]
    for m in plan.mounts:
        dest = GUEST_ROOT + m.dest
        if image is not None and _system(m):
            if m.dest in image[1]:
                tree.append(m._replace(dest=dest, source=image[0] + m.dest))
            continue
        if m.kind in ("proc", "dev"):
            tree.append(Mount("dir", dest, mode=0o755))
        elif m.kind == "tmpfs":
            nested = any(d != m.dest and d.startswith(m.dest.rstrip("/") + "/") for d in dests)
            if m.dest == "/dev/shm":
                continue  # the guest's own /dev
            if nested:  # holds other mounts (/run: the secrets): shared as it is, read-only
                tree.append(m._replace(dest=dest))
            else:
                tree.append(Mount("dir", dest, mode=m.mode))
                orders.append(("tmpfs", m.dest, str(m.size or 64 * MIB), f"{m.mode or 0o755:o}"))
        elif m.kind == "remount-ro":
            continue  # the whole root is remounted read-only at the end
        else:
            tree.append(m._replace(dest=dest))
            if m.kind == "rw":
                orders.append(("share", f"rw{len([o for o in orders if o[0] == 'share'])}", m.dest))
    tree.append(Mount("dir", f"{GUEST_ROOT}/sys", mode=0o755))
    return tree, orders


def _qemu_mounts(plan: Plan, kernel: str, ctl: str) -> list[Mount]:
    """QEMU's own view: the host's system folders and /etc entries of the bot's plan, fresh /proc,
    /dev and /tmp, the kernel, the initramfs and the control folder."""
    system = [
        m
        for m in plan.mounts
        if _system(m) or m.kind == "symlink" or (m.kind == "data" and m.dest.startswith("/etc/"))
    ]
    return [
        *system,
        Mount("proc", "/proc"),
        Mount("dev", "/dev"),
        Mount("tmpfs", "/tmp", size=16 * MIB, mode=0o1777),
        Mount("dir", "/vm", mode=0o755),
        Mount("ro", KERNEL, source=kernel, pin=True),
        Mount("secret", INITRD, source=INITRD_SECRET, mode=0o400),
        Mount("rw", CTL, source=ctl, pin=True),
    ]


def guest_orders(
    plan: Plan, modules: list[str], shares: list[tuple[str, ...]], secret_env: dict[str, str]
) -> list[tuple[str, ...]]:
    """The init's orders (see init.c): modules, mounts, network, identity, limits, command."""
    rl = plan.rlimits
    orders: list[tuple[str, ...]] = [("mod", name) for name in modules]
    orders += [("root", "root"), *shares, ("hostname", plan.hostname)]
    if plan.link is not None or (plan.vm is not None and plan.vm.ports):
        orders.append(("net", "1"))
    ports = plan.vm.ports if plan.vm is not None else ()
    orders += [("fwd", str(p), str(RELAY_BASE + i)) for i, p in enumerate(ports)]
    orders += [("uid", str(plan.identity.uid)), ("gid", str(plan.identity.gid)), ("cwd", plan.cwd)]
    orders += [("nofile", str(rl.nofile)), ("core", str(rl.core))]
    if rl.fsize is not None:
        orders.append(("fsize", str(rl.fsize)))
    if plan.cgroup.pids_max is not None:
        orders.append(("pids", str(plan.cgroup.pids_max)))
    if plan.cgroup.memory_max is not None:  # the bot's own limit, in a cgroup of the guest
        orders.append(("memory", str(plan.cgroup.memory_max)))
    orders += [("arg", a) for a in plan.command]
    orders += [("env", f"{k}={v}") for k, v in (*plan.env, *secret_env.items())]
    return orders


def qemu_argv(
    vm: VmSettings,
    shares: list[tuple[str, ...]],
    *,
    accel: str,
    net: bool,
    stdio: tuple[int, int],
    tsc_khz: int | None = None,
) -> list[str]:
    """QEMU's command line inside the sandbox (paths are the sandbox's); ``stdio``: the numbers of
    the write-only descriptors of the bot's stdout and stderr that QEMU inherits."""
    argv = [QEMU, "-name", "clawpen-vm,process=clawpen-vm", "-nodefaults", "-no-user-config"]
    # The legacy PIT and PIC stay on: without them Linux under TCG at times finds no clock to
    # calibrate its TSC against and hangs at boot.
    argv += ["-display", "none", "-no-reboot", "-M", "microvm,acpi=on,rtc=on,pit=on,pic=on"]
    if accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", f"tcg,tb-size={TB_SIZE_MIB}", "-cpu", "max"]
    argv += ["-m", f"{vm.memory // MIB}M", "-smp", str(vm.cpus)]
    argv += ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    argv += ["-kernel", KERNEL, "-initrd", INITRD]
    cmdline = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init"
    if tsc_khz:  # TCG: the host's TSC rate, so the guest skips a calibration a CPU quota can break
        cmdline += f" tsc_early_khz={tsc_khz} tsc=reliable"
    argv += ["-append", cmdline]
    # The guest kernel's own messages (errors only) go to the bot's stderr.
    # Standard streams by descriptor (QEMU's fd sets: the sandbox's uid may not reopen the daemon's
    # pipes by path); the tier hands them over write-only.
    argv += ["-add-fd", f"fd={stdio[0]},set=1,opaque=stdout", "-add-fd", f"fd={stdio[1]},set=2,opaque=stderr"]
    argv += ["-chardev", f"file,id=con,path={CONSOLE}", "-serial", "chardev:con"]
    argv += ["-device", "virtio-serial-device"]
    for port, path in (("stdout", "/dev/fdset/1"), ("stderr", "/dev/fdset/2"), ("status", STATUS)):
        argv += ["-chardev", f"file,id={port},path={path},append=on"]
        argv += ["-device", f"virtserialport,chardev={port},name=org.clawpen.{port}"]
    exports = [("root", GUEST_ROOT, True)] + [(s[1], GUEST_ROOT + s[2], False) for s in shares]
    for tag, path, ro in exports:
        opts = f"local,id={tag},path={path},security_model=none,multidevs=remap"
        argv += ["-fsdev", opts + (",readonly=on" if ro else "")]
        argv += ["-device", f"virtio-9p-device,fsdev={tag},mount_tag={tag}"]
    if net:
        forwards = "".join(f",hostfwd=tcp::{p}-:{RELAY_BASE + i}" for i, p in enumerate(vm.ports))
        argv += ["-netdev", f"user,id=net0,ipv6=off{forwards}", "-device", "virtio-net-device,netdev=net0"]
    argv += ["-qmp", f"unix:{QMP},server=on,wait=off"]
    return argv


def layout(
    plan: Plan,
    *,
    kernel: str,
    ctl: str,
    modules: list[str],
    accel: str,
    secret_env: dict[str, str],
    stdio: tuple[int, int],
    tsc_khz: int | None = None,
    image_has: frozenset[str] = frozenset(),
) -> VmLayout:
    """The sandbox plan that runs the VM of ``plan`` (whose ``vm`` is set), and the guest's orders
    (which hold ``secret_env``'s values: they go into the in-memory initramfs only).
    ``image_has``: with ``rootfs = "image:PATH"``, the system binds' paths that PATH has."""
    vm = plan.vm if plan.vm is not None else VmSettings()
    root = vm.image_root
    tree, shares = _guest_tree(plan, None if root is None else (root, image_has))
    share_orders = [o for o in shares if o[0] == "share"]
    net = plan.link is not None or bool(vm.ports)
    mounts = [*_qemu_mounts(plan, kernel, ctl), *tree, Mount("remount-ro", "/")]
    cg = plan.cgroup
    qplan = plan._replace(
        command=tuple(qemu_argv(vm, share_orders, accel=accel, net=net, stdio=stdio, tsc_khz=tsc_khz)),
        mounts=tuple(mounts),
        env=(("PATH", "/usr/bin:/bin"), ("HOME", "/tmp"), ("LANG", "C.UTF-8")),
        cwd="/",
        secret_env=(),
        cgroup=CgroupLimits(
            memory_max=vm.memory + OVERHEAD,
            swap_max=0,
            cpu_quota_us=cg.cpu_quota_us,
            cpu_period_us=cg.cpu_period_us,
            pids_max=QEMU_PIDS,
            io_weight=cg.io_weight,
        ),
        rlimits=Rlimits(nofile=max(plan.rlimits.nofile, QEMU_NOFILE), core=0, fsize=plan.rlimits.fsize),
    )
    orders = guest_orders(plan, modules, shares, secret_env)
    return VmLayout(qplan, tuple(orders))


def image_binds(plan: Plan) -> list[str]:
    """The system binds' paths an image root would have to give (the tier checks which it has)."""
    return [m.dest for m in plan.mounts if _system(m)]
