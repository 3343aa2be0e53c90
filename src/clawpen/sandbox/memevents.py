"""Memory thresholds as kernel events: the daemon sleeps until a bot's memory use crosses one.

cgroup v1 notifies through an eventfd each time a cgroup's ``memory.usage_in_bytes`` crosses a
registered threshold, either way (``cgroup.event_control``, see the kernel's
Documentation/admin-guide/cgroup-v1/memory.rst, "Memory thresholds"). A bot's
``memory_pressure`` watcher registers its share of the limit and reads the usage only when
told it moved across; it polls no more. The registration ends when the eventfd is closed (or
the cgroup is removed, which signals it once).

cgroup v2 has no such event for a usage level (``memory.events`` counts ``high`` and ``max``
breaches, PSI triggers measure stalls): there the watcher keeps polling.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clawpen.sandbox.cgroups import Cgroup

USAGE = "memory.usage_in_bytes"


def event_fd(cg: Cgroup, control: str, *args: int) -> int | None:
    """A new non-blocking eventfd (the caller closes it) the kernel signals on ``control``'s
    event (cgroup v1 ``cgroup.event_control``: ``<eventfd> <fd of control> [args]``), in the
    first of the cgroup's directories that has ``control``; None where none has it."""
    folder = next((d for d in cg.dirs if os.path.exists(f"{d}/{control}")), None)
    if folder is None:
        return None
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        target = os.open(f"{folder}/{control}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            line = " ".join(map(str, (efd, target, *args)))
            register = os.open(f"{folder}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(register, line.encode())
            finally:
                os.close(register)
        finally:
            os.close(target)  # the kernel holds the event by the eventfd, not by this file
    except OSError:
        os.close(efd)
        return None
    return efd


def threshold_fd(cg: Cgroup, threshold: int) -> int | None:
    """An eventfd that becomes readable each time the cgroup's memory use crosses ``threshold``
    bytes, either way; None where the kernel offers no such event (cgroup v2)."""
    return event_fd(cg, USAGE, threshold)


def drain(efd: int) -> None:
    """Read the eventfd's count back to zero (it stays readable until then)."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(efd)
