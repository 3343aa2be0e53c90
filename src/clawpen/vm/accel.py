"""Which accelerator a VM gets: KVM when QEMU can really run a vCPU on /dev/kvm, else TCG.

Opening /dev/kvm is not enough: some hosts offer a /dev/kvm on which stock guests do not run (a
software PVM, a nested setup without the features QEMU asks for) and QEMU aborts when it first
sets the vCPU's registers. So the probe starts QEMU itself on KVM, paused, asks it over QMP on
stdin to quit, and takes KVM only when that ends cleanly.
"""

from __future__ import annotations

import os
import subprocess
from typing import NamedTuple

QEMU = "/usr/bin/qemu-system-x86_64"


class Accel(NamedTuple):
    name: str  # "kvm" or "tcg"
    reason: str  # why, for `clawpen doctor` and the start event


def probe(qemu: str = QEMU, *, timeout: float = 10.0) -> Accel:
    """KVM or TCG for this host (see the module's docs)."""
    if not os.path.exists("/dev/kvm"):
        return Accel("tcg", "no /dev/kvm: QEMU emulates the CPU (TCG, slower)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "/dev/kvm is not usable by clawpen: QEMU emulates the CPU (TCG, slower)")
    argv = [qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "64", "-nodefaults"]
    argv += ["-no-user-config", "-display", "none", "-S", "-qmp", "stdio"]
    script = b'{"execute":"qmp_capabilities"}\n{"execute":"cont"}\n{"execute":"quit"}\n'
    try:
        done = subprocess.run(argv, input=script, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Accel("tcg", f"QEMU could not be probed on KVM ({e}): TCG")
    if done.returncode == 0:
        return Accel("kvm", "/dev/kvm runs QEMU's vCPUs")
    last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
    return Accel("tcg", f"/dev/kvm is present but QEMU cannot run a vCPU on it ({last[:160]}): TCG")


def tsc_khz(tool: str) -> int:
    """The host's TSC rate in kHz, measured by clawpen's ``tsc.c`` (0 when it cannot tell)."""
    try:
        done = subprocess.run([tool], capture_output=True, text=True, timeout=10, check=False)
        return int(done.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0
