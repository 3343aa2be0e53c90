"""The VM tier's part of a bot spec: the guest's kernel, memory, CPUs and root filesystem.

Pure and pydantic-free (the planner and `clawpen run` import it). The tier itself is
:mod:`clawpen.vm`: QEMU (KVM when it works, TCG otherwise) run inside the bot's namespace
sandbox as the bot's host uid, the guest's root shared read-only over virtio-9p.
"""

from __future__ import annotations

from typing import NamedTuple

MIB = 1 << 20
DEFAULT_MEMORY = 1 << 30  # the practice's example: "memory = 1G"


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
