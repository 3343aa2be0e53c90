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


def threshold_fd(cg: Cgroup, threshold: int) -> int | None:
    """A new non-blocking eventfd (the caller closes it) that becomes readable each time the
    cgroup's memory use crosses ``threshold`` bytes; None where the kernel offers no such event."""
    if cg.version != 1:
        return None
    memory = next((d for d in cg.dirs if os.path.exists(f"{d}/{USAGE}")), None)
    if memory is None:
        return None
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        usage = os.open(f"{memory}/{USAGE}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            control = os.open(f"{memory}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(control, f"{efd} {usage} {threshold}".encode())
            finally:
                os.close(control)
        finally:
            os.close(usage)  # the kernel holds the event by the eventfd, not by this file
    except OSError:
        os.close(efd)
        return None
    return efd


def drain(efd: int) -> None:
    """Read the eventfd's count back to zero (it stays readable until then)."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(efd)
