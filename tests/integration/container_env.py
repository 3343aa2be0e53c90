"""Docker for the container tier's tests: a running engine and a local base image.

No registry is reachable here, so the base image is built from Debian's packages (debootstrap
into a folder, then ``docker import``), once per machine: ``clawpen-test-base:bookworm``.
The tests start dockerd when none runs (CI's clean machine), once for all the test processes
running at the same time, and leave it running; scripts/test.sh stops it at its end
(``python -m tests.integration.container_env stop``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

SOCKET = "/var/run/docker.sock"
BASE_IMAGE = "clawpen-test-base:bookworm"
MIRROR = os.environ.get("CLAWPEN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# shared by every test process of the machine: who starts dockerd, and which one it started
LOCK = "/run/clawpen-test-dockerd.lock"  # held (exclusive) to start or stop it
USERS = "/run/clawpen-test-dockerd.users"  # held (shared) by every process that used it, for life
PIDFILE = "/run/clawpen-test-dockerd.pid"  # the dockerd the tests started
LOG = "/var/log/clawpen-test-dockerd.log"
# this process's: the dockerd it started (a Popen dropped while its process runs warns) and its
# shared lock on USERS (kept open until the process ends)
_children: list[subprocess.Popen[bytes]] = []
_uses: list[IO[str]] = []


def _answers() -> bool:
    if not os.path.exists(SOCKET):
        return False
    done = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, check=False
    )
    return done.returncode == 0


def _recorded_dockerd() -> int | None:
    """The pid in PIDFILE when it is still a live dockerd (a stale file names nothing)."""
    try:
        pid = int(Path(PIDFILE).read_text())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" and _alive(pid) else None


def ensure_dockerd(timeout: float = 60.0) -> str | None:
    """Start dockerd when it is installed and none answers; None when one answers, else why not.

    Several pytest processes (scripts/test.sh runs groups in parallel) may ask at once: the
    start happens under an exclusive lock on LOCK, so exactly one dockerd is started and the
    others wait, then find it answering. The one started is recorded in PIDFILE and left running
    when the session ends; ``stop_test_dockerd`` (scripts/test.sh, at its end) stops it, unless
    a process that used it still runs.
    """
    _use()
    if _answers():
        return None
    if not shutil.which("dockerd") or os.geteuid() != 0:
        return "needs a running Docker engine (apt-get install docker.io)"
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if _answers():
            return None  # another test process started it while this one waited
        if _recorded_dockerd() is None:  # else one is starting (its starter died waiting): wait too
            log = open(LOG, "ab")  # noqa: SIM115 - dockerd's for its life
            proc = subprocess.Popen(
                ["dockerd", "--log-level=warn"], stdout=log, stderr=log, start_new_session=True
            )
            log.close()
            _children.append(proc)
            Path(PIDFILE).write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers():
                return None
            if all(p.poll() is not None for p in _children) and _recorded_dockerd() is None:
                return f"dockerd exited (see {LOG})"
            time.sleep(0.2)
    return f"dockerd did not answer within {timeout:.0f}s (see {LOG})"


def _use() -> None:
    """Mark this process as a user of dockerd until it ends (a shared lock on USERS)."""
    if not _uses and os.geteuid() == 0:
        users = open(USERS, "a")  # noqa: SIM115 - held until this process ends
        fcntl.flock(users, fcntl.LOCK_SH)
        _uses.append(users)


def stop_test_dockerd(timeout: float = 30.0) -> bool:
    """Stop the dockerd a test started (PIDFILE) when no process that used it still runs (test
    processes of other runs on this machine); True when one was stopped.

    Never called from a pytest session (another one may still use the engine): scripts/test.sh
    calls it once every group has ended. A dockerd the tests did not start is left alone.
    """
    with open(LOCK, "a") as lock, open(USERS, "a") as users:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use: the last run to end stops it
        pid = _recorded_dockerd()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(PIDFILE)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def has_image(tag: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0
    )


def ensure_base_image(tag: str = BASE_IMAGE) -> str:
    """``tag``: Debian bookworm (minbase) with python3, built locally when missing."""
    if has_image(tag):
        return tag
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3-minimal,ca-certificates",
                "bookworm",
                str(root),
                MIRROR,
            ],
            check=True,
            capture_output=True,
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True, capture_output=True)
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
    return tag


if __name__ == "__main__":  # python -m tests.integration.container_env stop  (scripts/test.sh)
    if sys.argv[1:] != ["stop"]:
        sys.exit("usage: python -m tests.integration.container_env stop")
    if stop_test_dockerd():
        print("stopped the dockerd the tests started")
