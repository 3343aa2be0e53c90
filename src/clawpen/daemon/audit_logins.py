"""``[audit] logins = "realtime"``: the daemon follows the host's login records as they are written
(auth.log through inotify, or ``journalctl -f``: :class:`clawpen.assess.loginfollow.LoginFollower`)
and turns what the login rules raise — a burst of failures from one address, a root login, a login
from an address never seen before, a password login — into ``audit-finding`` events at or above
``[audit] notify``, which the monitor sends to the notifiers (``[AUDIT]``). The follower keeps no
history beyond its rules' windows (the known addresses are the audit's own file).

The follower is started when the applied spec asks for it and stopped when it no longer does; its
fd is watched by the daemon's event loop (no thread, no select(), no timer): auth.log through
inotify on its folder (a log that appears later is a CREATE there), the journal through the pipe
of ``journalctl -f`` and a pidfd of that journalctl (when it ends, it is started again
:data:`~clawpen.assess.loginfollow.RESTART_DELAY` seconds later, after the last entry seen). Only
a follower with no fd at all (no inotify) reads every :data:`~clawpen.assess.loginfollow.TICK`
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from clawpen.daemon.audit_schedule import FINDING, finding_reason
from clawpen.host import Notes, SpecFeed

if TYPE_CHECKING:
    from clawpen.assess.loginfollow import Item, LoginFollower
    from clawpen.spec.models import Spec


class _Daemon(Notes, SpecFeed, Protocol): ...


log = logging.getLogger(__name__)


class AuditLoginsComponent:
    """The daemon component (daemon/app.py); ``root`` is the followed system (``/``; tests give
    a folder of their own)."""

    name = "audit-logins"

    def __init__(self, state: Path, *, root: Path = Path("/")) -> None:
        self.state = state
        self.root = root
        self.follower: LoginFollower | None = None
        self.notify = "high"
        self._daemon: _Daemon | None = None
        self._tick: asyncio.Task[None] | None = None
        self._child: int | None = None  # a pidfd of the follower's journalctl
        self._again: asyncio.TimerHandle | None = None  # its restart, after an exit
        self._lock = asyncio.Lock()

    async def start(self, daemon: _Daemon) -> None:
        self._daemon = daemon
        await self.apply(daemon.current_spec())
        loop = asyncio.get_running_loop()
        daemon.on_spec(lambda spec: self._later(loop, spec))

    def _later(self, loop: asyncio.AbstractEventLoop, spec: Spec) -> None:
        loop.create_task(self.apply(spec))

    async def apply(self, spec: Spec | None) -> None:
        """Follow or stop following, as ``spec``'s ``[audit] logins`` says."""
        from clawpen.spec.auditing import AuditSettings

        settings = spec.audit if spec is not None else AuditSettings()
        self.notify = settings.notify
        async with self._lock:
            want = settings.logins == "realtime"
            if want and self.follower is None:
                await self._follow()
            elif not want and self.follower is not None:
                self._unfollow()

    async def _follow(self) -> None:
        from clawpen.assess.loginfollow import TICK, LoginFollower

        try:  # the first start reads the recent records to learn the known addresses: a thread
            follower = await asyncio.to_thread(LoginFollower, self.root, self._on_item, state_dir=self.state)
        except Exception:
            log.exception("the login follower could not start")
            return
        self.follower = follower
        fd = follower.fileno()
        loop = asyncio.get_running_loop()
        if fd is not None:
            loop.add_reader(fd, self._read)
            if follower.source == "journal":
                self._watch_child()
            return

        async def tick() -> None:
            while True:
                await asyncio.sleep(TICK)
                self._read()

        self._tick = loop.create_task(tick())

    def _watch_child(self) -> None:
        """Be woken when the journalctl ends (its pidfd), not by a timer."""
        from clawpen.assess.loginfollow import RESTART_DELAY

        if self.follower is None:
            return
        loop = asyncio.get_running_loop()
        pid = self.follower.child_pid()
        try:
            if pid is None:
                raise ProcessLookupError(pid)
            self._child = os.pidfd_open(pid)
        except OSError:  # none runs (it could not start, or ended already): try again later
            self._again = loop.call_later(RESTART_DELAY, self._restart)
            return
        loop.add_reader(self._child, self._child_ended)

    def _child_ended(self) -> None:
        from clawpen.assess.loginfollow import RESTART_DELAY

        self._drop_child()
        self._read()  # what it wrote last
        self._again = asyncio.get_running_loop().call_later(RESTART_DELAY, self._restart)

    def _restart(self) -> None:
        self._again = None
        self._read()  # starts journalctl again (after the last entry seen)
        self._watch_child()

    def _drop_child(self) -> None:
        if self._child is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._child)
            os.close(self._child)
            self._child = None

    def _read(self) -> None:
        if self.follower is None:
            return
        try:
            self.follower.read_ready()
        except Exception:  # never let a bad record end the follow
            log.exception("login follower")

    def _on_item(self, item: Item) -> None:
        from clawpen.assess.model import AuditFinding, Severity

        if not isinstance(item, AuditFinding) or self._daemon is None:
            return
        if item.severity >= Severity.parse(self.notify):
            self._daemon.note(FINDING, finding_reason(item))

    def _unfollow(self) -> None:
        self._drop_child()
        if self._again is not None:
            self._again.cancel()
            self._again = None
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self.follower is not None:
            fd = self.follower.fileno()
            if fd is not None:
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_reader(fd)
            self.follower.close()
            self.follower = None

    async def stop(self) -> None:
        async with self._lock:
            self._unfollow()
