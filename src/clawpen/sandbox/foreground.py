"""Waiting on a sandbox in the foreground (``clawpen run``): the bot's end, a timeout, the disk
cap, and signals forwarded to every process of the bot (SIGKILL after the tier's grace period).

One ``poll`` on a pidfd and a wake-up pipe (``signal.set_wakeup_fd``); never ``select``, which
fails past descriptor 1,024.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from clawpen.sandbox.workspace import disk_usage

if TYPE_CHECKING:
    import subprocess

    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import Cgroup
    from clawpen.sandbox.tier import RunResult

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
DISK_CHECK_INTERVAL = 1.0


class Waited(Protocol):
    """What the wait needs of :class:`clawpen.sandbox.namespace.Sandbox`."""

    plan: Plan
    started: float
    pending_signal: int | None
    stop_reason: str | None

    @property
    def kill_grace(self) -> float: ...
    @property
    def process(self) -> subprocess.Popen[bytes]: ...
    @property
    def cg(self) -> Cgroup: ...
    def _keep(self, fd: int) -> int: ...
    def collect(self) -> RunResult: ...


def wait(sandbox: Waited, timeout: float | None) -> RunResult:
    """Block until the bot ends (or is stopped: timeout, disk cap, a forwarded signal's grace),
    then :meth:`Sandbox.collect` it."""
    proc, cg, plan = sandbox.process, sandbox.cg, sandbox.plan
    deadline = None if timeout is None else sandbox.started + timeout
    next_disk = time.monotonic() + DISK_CHECK_INTERVAL if plan.disk_max and plan.workspace else None
    escalate_at: float | None = None
    pidfd = sandbox._keep(os.pidfd_open(proc.pid))
    wake_r, wake_w = (sandbox._keep(fd) for fd in os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sandbox.pending_signal = signum

    old = {s: signal.signal(s, on_signal) for s in FORWARDED_SIGNALS}
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    if sandbox.pending_signal is not None:  # came before these handlers (run() held it)
        os.write(wake_w, b"\0")
    try:
        while True:
            now = time.monotonic()
            wake = min((t for t in (deadline, next_disk, escalate_at) if t is not None), default=None)
            wait_ms = None if wake is None else max(0, int((wake - now) * 1000) + 1)
            events = poller.poll(wait_ms)
            if any(fd == pidfd for fd, _ in events):
                break
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            if sandbox.pending_signal is not None:
                cg.signal(sandbox.pending_signal)
                sandbox.pending_signal = None
                escalate_at = escalate_at or time.monotonic() + sandbox.kill_grace
            now = time.monotonic()
            if deadline is not None and now >= deadline and sandbox.stop_reason is None:
                sandbox.stop_reason = "timeout"
                cg.kill()
            if escalate_at is not None and now >= escalate_at:
                cg.kill()
                escalate_at = None
            if next_disk is not None and now >= next_disk:
                if plan.workspace and disk_usage(plan.workspace) > (plan.disk_max or 0):
                    sandbox.stop_reason = "disk"
                    cg.kill()
                    next_disk = None
                else:
                    next_disk = now + DISK_CHECK_INTERVAL
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in old.items():
            signal.signal(s, handler)
    return sandbox.collect()
