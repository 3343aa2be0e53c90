"""The namespace tier's side of :class:`clawpen.sandbox.tier.RunningSandbox`, shared by a
sandbox this daemon started (:class:`clawpen.sandbox.namespace.Sandbox`) and one it adopted
(:class:`clawpen.sandbox.adopt.AdoptedSandbox`): the bot is its cgroup, bubblewrap's pid is
what ends with it, and its namespaces are reached through the pid of its pid 1.

A socket in the bot's network: the bot's loopback lives in its own network namespace (the
host's 127.0.0.1 is another one), so a short-lived thread joins that namespace
(``setns(pidfd, CLONE_NEWNET)`` affects only the calling thread), creates the socket there and
ends; a socket keeps the namespace it was created in, so the caller connects over it as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from clawpen.errors import SandboxError
from clawpen.plan.model import Plan
from clawpen.procfs import stat_fields
from clawpen.sandbox.cgroups import Cgroup, CgroupStats
from clawpen.sandbox.tier import SandboxRecord

CLONE_NEWNET = 0x40000000
_Stream = int | IO[bytes] | None


def pid_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])


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
        if self.sandbox_pid is None:
            raise SandboxError("the sandbox is gone", where="health")
        return netns_socket(self.sandbox_pid, host, uid)


def netns_socket(sandbox_pid: int, host: str, uid: int | None) -> tuple[socket.socket, str]:
    """A non-blocking TCP socket in the network namespace of ``sandbox_pid``, and ``host`` as an
    address there (see :func:`sandbox_address`)."""
    family, address = sandbox_address(host, sandbox_pid)
    return socket_in_netns(sandbox_pid, uid, family), address


def sandbox_address(host: str, sandbox_pid: int) -> tuple[socket.AddressFamily, str]:
    """``host`` as an address: an IP literal, or a name from the sandbox's own /etc/hosts."""
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)
    try:
        with open(f"/proc/{sandbox_pid}/root/etc/hosts", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        raise SandboxError(f"the sandbox (pid {sandbox_pid}) is gone", where="health") from None
    except OSError:
        lines = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) > 1 and host.lower() in (name.lower() for name in fields[1:]):
            with contextlib.suppress(ValueError):
                return sandbox_address(str(ipaddress.ip_address(fields[0])), sandbox_pid)
    raise ValueError(f"{host} is not in the sandbox's /etc/hosts; use 127.0.0.1")


def socket_in_netns(sandbox_pid: int, uid: int | None, family: socket.AddressFamily) -> socket.socket:
    """A TCP socket created in the network namespace of ``sandbox_pid`` by a fresh thread, which
    ends with the ``with`` (never a pooled thread: it could be reused in the wrong namespace)."""
    with ThreadPoolExecutor(1, thread_name_prefix=f"clawpen-netns-{sandbox_pid}") as one:
        return one.submit(_make_socket, sandbox_pid, uid, family).result()


def _make_socket(sandbox_pid: int, uid: int | None, family: socket.AddressFamily) -> socket.socket:
    gone = SandboxError(f"the sandbox (pid {sandbox_pid}) is gone", where="health")
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        pidfd = os.pidfd_open(sandbox_pid)
    except ProcessLookupError:
        raise gone from None
    try:
        if uid is not None and os.stat(f"/proc/{sandbox_pid}").st_uid != uid:
            raise gone
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(pidfd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise SandboxError(f"cannot join the sandbox's network: {os.strerror(err)}", where="health")
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            finally:  # the thread ends right away; going back is belt and braces
                libc.setns(own, CLONE_NEWNET)
        finally:
            os.close(own)
    except FileNotFoundError:
        raise gone from None
    finally:
        os.close(pidfd)
    sock.setblocking(False)
    return sock
