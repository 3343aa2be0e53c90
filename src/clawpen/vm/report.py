"""What ``clawpen doctor`` says about the VM tier: QEMU, KVM or TCG (and why), the guest
kernel, the compiler that builds the guest's init. The tier is optional: each finding that is
not there is a warning, never a failure."""

from __future__ import annotations

import shutil
import subprocess

from clawpen.finding import Finding
from clawpen.vm import accel, kernel
from clawpen.vm.tier import KERNEL_CACHE


def findings() -> list[Finding]:
    qemu = shutil.which(accel.QEMU) or shutil.which("qemu-system-x86_64")
    if qemu is None:
        hint = 'apt-get install qemu-system-x86 (only for bots with tier = "vm")'
        return [Finding("qemu", True, "QEMU is not installed; the vm tier is optional", hint, warn=True)]
    try:
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10, check=False)
        shown = (version.stdout.splitlines() or ["?"])[0]
    except (OSError, subprocess.TimeoutExpired) as e:
        shown = f"does not answer --version ({e})"
    found = [Finding("qemu", True, f"{qemu}: {shown}")]
    acc = accel.probe(qemu)
    if acc.name == "kvm":
        found.append(Finding("accelerator", True, f"KVM: {acc.reason}"))
    else:
        found.append(
            Finding("accelerator", True, acc.reason, "VM bots run, slower (TCG emulates the CPU)", warn=True)
        )
    guest = kernel.cached(KERNEL_CACHE)
    if guest is None:
        hint = 'the first bot with kernel = "auto" fetches it (apt-get download linux-image-amd64)'
        found.append(Finding("guest kernel", True, "Debian's kernel is not fetched yet", hint, warn=True))
    else:
        found.append(Finding("guest kernel", True, f"{guest.release} at {guest.image}"))
    if shutil.which("gcc") is None:
        hint = "apt-get install gcc libc6-dev (it builds the guest's init once)"
        found.append(Finding("guest init", True, "gcc is missing", hint, warn=True))
    return found
