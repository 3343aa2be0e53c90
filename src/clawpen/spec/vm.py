"""The VM tier's part of a bot spec: the guest's kernel, memory, CPUs and root filesystem.

Pure and pydantic-free (the planner and `clawpen run` import it). The tier itself is
:mod:`clawpen.vm`: QEMU (KVM when it works, TCG otherwise) run inside the bot's namespace
sandbox as the bot's host uid, the guest's root shared read-only over virtio-9p.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from clawpen.errors import PolicyError

MIB = 1 << 20
DEFAULT_MEMORY = 1 << 30  # the practice's example: "memory = 1G"
MIN_MEMORY = 128 * MIB  # Debian's kernel and its virtio buffers, the initramfs, a small bot (96M ran out)
GUEST_OVERHEAD = 160 * MIB  # the guest kernel's own memory and page cache, above the bot's limit
MODULES_ROOT = "/lib/modules"
KERNEL_PREFIX = "vmlinuz-"


class VmSettings(NamedTuple):
    """What the VM tier needs beyond the plan.

    ``kernel``: ``"auto"`` (Debian's linux-image-amd64, fetched once into clawpen's state) or the
    absolute path of a ``vmlinuz-RELEASE`` whose modules are in ``/lib/modules/RELEASE``.
    ``memory``: the guest's RAM in bytes (at most half the host's). ``cpus``: its vCPUs.
    ``rootfs``: ``"host"`` (the sandbox tier's view of the host: /usr and friends, read-only) or
    ``"image:PATH"`` (a directory tree, e.g. made by debootstrap, as the guest's read-only root).
    ``ports``: guest TCP ports reachable from the bot's network namespace (published ports and
    health-check ports: QEMU forwards them to the guest).
    """

    kernel: str = "auto"
    memory: int = DEFAULT_MEMORY
    cpus: int = 1
    rootfs: str = "host"
    ports: tuple[int, ...] = ()

    @property
    def image_root(self) -> str | None:
        """The directory of ``rootfs = "image:PATH"``, or None for ``"host"``."""
        return self.rootfs.removeprefix("image:") if self.rootfs.startswith("image:") else None


def kernel_release(kernel: str) -> str | None:
    """``RELEASE`` of a kernel file named ``vmlinuz-RELEASE``, or None for another name."""
    name = os.path.basename(kernel)
    release = name.removeprefix(KERNEL_PREFIX)
    if release == name or not release or release in (".", ".."):
        return None
    return release


def modules_dir(kernel: str) -> str | None:
    """The folder of the modules of ``kernel`` (``vmlinuz-RELEASE``): ``/lib/modules/RELEASE``,
    or, for a kernel in the ``boot/`` folder of an unpacked package (``dpkg-deb -x``), that
    tree's ``lib/modules/RELEASE``. None when neither is a folder."""
    release = kernel_release(kernel)
    if release is None:
        return None
    boot = os.path.dirname(os.path.abspath(kernel))
    candidates = [os.path.join(MODULES_ROOT, release)]
    if os.path.basename(boot) == "boot":
        candidates.insert(0, os.path.join(os.path.dirname(boot), "lib", "modules", release))
    return next((c for c in candidates if os.path.isdir(c)), None)


def check_host(settings: VmSettings, bot: str, *, cpu_count: int, host_memory: int | None) -> None:
    """Refuse what this host cannot give the guest (PolicyError naming the field): more vCPUs
    than the host has CPUs, or more than half the host's memory (``host_memory``: MemTotal in
    bytes; None when unknown, which skips that check)."""
    if settings.cpus > cpu_count:
        raise PolicyError(
            f"vm.cpus = {settings.cpus} asks for more CPUs than this host has ({cpu_count})",
            where=f"bots.{bot}.vm.cpus",
            hint=f"use 1 to {cpu_count} (or leave vm.cpus out: resources.cpus rounded up, else 1)",
        )
    if host_memory is not None and settings.memory > host_memory // 2:
        from clawpen.spec.units import format_size

        half = host_memory // 2
        raise PolicyError(
            f"the VM's memory ({format_size(settings.memory)}) is above half of this host's memory "
            f"({_approx(half)} of {_approx(host_memory)}): the practice gives a VM at most half the "
            "host's memory",
            where=f"bots.{bot}.vm.memory",
            hint=f"set vm.memory to at most {format_size(half // MIB * MIB)} "
            "(unset, it is resources.memory, else 1G)",
        )


def _approx(n: int) -> str:
    """``12.3G``-style, for sizes (MemTotal) that have no short exact spelling."""
    return f"{n / (1 << 30):.1f}G" if n >= 1 << 30 else f"{n / MIB:.0f}M"
