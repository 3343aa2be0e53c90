"""Network namespace helpers: create, persist, open and work inside a namespace.

A network namespace is per *thread* on Linux: ``setns(fd, CLONE_NEWNET)`` or
``unshare(CLONE_NEWNET)`` moves only the calling thread, and a socket keeps the namespace it was
created in for its whole life. So everything here runs the namespace-bound step in a short-lived
thread of its own (:func:`netns_thread_call`) which then ends, leaving the event loop and every
other thread where they were; the objects made there (sockets, netlink sockets, child
processes, which inherit the creating thread's namespace) keep working from any thread.

Stable API (imported by the gateway and the link manager):

* :func:`socket_in` ``(netns_fd, family, type) -> socket.socket``: a socket in that namespace
  (``None``: the caller's own).
* :func:`netns_thread_call` ``(netns_fd, fn) -> result of fn()``: run ``fn`` in that namespace.
* :func:`entered` ``(netns_fd)``: a ``with`` block with the calling thread in that namespace.
* :func:`create_persistent` / :func:`remove_persistent`: a new namespace kept alive by a bind
  mount on a file (like ``ip netns add``, but at a path of clawpen's choosing), so it survives
  the daemon; :func:`bind_persistent` keeps a process's namespace the same way.
* :func:`open_netns`: an ``O_RDONLY`` fd for a namespace path or ``/proc/PID/ns/net``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from clawpen.errors import HostError

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str, where: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise HostError(f"{what}: {os.strerror(err)}", where=where, hint="clawpen needs root (CAP_SYS_ADMIN)")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling *thread* into the namespace behind ``fd``."""
    _check(_libc.setns(fd, nstype), "setns failed", f"fd {fd}")


def unshare_net() -> None:
    """Move the calling *thread* into a new, empty network namespace."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) failed", "network namespace")


def netns_thread_call(netns_fd: int | None, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a fresh thread that first joined ``netns_fd`` (``None``: no switch).

    Returns what ``fn`` returns and re-raises what it raises. The thread ends afterwards, so no
    thread is ever left in a foreign namespace.
    """
    if netns_fd is None:
        return fn()
    return _in_thread(lambda: setns(netns_fd), fn)


@contextlib.contextmanager
def entered(netns_fd: int) -> Iterator[None]:
    """Move the *calling* thread into ``netns_fd`` for the ``with`` block, then back.

    For starting a child whose parent thread must stay alive (bubblewrap's
    ``--die-with-parent`` is ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked it
    ends, so a short-lived thread will not do). Keep the block synchronous and short.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def _in_thread(enter: Callable[[], None], fn: Callable[[], T]) -> T:
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            enter()
            box.append(fn())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name="clawpen-netns", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


def socket_in(
    netns_fd: int | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A new socket that lives in the namespace ``netns_fd`` (``None``: the caller's own)."""
    return netns_thread_call(netns_fd, lambda: socket.socket(family, type, proto))


def open_netns(path: str) -> int:
    """An fd (close-on-exec) for the namespace at ``path`` (a bind mount or ``/proc/PID/ns/net``)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(
            f"cannot open network namespace: {exc.strerror}", where=path, hint="is the sandbox still running?"
        ) from exc


def is_mounted_netns(path: str) -> bool:
    """True when ``path`` is a live namespace bind mount (an nsfs file, not a plain file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.fstat(fd).st_dev != os.stat(os.path.dirname(path) or ".").st_dev
    finally:
        os.close(fd)


def create_persistent(path: str, setup: Callable[[], None] | None = None) -> int:
    """Create a new network namespace kept alive by a bind mount on ``path``; return its fd.

    ``setup`` (optional) runs inside the new namespace before the call returns (bring up ``lo``,
    write sysctls, ...). If ``path`` is already a namespace mount, that one is reused (``setup``
    is not run again).
    """
    if is_mounted_netns(path):
        return open_netns(path)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "a"):
        pass

    def make() -> None:
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(src, path.encode(), None, MS_BIND, None), "cannot bind-mount namespace", path)
        if setup is not None:
            setup()

    try:
        _in_thread(unshare_net, make)
    except BaseException:
        remove_persistent(path)
        raise
    return open_netns(path)


def bind_persistent(path: str, pid: int) -> int:
    """Keep the network namespace of host process ``pid`` alive by a bind mount on ``path`` (like
    ``ip netns attach``; whatever was mounted there is unmounted first); return its fd."""
    src = f"/proc/{pid}/ns/net"
    remove_persistent(path)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "a"):
        pass
    try:
        _check(
            _libc.mount(src.encode(), path.encode(), None, MS_BIND, None), "cannot bind-mount namespace", path
        )
        return open_netns(path)
    except BaseException:
        remove_persistent(path)
        raise


def remove_persistent(path: str) -> None:
    """Unmount and delete a namespace made by :func:`create_persistent` (missing: no error)."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise HostError(f"cannot unmount namespace: {os.strerror(err)}", where=path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def loopback_up() -> None:
    """Bring ``lo`` up in the *calling thread's* namespace (an ioctl: no netlink, no event loop)."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def write_sysctl(name: str, value: str) -> None:
    """Write ``/proc/sys/<name>`` (dots or slashes) for the *calling thread's* network namespace.

    Use inside :func:`netns_thread_call`: ``/proc/sys/net`` shows the namespace of the thread
    that opens it.
    """
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path, "w") as f:
        f.write(value)
