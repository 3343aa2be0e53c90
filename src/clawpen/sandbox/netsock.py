"""A socket in a namespace sandbox's network (``http`` and ``tcp`` health checks).

The bot's loopback lives in its own network namespace (the host's 127.0.0.1 is another one),
so a short-lived thread joins that namespace (``setns(pidfd, CLONE_NEWNET)`` affects only the
calling thread), creates the socket there and ends; a socket keeps the namespace it was created
in, so the caller connects over it as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor

from clawpen.errors import SandboxError

CLONE_NEWNET = 0x40000000


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
