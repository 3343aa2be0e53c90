"""The VM tier's test set-up: QEMU from Debian and one guest kernel for the whole test run.

The kernel (Debian's linux-image-amd64, only the image and the guest's modules are kept) is
fetched once into :data:`KERNEL_CACHE`, outside any test's state folder, under clawpen's lock (the two
pytest groups of scripts/test.sh run at once); tests name it with ``vm.kernel = "..."``, so no
test daemon downloads its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clawpen.errors import HostError
from clawpen.vm import kernel

KERNEL_CACHE = Path("/var/cache/clawpen-tests")
QEMU = "/usr/bin/qemu-system-x86_64"


def missing() -> str | None:
    """Why VM tests cannot run here (None: they can); fetches the kernel when needed."""
    if shutil.which(QEMU) is None:
        return "needs QEMU (apt-get install qemu-system-x86)"
    try:
        guest_kernel()
    except HostError as e:
        return f"needs a guest kernel: {e.what}"
    return None


def guest_kernel() -> str:
    """The path of the shared test kernel (``vmlinuz-RELEASE`` in an unpacked package tree)."""
    return str(kernel.resolve("auto", KERNEL_CACHE).image)  # fetched once, under clawpen's lock
