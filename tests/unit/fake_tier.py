"""A fake isolation tier and a virtual-time event loop: the daemon's supervisor (restart,
backoff, crashloop, schedule, health, `up`) runs on them without root, in milliseconds.

* :class:`FakeTier` is a :class:`clawpen.sandbox.tier.Tier`. Each start takes the next
  :class:`Script` (how that run behaves: when it exits and how, whether it minds SIGTERM, its
  memory, what it prints). Its sandboxes hold the bot's ends of the daemon's real pipes, so the
  log path is the real one; their end is a real descriptor (a pipe closed at the end), as a
  pidfd is. ``enter`` runs the command as a plain child process and ``open_socket`` makes a
  plain socket, so ``cmd``, ``http`` and ``tcp`` health checks run for real against what the
  test serves on 127.0.0.1.
* :class:`VirtualLoop` is an asyncio loop whose clock jumps to the next timer whenever nothing
  is ready (real I/O is always served first, and time stands still while a command started by
  ``enter`` runs); ``run_in_executor`` runs the call inline. A backoff of 60 s costs nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpen.plan.model import Plan
from clawpen.sandbox.cgroups import CgroupStats
from clawpen.sandbox.tier import RunResult, SandboxRecord, Stdio, result_from_status

EPOCH = 1_767_225_600.0  # 2026-01-01 00:00 UTC, a Thursday: the daemon's clock at loop time 0
NO_STDIO = Stdio()
_PID_BASE = 1 << 22  # above the kernel's pid_max limit: never a real process


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call at once, in the loop's thread (no thread, no real-time race)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as err:  # handed to the awaiting coroutine
            fut.set_exception(err)
        return fut


class _Selector(selectors.EpollSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        assert self.loop is not None
        while self.loop.busy():  # real work in flight (an entered command): real time only
            ready = super().select(0.01)
            if ready:
                return ready
        if timeout is None:  # no timer at all: only real I/O can wake us
            return super().select(5.0)
        self.loop.advance(timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module's docs); ``now`` is the daemon's clock."""

    def __init__(self) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self
        self._virtual = 0.0
        self._clock_resolution = 1e-6
        self.busy: Callable[[], bool] = lambda: False
        self.set_default_executor(_InlineExecutor())

    def time(self) -> float:
        return self._virtual

    def advance(self, seconds: float) -> None:
        self._virtual += max(0.0, seconds)

    def now(self) -> float:
        """The daemon's (epoch) clock."""
        return EPOCH + self._virtual


@dataclass
class Script:
    """How one run of a fake bot behaves."""

    exit_after: float | None = None  # seconds until it exits by itself; None: until stopped
    code: int = 0  # its exit status then (bubblewrap's: 128+N for a signal)
    ignore_term: bool = False  # SIGTERM does nothing (only SIGKILL ends it)
    memory: int | None = 10 << 20  # memory.current while it runs
    oom: bool = False  # its end was an OOM kill
    stdout: bytes = b""  # written to its stdout when it starts ({replica}: its CLAWPEN_REPLICA)


@dataclass
class FakeSandbox:
    """One run of a fake bot: a :class:`clawpen.sandbox.tier.RunningSandbox`."""

    tier: FakeTier
    plan: Plan
    script: Script
    pid: int
    cgroup_name: str
    started: float
    fds: list[int] = field(default_factory=list)  # the bot's ends of its pipes, until it ends
    status: int | None = None
    ended_at: float | None = None
    signals: list[int] = field(default_factory=list)
    _enders: list[int] = field(default_factory=list)
    _timer: asyncio.TimerHandle | None = None

    @property
    def sandbox_pid(self) -> int:
        return self.pid + 1

    @property
    def running(self) -> bool:
        return self.status is None

    def end(self, status: int) -> None:
        """The bot exits with ``status``: its pipes close, its exit descriptors turn readable."""
        if self.status is not None:
            return
        self.status = status
        self.ended_at = self.tier.loop.time()
        if self._timer is not None:
            self._timer.cancel()
        for fd in (*self.fds, *self._enders):
            os.close(fd)
        self.fds.clear()
        self._enders.clear()

    def exit_fd(self) -> int:
        r, w = os.pipe2(os.O_CLOEXEC)
        if self.status is None:
            self._enders.append(w)
        else:
            os.close(w)
        return r

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGKILL or not (self.script.ignore_term and signum == signal.SIGTERM):
            self.end(128 + signum)

    def kill(self, *, monitor: bool = False) -> None:
        self.signal(signal.SIGKILL)

    def stats(self) -> CgroupStats:
        memory = self.script.memory if self.running else 0
        return CgroupStats(0, memory, memory, 1, 1 if self.script.oom else 0, 0, 0)

    def record(self) -> SandboxRecord:
        return SandboxRecord(self.pid, self.sandbox_pid, 1000 + self.pid, self.cgroup_name)

    def collect(self) -> RunResult:
        assert self.status is not None, "collected before it ended"
        duration = (self.ended_at or 0.0) - self.started
        return result_from_status(self.status, oom=self.script.oom, duration_s=duration, memory_peak=0)

    def teardown(self) -> None:
        self.tier.torn_down.append(self)

    def enter(
        self,
        plan: Plan,
        command: Sequence[str],
        *,
        bpf: bytes,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        start_timeout: float = 10.0,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(command), stdin=stdin, stdout=stdout, stderr=stderr, process_group=0)
        self.tier.entered.append(proc)
        return proc

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]:
        address = "127.0.0.1" if host == "localhost" else host
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock, address


class FakeTier:
    """Starts fake sandboxes from a list of scripts (the last one repeats)."""

    name = "sandbox"
    makes_netns = False

    def __init__(self, loop: VirtualLoop, scripts: Sequence[Script] = (Script(),)) -> None:
        self.loop = loop
        self.scripts = list(scripts)
        self.started: list[FakeSandbox] = []
        self.torn_down: list[FakeSandbox] = []
        self.entered: list[subprocess.Popen[bytes]] = []
        self.adoptable: dict[int, FakeSandbox] = {}  # what adopt() finds, by pid
        self.fail_start: Exception | None = None
        loop.busy = lambda: any(p.poll() is None for p in self.entered)

    def run(
        self, plan: Plan, *, timeout: float | None = None, secrets: Mapping[str, bytes] = {}
    ) -> RunResult:
        raise NotImplementedError("the fake tier runs nothing in the foreground")

    def start(
        self,
        plan: Plan,
        *,
        cgroup_name: str | None = None,
        stdio: Stdio = NO_STDIO,
        status_fd: int | None = None,
        secrets: Mapping[str, bytes] = {},
        wire_net: Callable[[int], None] | None = None,
    ) -> FakeSandbox:
        if self.fail_start is not None:
            raise self.fail_start
        script = self.scripts[min(len(self.started), len(self.scripts) - 1)]
        sb = FakeSandbox(
            self, plan, script, _PID_BASE + 2 * len(self.started), cgroup_name or plan.bot, self.loop.time()
        )
        for fd in (stdio.stdout, stdio.stderr):
            if fd is not None:
                sb.fds.append(os.dup(fd))
        if script.stdout and sb.fds:
            replica = dict(plan.env).get("CLAWPEN_REPLICA", "")
            os.write(sb.fds[0], script.stdout.replace(b"{replica}", replica.encode()))
        if script.exit_after is not None:
            sb._timer = self.loop.call_later(script.exit_after, sb.end, script.code)
        self.started.append(sb)
        return sb

    def adopt(self, record: SandboxRecord, *, status: Path, started_at: float) -> FakeSandbox | None:
        return self.adoptable.get(record.pid)

    def running(self) -> list[FakeSandbox]:
        return [s for s in self.started if s.running]

    def close(self) -> None:
        for sb in self.started:
            with contextlib.suppress(OSError):
                sb.end(137)
        for proc in self.entered:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def real_seconds(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the real (wall) seconds it took."""
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0
