"""Health checks of a running bot, made from inside its sandbox, and the rules that count them.

A bot's loopback lives in its own network namespace (the host's 127.0.0.1 is another one), so
``http`` and ``tcp`` checks connect from *inside* it, over a socket its tier makes there
(:meth:`RunningSandbox.open_socket <clawpen.sandbox.tier.RunningSandbox.open_socket>`; the
namespace tier's is :mod:`clawpen.sandbox.handle`); the event loop then connects and talks over
it as usual. ``cmd`` checks run through the tier's ``enter`` (:func:`clawpen.sandbox.enter.enter`),
confined exactly like the bot (its uid, namespaces, cgroup, seccomp filter, cwd, environment).

Outcomes of one check (:func:`check_once`, bounded by the spec's ``timeout``):

* ``http``: a minimal ``GET`` (HTTP/1.1, ``Host``, ``Connection: close``); only the status line
  is read. 2xx and 3xx are healthy (a redirect means the server answers; it is not followed),
  anything else is not: ``"HTTP 503"``.
* ``tcp``: healthy once the connection is accepted. Host names (both kinds) are looked up in
  the sandbox's own ``/etc/hosts`` (``localhost``, the bot's name); nothing else is reachable.
  A target whose ``accepts_first`` is true (a VM bot: QEMU accepts on the guest's behalf, then
  connects to the guest) is healthy only if the connection is not closed within
  :data:`FORWARD_GRACE`.
* ``cmd``: healthy when it exits 0; otherwise ``"exit 1: <last line of its output>"``. On
  timeout it is killed (its whole process group).
* any kind: ``"connection refused"``, ``"timed out after 5s"``, ``"the sandbox ... is gone"``.

:class:`HealthTracker` holds the counting rules and the schedule; it is pure, and the daemon
feeds it results. The first check comes right after the bot starts; until one passes (status
``starting``) the check is retried quickly (0.25 s, then doubling, at most :data:`START_GAP_MAX`
and never longer than ``interval``), so a bot is seen ready within a moment of being ready; then
every ``interval``. Failures in the ``start_period`` do not count; after it, failures count at the
``interval``'s pace only (a quick retry's failure is recorded as the last result, not counted), so
quick retries never make a bot unhealthy sooner than checks every ``interval`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import os
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from clawpen.errors import NotReady, SandboxError
from clawpen.sandbox.enter import enter, stop
from clawpen.sandbox.netsock import netns_socket
from clawpen.sandbox.netsock import sandbox_address as sandbox_address  # noqa: PLC0414 (re-export)
from clawpen.spec.healthcheck import parse_http, parse_tcp

if TYPE_CHECKING:
    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import Cgroup
    from clawpen.spec.models import Health

_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: |\r?\n|$)")
_DETAIL_MAX = 200
_TAIL_MAX = 4096
START_GAP = 0.25  # seconds before the second check while the bot starts (then doubling)
START_GAP_MAX = 5.0  # the longest gap between checks until one passes (Docker's start_interval)
FORWARD_GRACE = 1.0  # seconds a forwarded tcp check waits for the server behind to refuse


class HealthResult(NamedTuple):
    """One check: healthy or not, a short reason, and how long it took."""

    ok: bool
    detail: str
    latency_s: float
    not_ready: bool = False  # the sandbox's bot had not started yet (NotReady): not counted


class Verdict(enum.Enum):
    """What one recorded result means for the instance (see :meth:`HealthTracker.record`)."""

    HEALTHY = "healthy"
    """The check passed and the instance was not unhealthy."""
    STILL_OK = "still-ok"
    """The check failed, but there is nothing new to act on: the failure fell in the start
    period, the count is still below ``retries``, or the instance was already reported unhealthy."""
    BECAME_UNHEALTHY = "became-unhealthy"
    """``retries`` consecutive counted failures: reported once, until a success."""
    RECOVERED = "recovered"
    """The check passed after the instance had been reported unhealthy."""


class HealthTracker:
    """Counting rules and schedule of one instance's checks (pure; times are the caller's
    monotonic seconds).

    Failures less than ``start_period`` after ``started_at`` do not count, nor do failures of a
    quick retry less than ``interval`` after the last counted one (until the first success).
    After ``retries`` consecutive counted failures the instance is unhealthy
    (:attr:`Verdict.BECAME_UNHEALTHY`, once); any success resets the count. ``status`` is
    ``starting`` until the first success. :meth:`delay` says when to check next.
    """

    def __init__(
        self,
        spec: Health | None = None,
        *,
        retries: int | None = None,
        start_period: float | None = None,
        interval: float | None = None,
        started_at: float = 0.0,
    ) -> None:
        """Rules from ``spec`` (its ``retries``, ``start_period``, ``interval``), or given one by one."""
        self.retries = retries if retries is not None else spec.retries if spec is not None else 3
        self.start_period = (
            start_period if start_period is not None else spec.start_period if spec is not None else 0.0
        )
        self.interval = interval if interval is not None else spec.interval if spec is not None else 30.0
        if self.retries < 1:
            raise ValueError("retries must be at least 1")
        self.restart(started_at)

    def restart(self, started_at: float) -> None:
        """Start over for a new run of the instance (a new start period, no failures)."""
        self.started_at = started_at
        self.failures = 0
        self.status: Literal["starting", "healthy", "unhealthy"] = "starting"
        self.last: HealthResult | None = None
        self.last_at: float | None = None
        self.checks = 0
        self._count_from = started_at + self.start_period  # the next failure to count: not before

    def delay(self) -> float:
        """Seconds from the last result to the next check (0 before the first one)."""
        if self.checks == 0:
            return 0.0
        if self.status == "starting":
            return min(self.interval, START_GAP_MAX, START_GAP * 2.0 ** min(self.checks - 1, 16))
        return self.interval

    def record(self, result: HealthResult, now: float) -> Verdict:
        """Count ``result`` (made at ``now``) and say what it means."""
        self.last, self.last_at = result, now
        self.checks += 1
        if result.not_ready:  # nothing to check yet: the start period runs from the bot's start
            self.restart(now)
            self.last, self.last_at, self.checks = result, now, 1
            return Verdict.STILL_OK
        if result.ok:
            self.failures = 0
            was_unhealthy = self.status == "unhealthy"
            self.status = "healthy"
            return Verdict.RECOVERED if was_unhealthy else Verdict.HEALTHY
        if now - self.started_at < self.start_period:
            return Verdict.STILL_OK
        if self.status == "starting":
            if now < self._count_from:  # a quick retry while it starts
                return Verdict.STILL_OK
            self._count_from = now + self.interval
        self.failures += 1
        if self.status != "unhealthy" and self.failures >= self.retries:
            self.status = "unhealthy"
            return Verdict.BECAME_UNHEALTHY
        return Verdict.STILL_OK


class Target(Protocol):
    """Where a check runs: a running sandbox (:class:`clawpen.sandbox.tier.RunningSandbox`)."""

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]: ...

    def enter(
        self,
        plan: Plan,
        command: Sequence[str],
        *,
        bpf: bytes,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        start_timeout: float = 10.0,
    ) -> subprocess.Popen[bytes]: ...


class PidTarget:
    """The namespace sandbox whose pid 1 is host pid ``sandbox_pid`` (and its ``cgroup``)."""

    def __init__(self, sandbox_pid: int, cgroup: Cgroup | None) -> None:
        self.sandbox_pid = sandbox_pid
        self.cgroup = cgroup

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]:
        return netns_socket(self.sandbox_pid, host, uid)

    def enter(
        self,
        plan: Plan,
        command: Sequence[str],
        *,
        bpf: bytes,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        start_timeout: float = 10.0,
    ) -> subprocess.Popen[bytes]:
        return enter(
            self.sandbox_pid,
            plan,
            self.cgroup,
            command,
            bpf=bpf,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_timeout=start_timeout,
        )


async def _connect(host: str, port: int, target: Target, uid: int | None) -> socket.socket:
    sock, address = target.open_socket(host, uid=uid)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _http(url: str, where: Target, uid: int | None) -> tuple[bool, str]:
    target = parse_http(url)
    sock = await _connect(target.host, target.port, where, uid)
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        request = (
            f"GET {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            "User-Agent: clawpen-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("ascii", "replace"))
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not line:
        return False, "connection closed before a response"
    found = _STATUS_LINE.match(line)
    if found is None:
        return False, f"not an HTTP response: {line[:60].decode(errors='replace').strip()!r}"
    status = int(found.group(1))
    return 200 <= status < 400, f"HTTP {status}"


async def _tcp(addr: str, where: Target, uid: int | None) -> tuple[bool, str]:
    host, port = parse_tcp(addr)
    sock = await _connect(host, port, where, uid)
    with sock:
        if not getattr(where, "accepts_first", False):
            return True, "connected"
        # A forwarder accepted (QEMU's user-mode network for a VM bot), then asks the server behind
        # it: a refusal there closes this connection at once; data or silence means it was taken.
        try:
            got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1), FORWARD_GRACE)
        except TimeoutError:
            return True, "connected"
        if not got:
            return False, "connection closed at once (nothing listens behind the forward)"
        return True, "connected"


async def _exited(proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``proc`` has exited without reaping it (its pidfd becomes readable)."""
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(proc.pid)
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, wake)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _drain(fd: int, tail: bytearray) -> bool:
    """Read what ``fd`` holds into ``tail`` (keeping its end); ``False`` at EOF."""
    for _ in range(64):
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        tail += chunk
        del tail[:-_TAIL_MAX]
    return True


def _abandon(starting: asyncio.Future[subprocess.Popen[bytes]], fds: tuple[int, int]) -> None:
    """Clean up after an :func:`enter` whose check was cancelled (it finished in its thread)."""
    for fd in fds:
        os.close(fd)
    if not starting.cancelled() and starting.exception() is None:
        stop(starting.result())


async def _cmd(spec: Health, target: Target, plan: Plan, bpf: bytes) -> tuple[bool, str]:
    """Run the check command in the sandbox; the caller's timeout cancels (and so kills) it.

    What it leaves running in its process group is killed once it has exited, so checks cannot
    pile up processes in the bot's cgroup."""
    assert spec.cmd is not None
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    start = functools.partial(target.enter, plan, spec.cmd, bpf=bpf, start_timeout=spec.timeout)
    starting = loop.run_in_executor(None, lambda: start(stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w))
    try:
        proc = await asyncio.shield(starting)
    except asyncio.CancelledError:  # enter() goes on in its thread and still uses the pipe
        starting.add_done_callback(functools.partial(_abandon, fds=(out_r, out_w)))
        raise
    except BaseException as err:
        os.close(out_r)
        os.close(out_w)
        if isinstance(err, SandboxError):
            return False, err.what
        raise
    os.close(out_w)
    tail = bytearray()
    try:
        loop.add_reader(out_r, lambda: _drain(out_r, tail) or loop.remove_reader(out_r))
        try:
            await _exited(proc)
        finally:
            loop.remove_reader(out_r)
            code = stop(proc)
        _drain(out_r, tail)
    finally:
        os.close(out_r)
    if code == 0:
        return True, "exit 0"
    lines = [line.strip() for line in tail.decode(errors="replace").splitlines() if line.strip()]
    reason = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return False, f"{reason}: {lines[-1]}" if lines else reason


async def check_once(
    spec: Health,
    sandbox_pid: int,
    *,
    plan: Plan | None = None,
    cgroup: Cgroup | None = None,
    bpf: bytes | None = None,
) -> HealthResult:
    """:func:`check` against the namespace sandbox whose pid 1 is host pid ``sandbox_pid``
    (``cgroup``: its cgroup, where a ``cmd`` check runs)."""
    return await check(spec, PidTarget(sandbox_pid, cgroup), plan=plan, bpf=bpf)


async def check(
    spec: Health, target: Target, *, plan: Plan | None = None, bpf: bytes | None = None
) -> HealthResult:
    """Run ``spec``'s check once inside ``target`` (the running sandbox).

    ``plan`` (the bot's) is needed for ``cmd`` checks, with ``bpf`` (its seccomp program); for
    ``http``/``tcp`` it only lets the sandbox be checked to still be the bot's. Never raises for
    an unhealthy bot: the reason is in :attr:`HealthResult.detail`.
    """
    if spec.cmd and (plan is None or bpf is None):
        raise TypeError("a cmd health check needs the bot's plan and seccomp program (plan=, bpf=)")
    started = time.monotonic()
    uid = plan.identity.uid if plan is not None else None
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.http:
                ok, detail = await _http(spec.http, target, uid)
            elif spec.tcp:
                ok, detail = await _tcp(spec.tcp, target, uid)
            elif spec.cmd and plan is not None and bpf is not None:
                ok, detail = await _cmd(spec, target, plan, bpf)
            else:
                ok, detail = False, "no check given (http, tcp or cmd)"
    except TimeoutError:
        ok, detail = False, f"timed out after {spec.timeout:g}s"
    except NotReady as err:
        return HealthResult(False, err.what[:_DETAIL_MAX], time.monotonic() - started, not_ready=True)
    except SandboxError as err:
        ok, detail = False, err.what
    except OSError as err:  # "connection refused", "connection reset by peer"; asyncio rewrites strerror
        ok, detail = False, (os.strerror(err.errno) if err.errno else str(err)).lower()
    except ValueError as err:
        ok, detail = False, str(err)
    return HealthResult(ok, detail[:_DETAIL_MAX], time.monotonic() - started)
