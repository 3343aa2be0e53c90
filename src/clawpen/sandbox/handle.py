"""The namespace tier's side of :class:`clawpen.sandbox.tier.RunningSandbox`, shared by a
sandbox this daemon started (:class:`clawpen.sandbox.namespace.Sandbox`) and one it adopted
(:class:`clawpen.sandbox.adopt.AdoptedSandbox`): the bot is its cgroup, bubblewrap's pid is
what ends with it, and its namespaces are reached through the pid of its pid 1.

Sockets in the bot's network come from :mod:`clawpen.sandbox.netsock`, loaded only then
(`clawpen run` imports this module and pays for no more than it uses).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING

from clawpen.errors import SandboxError
from clawpen.procfs import pid_start_time
from clawpen.sandbox.tier import SandboxRecord

if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Sequence
    from typing import IO

    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import Cgroup, CgroupStats

    _Stream = int | IO[bytes] | None


class CgroupHandle:
    """What the daemon does with a running namespace sandbox (see the module's docs).
    Subclasses give ``pid``, ``sandbox_pid`` and ``cg``."""

    @property
    def pid(self) -> int:
        raise NotImplementedError

    @property
    def sandbox_pid(self) -> int | None:
        raise NotImplementedError

    @property
    def cg(self) -> Cgroup:
        raise NotImplementedError

    def exit_fd(self) -> int:
        return os.pidfd_open(self.pid)

    def signal(self, signum: int) -> None:
        self.cg.signal(signum)

    def kill(self, *, monitor: bool = False) -> None:
        self.cg.kill()
        if monitor:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def stats(self) -> CgroupStats:
        return self.cg.stats()

    def memory_event_fd(self, threshold: int) -> int | None:
        from clawpen.sandbox.memevents import threshold_fd

        return threshold_fd(self.cg, threshold)

    def record(self) -> SandboxRecord:
        return SandboxRecord(self.pid, self.sandbox_pid, pid_start_time(self.pid), self.cg.name)

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
        from clawpen.sandbox.enter import enter

        if self.sandbox_pid is None:
            raise SandboxError(f"the sandbox of {plan.bot} is gone", where="exec")
        return enter(
            self.sandbox_pid,
            plan,
            self.cg,
            command,
            bpf=bpf,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_timeout=start_timeout,
        )

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]:
        from clawpen.sandbox.netsock import netns_socket

        if self.sandbox_pid is None:
            raise SandboxError("the sandbox is gone", where="health")
        return netns_socket(self.sandbox_pid, host, uid)
