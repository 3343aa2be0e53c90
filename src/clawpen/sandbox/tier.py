"""What every isolation tier offers, and the result of one run.

Tiers (the bubblewrap namespace sandbox now; Docker and QEMU later) sit behind :class:`Tier`,
so the supervisor and the CLI never care which one runs a bot. A tier starts a plan
(:meth:`Tier.start`) or takes back one an earlier daemon started (:meth:`Tier.adopt`), and
hands back a :class:`RunningSandbox`: all the daemon does with a running bot goes through it
(its end, signals, accounting, a record to adopt it by, commands and sockets inside it).
The daemon holds its tiers by name (a bot's ``tier`` field picks one).
"""

from __future__ import annotations

import os
import select
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, runtime_checkable

from clawpen.plan.model import Plan

if TYPE_CHECKING:  # annotations only: `clawpen run` imports this module and pays for no more
    import socket
    import subprocess
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import IO

    from clawpen.sandbox.cgroups import CgroupStats

    _Stream = int | IO[bytes] | None

# Exit codes of `clawpen run` that are not the bot's own (documented in docs/cli.md).
EXIT_DISK = 121
EXIT_OOM = 122
EXIT_TIMEOUT = 124
EXIT_SETUP = 125
EXIT_NOT_FOUND = 127

Reason = Literal["exited", "signaled", "oom", "timeout", "disk", "setup-failed"]


class RunResult(NamedTuple):
    """How a sandboxed run ended. ``exit_code`` is what ``clawpen run`` exits with."""

    exit_code: int
    reason: Reason
    signal: int | None
    duration_s: float
    cpu_s: float | None = None
    memory_peak: int | None = None
    message: str = ""


def result_from_status(
    status: int,
    *,
    oom: bool,
    duration_s: float,
    cpu_s: float | None = None,
    memory_peak: int | None = None,
) -> RunResult:
    """Classify an exit status (``subprocess`` style: negative for a signal, or 128+N as
    bubblewrap reports a signalled bot) into a :class:`RunResult`."""
    if oom:
        return RunResult(
            EXIT_OOM,
            "oom",
            None,
            duration_s,
            cpu_s,
            memory_peak,
            "killed by the OOM killer: memory limit reached",
        )
    if status < 0:
        return RunResult(128 - status, "signaled", -status, duration_s, cpu_s, memory_peak)
    if 128 < status < 128 + 65:
        return RunResult(status, "signaled", status - 128, duration_s, cpu_s, memory_peak)
    return RunResult(status, "exited", None, duration_s, cpu_s, memory_peak)


class Stdio(NamedTuple):
    """File descriptors for the bot's standard streams; ``None`` inherits clawpen's own."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    extra: tuple[int, ...] = ()  # more descriptors the command inherits, under their own numbers


class SandboxRecord(NamedTuple):
    """What the daemon saves of a running sandbox, so that a new daemon can adopt it."""

    pid: int  # the host pid the tier watches (bubblewrap for the namespace tier)
    sandbox_pid: int | None  # the host pid of the bot's pid 1
    pid_start: int | None  # ``pid``'s start time, so a reused pid is not taken for it
    cgroup: str | None  # the bot's cgroup (under the tier's cgroup root)


class RunningSandbox(Protocol):
    """A started (or adopted) sandbox, as the daemon's supervisor uses it."""

    @property
    def pid(self) -> int:
        """The host pid the tier watches; its end is the sandbox's end."""
        ...

    @property
    def sandbox_pid(self) -> int | None:
        """The host pid of the bot's pid 1 (published ports, `clawpen exec`), if known."""
        ...

    @property
    def cgroup_name(self) -> str | None:
        """The bot's cgroup under the tier's cgroup root (the monitor reads it)."""
        ...

    def exit_fd(self) -> int:
        """A new descriptor (the caller closes it) that becomes readable when the sandbox ends."""
        ...

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the bot."""
        ...

    def kill(self, *, monitor: bool = False) -> None:
        """SIGKILL every process of the bot; with ``monitor`` also the tier's own process
        (a monitor that does not exit once the bot is gone)."""
        ...

    def stats(self) -> CgroupStats:
        """The bot's accounting now (CPU, memory, pids, OOM kills)."""
        ...

    def record(self) -> SandboxRecord:
        """What to save to adopt it later (:meth:`Tier.adopt`)."""
        ...

    def collect(self) -> RunResult:
        """How it ended (call once :meth:`exit_fd` is readable)."""
        ...

    def teardown(self) -> None:
        """Release what the sandbox holds (its cgroup, descriptors); it must have ended."""
        ...

    def enter(
        self,
        plan: Plan,
        command: Sequence[str],
        *,
        bpf: bytes,
        stdin: _Stream = None,
        stdout: _Stream = None,
        stderr: _Stream = None,
        start_timeout: float = 10.0,
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` inside the sandbox, confined like the bot (``cmd`` health checks),
        in a process group of its own; raises ``SandboxError(where="exec")``."""
        ...

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]:
        """A non-blocking TCP socket in the bot's network, and ``host`` as an address there (a
        literal, or a name from the sandbox's /etc/hosts): ``http``/``tcp`` health checks.
        ``uid`` (the bot's) is checked to still own the sandbox; raises ``SandboxError`` when
        it is gone, ``ValueError`` for an unknown name."""
        ...


class Tier(Protocol):
    """An isolation tier: runs a plan in the foreground, or starts and adopts sandboxes."""

    @property
    def name(self) -> str: ...

    @property
    def makes_netns(self) -> bool:
        """False: the bot joins the network namespace its plan names (``plan.link.netns``, made by
        the daemon's link manager before :meth:`start`). True: the tier makes the bot's network
        namespace itself (a container engine does), and wires the link into it by calling
        :meth:`start`'s ``wire_net`` with a host pid in that namespace, before the bot's command
        runs."""
        ...

    def run(
        self, plan: Plan, *, timeout: float | None = None, secrets: Mapping[str, bytes] = ...
    ) -> RunResult: ...

    def start(
        self,
        plan: Plan,
        *,
        cgroup_name: str | None = None,
        stdio: Stdio = ...,
        status_fd: int | None = None,
        secrets: Mapping[str, bytes] = ...,
        wire_net: Callable[[int], None] | None = None,
    ) -> RunningSandbox:
        """Build the sandbox and start the bot; ``status_fd`` receives its exit status even
        when the caller is gone by then (what :meth:`adopt` reads from ``status``). A tier that
        :attr:`makes_netns` calls ``wire_net(pid)`` once the bot's namespaces exist and before its
        command runs; an error it raises aborts the start (the tier removes what it made)."""
        ...

    def adopt(self, record: SandboxRecord, *, status: Path, started_at: float) -> RunningSandbox | None:
        """Take back a sandbox an earlier daemon started; ``None`` when it no longer runs."""
        ...


class HeldSandbox(RunningSandbox, Protocol):
    """A sandbox built to the last step before its command, waiting for :meth:`release`."""

    def release(self) -> None:
        """Run the bot's command in it, now."""
        ...


@runtime_checkable
class MemoryEvents(Protocol):
    """A running sandbox whose memory use the kernel can report crossing a level (cgroup v1)."""

    def memory_event_fd(self, threshold: int) -> int | None:
        """A new non-blocking eventfd (the caller closes it) that becomes readable each time the
        bot's memory use crosses ``threshold`` bytes, either way; None when the host offers no
        such event (the caller polls)."""
        ...


@runtime_checkable
class HoldingTier(Protocol):
    """A tier that can build a bot's next sandbox ahead of time (a warm spare): a restart then
    only releases it. The namespace tier can; a tier that cannot is simply not one of these."""

    def prepare(
        self,
        plan: Plan,
        *,
        cgroup_name: str,
        stdio: Stdio,
        status_fd: int,
        secrets: Mapping[str, bytes] = ...,
    ) -> HeldSandbox:
        """Build the sandbox of ``plan`` as :meth:`Tier.start` would, held before the command."""
        ...


def ended_within(sandbox: RunningSandbox, timeout: float | None) -> bool:
    """Block until ``sandbox`` has ended (True) or ``timeout`` seconds passed (False).
    ``poll``, never ``select``: descriptors past 1,024 are common in the daemon."""
    fd = sandbox.exit_fd()
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    finally:
        os.close(fd)
