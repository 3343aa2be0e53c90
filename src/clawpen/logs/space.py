"""Free space on the filesystem that holds clawpen's state: the low-space watermark.

Below the watermark (by default ``min(5 % of the filesystem, 1 GiB)`` free) the daemon's log
writers pause: they keep draining the bots' pipes and count the lines they drop, and write a
``[clawpen: N lines dropped: disk full]`` record once there is room again. A write that fails
with ENOSPC/EDQUOT/EIO pauses them the same way, for at least :data:`RETRY_AFTER_ERROR`.

:class:`SpaceGuard` answers "may I write N bytes?" in O(1): it calls ``statvfs`` at most once
per :data:`CHECK_EVERY` seconds (:data:`CHECK_EVERY_LOW` while paused), or sooner when the
bytes written since the last look use up the margin above the watermark or
:data:`LOOK_EVERY_BYTES` (so a fast writer cannot overshoot it between two looks, even when
something else fills the disk meanwhile). The
metrics collector reports the same numbers as ``host.state_disk_free_bytes`` and
``host.state_disk_low`` (see :func:`state_disk_values`), and the built-in alert rule
``host_state_disk_low`` fires on the latter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

DEFAULT_MIN_FREE_RATIO = 0.05
DEFAULT_MIN_FREE_BYTES = 1 << 30
CHECK_EVERY = 1.0
CHECK_EVERY_LOW = 0.2  # while paused, look more often: logging resumes soon after space returns
LOOK_EVERY_BYTES = 1 << 20  # and look again after this much was written (others write too)
RETRY_AFTER_ERROR = 1.0

StatVfs = Callable[[Path], os.statvfs_result]


class Space(NamedTuple):
    """One look at a filesystem: bytes free (for unprivileged users), its size, the watermark."""

    free: int
    total: int
    watermark: int

    @property
    def low(self) -> bool:
        return self.free < self.watermark


def watermark(
    total: int, *, ratio: float = DEFAULT_MIN_FREE_RATIO, floor: int = DEFAULT_MIN_FREE_BYTES
) -> int:
    """The free bytes below which space is low: ``ratio`` of ``total`` or ``floor``, the smaller."""
    return min(int(total * ratio), floor)


def measure(
    path: Path,
    *,
    ratio: float = DEFAULT_MIN_FREE_RATIO,
    floor: int = DEFAULT_MIN_FREE_BYTES,
    statvfs: StatVfs = os.statvfs,
) -> Space | None:
    """The filesystem holding ``path`` now; None when it cannot be looked at."""
    try:
        st = statvfs(path)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    return Space(st.f_bavail * st.f_frsize, total, watermark(total, ratio=ratio, floor=floor))


def state_disk_values(path: Path) -> dict[str, float]:
    """The metrics of the state dir's filesystem (empty when it cannot be looked at)."""
    space = measure(path)
    if space is None:
        return {}
    return {
        "state_disk_free_bytes": float(space.free),
        "state_disk_watermark_bytes": float(space.watermark),
        "state_disk_low": 1.0 if space.low else 0.0,
    }


class SpaceGuard:
    """Whether the daemon's logs may be written now (shared by every writer of one daemon).

    ``low`` is True below the watermark and for :data:`RETRY_AFTER_ERROR` seconds after a write
    failed (:meth:`failed`); ``reason`` says which. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        path: Path,
        *,
        ratio: float = DEFAULT_MIN_FREE_RATIO,
        floor: int = DEFAULT_MIN_FREE_BYTES,
        every: float = CHECK_EVERY,
        retry: float = RETRY_AFTER_ERROR,
        clock: Callable[[], float] = time.monotonic,
        statvfs: StatVfs = os.statvfs,
    ) -> None:
        self.path = path
        self._ratio = ratio
        self._floor = floor
        self._every = every
        self._retry = retry
        self._clock = clock
        self._statvfs = statvfs
        self.space: Space | None = None
        self.low = False
        self.reason = ""
        self.changed_at = clock()
        self._next = float("-inf")  # when to look again
        self._left = 0  # bytes that may still be written before looking again
        self._error_until = float("-inf")
        self.on_low: Callable[[], None] | None = None  # called when writing pauses (the daemon's watch)

    def allow(self, size: int) -> bool:
        """Whether ``size`` bytes may be written now (and count them against the margin)."""
        now = self._clock()
        if now >= self._next or (not self.low and self._left < size):
            self.refresh(now)
        if self.low:
            return False
        self._left -= size
        return True

    def refresh(self, now: float | None = None) -> Space | None:
        """Look at the filesystem now (a failed look keeps the last state)."""
        now = self._clock() if now is None else now
        self._next = now + self._every
        space = measure(self.path, ratio=self._ratio, floor=self._floor, statvfs=self._statvfs)
        if space is None:
            return self.space
        self.space = space
        self._left = min(max(0, space.free - space.watermark), LOOK_EVERY_BYTES)
        if now < self._error_until:
            self._set(True, self.reason or "write error", now)
        else:
            self._set(space.low, "low space" if space.low else "", now)
            if space.low:
                self._next = now + min(self._every, CHECK_EVERY_LOW)
        return space

    def look(self) -> Space | None:
        """The filesystem now, leaving the guard's state alone (for messages)."""
        return measure(self.path, ratio=self._ratio, floor=self._floor, statvfs=self._statvfs)

    def failed(self, err: OSError) -> None:
        """A write failed (ENOSPC...): pause for ``retry`` seconds, then look again."""
        now = self._clock()
        self._error_until = now + self._retry
        self._next = now + self._retry
        self._left = 0
        self._set(True, os.strerror(err.errno) if err.errno else str(err), now)

    def _set(self, low: bool, reason: str, now: float) -> None:
        if low != self.low:
            self.changed_at = now
            if low and self.on_low is not None:
                self.on_low()
        self.low = low
        self.reason = reason
