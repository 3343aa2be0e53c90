"""The host side of one container instance: the gate FIFO under ``<run>/<cgroup>.ctr`` (removed
at teardown), the bot's log pipes handed to its uid, and its secrets written into the container.

The secrets never touch a disk nor a host mount: the container gets a tmpfs at /run/secrets
(mode 0500, the bot's uid; see :mod:`clawpen.container.create`), and before the gate opens the
daemon writes each secret there as a 0400 file of the bot's uid, through ``/proc/PID/root``,
walking each component without following symlinks (the image cannot redirect the writes). A
host mount would not do: a daemon in its own mount namespace (systemd's ProtectSystem) makes
mounts the engine never sees. They go with the container.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from clawpen.errors import HostError, SandboxError
from clawpen.fsutil import write_all

BUSYBOX_HOST = "/bin/busybox"
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def static_busybox() -> str:
    """The host's static busybox (Debian's busybox-static), which runs the gate in any image."""
    try:
        st = os.stat(BUSYBOX_HOST)
        with open(BUSYBOX_HOST, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        st, head = None, b""
    if st is None or not stat.S_ISREG(st.st_mode) or head[:4] != b"\x7fELF" or b"/ld-linux" in head:
        raise HostError(
            f"no static busybox at {BUSYBOX_HOST}: the container tier runs its start gate with it",
            where="container tier",
            hint="apt-get install busybox-static",
        )
    return BUSYBOX_HOST


def write_secrets(pid: int, secrets: Mapping[str, bytes], uid: int, gid: int) -> None:
    """Write ``secrets`` into the fresh tmpfs at /run/secrets of the container whose init is host
    pid ``pid`` (its command has not run yet); SandboxError when that is not what is there."""
    fds: list[int] = []

    def fail(why: str) -> SandboxError:
        return SandboxError(
            f"cannot write the secrets into the container: {why}",
            where="container: secrets",
            hint="the image's /run must be a folder (not a symlink)",
        )

    try:
        fds.append(os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in ("run", "secrets"):
            fds.append(os.open(part, _DIR, dir_fd=fds[-1]))
        run, folder = (os.fstat(fd) for fd in fds[-2:])
        if folder.st_dev == run.st_dev or folder.st_uid != uid or stat.S_IMODE(folder.st_mode) != 0o500:
            raise fail("/run/secrets is not the container's own tmpfs")
        for name, value in secrets.items():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o400, dir_fd=fds[-1])
            try:
                os.fchown(fd, uid, gid)
                write_all(fd, value)
            finally:
                os.close(fd)
    except OSError as err:
        raise fail(str(err)) from None
    finally:
        for fd in fds:
            os.close(fd)


class InstanceFiles:
    """Files of one container instance under ``<run>/<name>.ctr``, owned as the bot needs them."""

    def __init__(self, run_dir: Path, name: str, uid: int, gid: int) -> None:
        self.dir = run_dir / f"{name}.ctr"
        self.gate = self.dir / "gate"
        self.uid, self.gid = uid, gid

    def make(self) -> None:
        """A fresh folder with the gate FIFO; SandboxError on failure."""
        self.remove()
        try:
            self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkdir(self.dir, 0o711)
            os.mkfifo(self.gate, 0o600)
            os.chown(self.gate, self.uid, self.gid)
        except OSError as err:
            self.remove()
            raise SandboxError(f"cannot prepare {self.dir}: {err}", where="container: files") from None

    def hand_over(self, fd: int) -> str:
        """The path of the named pipe open at ``fd`` (a daemon's log pipe), given to the bot's uid
        so that the container can open it (mode 0600 stays)."""
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            st = os.stat(path)
            if stat.S_ISFIFO(st.st_mode) and os.fstat(fd).st_ino == st.st_ino:
                os.chown(path, self.uid, self.gid)
                return path
        except OSError:
            path = f"descriptor {fd}"
        raise SandboxError(
            f"the bot's log descriptor {fd} is not a named pipe clawpen can bind ({path})",
            where="container: logs",
            hint="the container tier passes stdout/stderr as the daemon's named pipes",
        )

    def open_gate(self, alive: Callable[[], bool], timeout: float = 30.0) -> None:
        """Let the bot's command run: once the gate script has the FIFO open for reading, write a
        line. SandboxError when the container ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                fd = os.open(self.gate, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise SandboxError(
                        f"cannot open the gate {self.gate}: {err}", where="container: gate"
                    ) from None
            if not alive() or time.monotonic() > deadline:
                raise SandboxError(
                    "the container ended before its command started"
                    if not alive()
                    else f"the container's gate did not open within {timeout:g}s",
                    where="container: gate",
                    hint="check the image runs /.clawpen/busybox (an x86-64 Linux image)",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Remove the folder; idempotent, never raises."""
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
