"""The host side of one container instance: the gate FIFO, the bot's log pipes handed to its uid,
and its secrets as files on a private tmpfs, all under ``<run>/<cgroup>.ctr`` (removed at
teardown).

The secrets never touch a disk: the folder is a tmpfs mounted for this instance (mode 0500, the
bot's uid), each secret a 0400 file the bot's uid owns, bound read-only at /run/secrets.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from clawpen.errors import HostError, SandboxError

BUSYBOX_HOST = "/bin/busybox"
SECRETS_TMPFS_SIZE = 4 << 20
_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


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


class InstanceFiles:
    """Files of one container instance under ``<run>/<name>.ctr``, owned as the bot needs them."""

    def __init__(self, run_dir: Path, name: str, uid: int, gid: int) -> None:
        self.dir = run_dir / f"{name}.ctr"
        self.gate = self.dir / "gate"
        self.secrets = self.dir / "secrets"
        self.uid, self.gid = uid, gid

    def make(self, secrets: Mapping[str, bytes]) -> None:
        """A fresh folder with the gate FIFO (and the secrets, if any); SandboxError on failure."""
        self.remove()
        try:
            self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkdir(self.dir, 0o711)
            os.mkfifo(self.gate, 0o600)
            os.chown(self.gate, self.uid, self.gid)
            if secrets:
                self._secrets(secrets)
        except OSError as err:
            self.remove()
            raise SandboxError(f"cannot prepare {self.dir}: {err}", where="container: files") from None

    def _secrets(self, secrets: Mapping[str, bytes]) -> None:
        os.mkdir(self.secrets, 0o500)
        opts = f"size={SECRETS_TMPFS_SIZE},mode=0500,uid={self.uid},gid={self.gid}".encode()
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        if _libc().mount(b"tmpfs", bytes(self.secrets), b"tmpfs", flags, opts) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount tmpfs on {self.secrets}: {os.strerror(err)}")
        for name, value in secrets.items():
            fd = os.open(self.secrets / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
            try:
                os.fchown(fd, self.uid, self.gid)
                view = memoryview(value)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    def hand_over(self, fd: int) -> str:
        """The path of the named pipe open at ``fd`` (a daemon's log pipe), given to the bot's uid
        so that the container can open it (mode 0600 stays)."""
        path = os.readlink(f"/proc/self/fd/{fd}")
        st = os.stat(path)
        if not stat.S_ISFIFO(st.st_mode) or os.fstat(fd).st_ino != st.st_ino:
            raise SandboxError(
                f"the bot's log descriptor {fd} is not a named pipe clawpen can bind ({path})",
                where="container: logs",
                hint="the container tier passes stdout/stderr as the daemon's named pipes",
            )
        os.chown(path, self.uid, self.gid)
        return path

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
        """Unmount the secrets' tmpfs and remove the folder; idempotent, never raises."""
        if os.path.ismount(self.secrets):
            _libc().umount2(bytes(self.secrets), _MNT_DETACH)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
