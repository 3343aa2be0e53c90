"""The daemon component that watches the state dir's free space for the bots' logs.

Started before the bots (``before_bots``): it gives the log writers' shared budget (on the
daemon's :class:`~clawpen.logs.upkeep.Compressor`) a :class:`~clawpen.logs.space.SpaceGuard`
for the state dir and lowers the daemon-wide log cap to a quarter of that filesystem. Then,
every second: it looks at the free space (so a pause is noticed, and ends, even when no bot
writes), records a ``disk-low`` event when free space falls below the watermark or a log write
fails, and ``disk-ok`` when logging resumes, and lets every writer write its pending
dropped-lines marker. That second is only while it matters (free space low, a marker
pending); otherwise every :data:`IDLE_TICK` seconds, and at once when a writer finds the disk low
(the guard looks again when due on every write, :mod:`clawpen.logs.space`) or drops lines: an
idle daemon is not woken every second (no kernel event tells of free space).
The alert (``host_state_disk_low``) comes from the metrics monitor, which
reads the same numbers (:func:`clawpen.logs.space.state_disk_values`).

Nothing here raises at start on a full disk: looking at free space needs no space.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Protocol

from clawpen.host import Notes
from clawpen.logs.budget import DEFAULT_MAX_ALL
from clawpen.logs.space import SpaceGuard
from clawpen.logs.upkeep import Compressor

_log = logging.getLogger(__name__)


class _Services(Protocol):
    @property
    def compressor(self) -> Compressor: ...


class LogSpaceHost(Notes, Protocol):
    """What this component uses of the daemon: events, and the log writers' compressor."""

    @property
    def services(self) -> _Services: ...


TICK = 1.0  # while free space is low or a dropped-lines marker waits
IDLE_TICK = 30.0  # otherwise (a write that finds the disk low, or drops lines, wakes it at once)
_MIB = 1 << 20


def _mib(size: int) -> str:
    return f"{size / _MIB:.1f} MiB"


class LogSpaceComponent:
    name = "log-space"
    before_bots = True  # the writers of restored bots must find the guard

    def __init__(self, state: Path) -> None:
        self.state = state
        self.guard = SpaceGuard(state)
        self._daemon: LogSpaceHost | None = None
        self._task: asyncio.Task[None] | None = None
        self._low = False
        self._wake = asyncio.Event()
        self._poked = False
        self.idle_tick = IDLE_TICK

    async def start(self, daemon: LogSpaceHost) -> None:
        self._daemon = daemon
        budget = daemon.services.compressor.budget
        budget.space = self.guard
        loop = asyncio.get_running_loop()

        def poke() -> None:  # from a writer (the loop's thread, or the compressor's)
            if not self._poked:
                self._poked = True
                loop.call_soon_threadsafe(self._wake.set)

        budget.wake = self.guard.on_low = poke
        space = self.guard.refresh()
        if space is not None and budget.max_all is not None:
            budget.max_all = min(budget.max_all, max(space.total // 4, 1 << 20), DEFAULT_MAX_ALL)
        self._check()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="log-space")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        assert self._daemon is not None
        budget = self._daemon.services.compressor.budget
        busy = True
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK if busy else self.idle_tick)
            self._wake.clear()
            self._poked = False
            try:
                self.guard.allow(0)  # looks again when due
                self._check()
                busy = budget.tick() or self.guard.low
            except Exception as err:  # one bad pass must not end the watch
                busy = True
                self._note("log-error", f"log space watch: {err!r}")

    def _check(self) -> None:
        guard = self.guard
        if guard.low == self._low:
            return
        self._low = guard.low
        space = guard.look() or guard.space  # now, not at the last look (after a write error)
        where = (
            f"{_mib(space.free)} free of {_mib(space.total)}, watermark {_mib(space.watermark)}"
            if space is not None
            else "free space unknown"
        )
        if guard.low:
            what = (
                "free space on the state dir's filesystem is low"
                if guard.reason in ("", "low space")
                else f"writing to the state dir's filesystem fails ({guard.reason})"
            )
            self._note(
                "disk-low", f"{what} ({where}): bot logs are paused and their lines counted as dropped"
            )
        else:
            self._note("disk-ok", f"free space is back ({where}): bot logs resume")

    def _note(self, kind: str, text: str) -> None:
        if self._daemon is not None:
            try:
                self._daemon.note(kind, text)
            except Exception:  # the event store failing must not end the watch; say it here
                _log.exception("log space watch: cannot record a %s event", kind)
