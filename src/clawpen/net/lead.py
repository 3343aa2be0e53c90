"""Who holds the gateway's head-stage loop while serving a connection (leader/follower).

The head stage (:mod:`clawpen.net.heads`) is run by whichever thread found the last head
complete; that thread serves the connection itself. A :class:`Lead` is its right to the loop:
it hands the loop on (another thread becomes the leader) before the thread blocks where the
loop cannot be watched, or, while the thread waits in a poll of its own, lends that poll the
loop's epoll descriptor (:meth:`Lead.park`) and hands on only when the loop has work.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Protocol

_log = logging.getLogger(__name__)


class Stage(Protocol):
    def lead_on(self) -> None: ...

    def parkable(self) -> int | None: ...


class Lead:
    """``head.handoff`` for the thread serving ``head`` while it still holds the head stage's
    loop (see :class:`clawpen.net.heads.HeadStage`). Calling it makes another thread the leader (once; if no
    thread can be had it raises ``OSError`` and the connection fails, this thread leads on).

    :meth:`park` lets the serving thread keep the loop while it waits: it returns the stage's
    epoll descriptor, to be watched (readable) beside the thread's own descriptors; only when
    it becomes readable (a new connection, a head's bytes, a resumed hello, stop) does the
    thread call the lead to hand the loop on. So with nothing else happening a connection costs
    no thread wake-up at all. The loop cannot be parked while it has timers to keep (unfinished
    heads, an accept back-off): then :meth:`park` hands it on at once."""

    __slots__ = ("failed", "passed", "stage")

    def __init__(self, stage: Stage | None) -> None:
        self.stage = stage
        self.passed = stage is None  # the no-op lead has nothing to hand on
        self.failed = False

    def __call__(self) -> None:
        if self.passed or self.stage is None:
            return
        self.passed = True
        try:
            self.stage.lead_on()
        except Exception as err:
            self.failed = True
            _log.exception("gateway head stage: no thread for the next leader")
            raise OSError(errno.EAGAIN, "no thread to lead the gateway's head stage") from err

    def park(self) -> int | None:
        """The descriptor to watch while waiting, or None (nothing to watch: handed on)."""
        if self.passed or self.stage is None:
            return None
        fd = self.stage.parkable()
        if fd is None:
            self()
        return fd

    def watch(self) -> tuple[int, Callable[[], None]] | None:
        """:meth:`park` as (descriptor, call when readable), for the waits in
        :mod:`clawpen.net.relay`."""
        fd = self.park()
        return None if fd is None else (fd, self)


NO_LEAD = Lead(None)  # for a thread that does not hold the loop: nothing to hand on
