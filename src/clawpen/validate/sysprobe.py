"""clawpen's static system-call probe (``sysprobe.c``) for sandboxes whose python3 has no ctypes.

A container image brings its own python3; Debian's ``python3-minimal`` (the usual slim base) has
no ctypes, json or resource. The Python probes (:mod:`clawpen.validate.probes`) then hand the
actions that need a raw system call (mount, unshare, ptrace, keyctl, pidfd_open, bpf,
perf_event_open, finit_module, clock_settime, io_uring_setup, userfaultfd) to this small static
program, copied into the probe's scratch folder, and the report names it (``via``). The positive
control on the host then runs the same program, so both sides attempt the action the same way.
It is compiled once with the host's gcc into clawpen's cache, named by the source's hash.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from clawpen.staticbin import build_static

SOURCE = "sysprobe.c"
NAME = "clawpen-sysprobe"  # its name in the probe's scratch folder
FORCE_ENV = "CLAWPEN_HOSTILE_SYSPROBE"  # set on the control when the inside probe used it
HINT = "apt-get install gcc libc6-dev (validate --hostile builds its static syscall probe once)"


def build(cache: Path) -> str:
    """The path of the built probe for this clawpen's source, building it when missing."""
    return build_static(
        "clawpen.validate", SOURCE, NAME, cache, what="the hostile run's syscall probe", hint=HINT
    )


def install(built: str, folder: Path) -> None:
    """Copy the probe into a scratch folder (root-owned, 0755: runnable, not writable, by the bot)."""
    target = folder / NAME
    shutil.copyfile(built, target)
    os.chown(target, 0, 0)
    target.chmod(0o755)
