"""Docker and Podman for the container tier's tests: running engines and a local base image.

No registry is reachable here, so the base image is built from Debian's packages by clawpen's
own builder (:func:`clawpen.container.base.build_base`: debootstrap into a folder, then the
engine's import), once per machine: ``clawpen-test-base:bookworm``.
The tests start dockerd when none runs (CI's clean machine), once for all the test processes
running at the same time, and leave it running; scripts/test.sh stops it at its end
(``python -m tests.integration.container_env stop``). Podman's Docker-compatible API service
(``podman system service``) is started the same way when a test needs it, and its store gets the
same base image (``docker save`` into ``podman load``): checking and starting it is serialised by a
lock file, each session using it holds a shared lock on another, and the session that started the
service stops it at its end only when no other session holds that.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from clawpen.sandbox.procs import readable  # poll, never select()

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
PODMAN_SOCKET = "/run/podman/podman.sock"
PODMAN_LOCK = "/run/clawpen-test-podman.lock"
PODMAN_USERS = "/run/clawpen-test-podman.users"
PODMAN_LOG = "/var/log/clawpen-test-podman.log"
PODMAN_CLI = ["docker", "-H", f"unix://{PODMAN_SOCKET}"]  # the docker CLI, on Podman's Docker API
_podman: dict[str, object] = {}  # "users": this session's shared lock; "pidfd": the service it started


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
        atexit.register(users.close)  # the lock goes with the process; closed, not left to the GC


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


def _podman_answers() -> bool:
    if not os.path.exists(PODMAN_SOCKET):
        return False
    done = subprocess.run(
        [*PODMAN_CLI, "version", "--format", "{{.Server.Version}}"], capture_output=True, check=False
    )
    return done.returncode == 0


def ensure_podman(timeout: float = 30.0) -> str | None:
    """Start Podman's API service when Podman is installed and none answers, and put the base
    image in its store; None when ready, else why not. Idempotent across pytest processes: the
    check and the start happen under an exclusive lock (``PODMAN_LOCK``); each session that uses
    the service holds a shared lock on ``PODMAN_USERS`` until its end."""
    if not shutil.which("podman") or os.geteuid() != 0:
        return "needs Podman, as root (apt-get install podman catatonit)"
    with open(PODMAN_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one session checks or starts at a time
        if "users" not in _podman:
            users = open(PODMAN_USERS, "a")  # noqa: SIM115 - held (shared) for the session
            fcntl.flock(users.fileno(), fcntl.LOCK_SH)
            _podman["users"] = users
        why = _start_podman(timeout) if not _podman_answers() else None
        if why is None and not has_image(BASE_IMAGE, PODMAN_CLI):
            why = _load_base_into_podman()
    return why


def _start_podman(timeout: float) -> str | None:
    """Start the service detached (no child of this process: it may outlive the session, see
    :func:`stop_started_podman`), held by a pidfd."""
    os.makedirs(os.path.dirname(PODMAN_SOCKET), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(PODMAN_SOCKET)  # a dead service's
    script = 'podman system service --time=0 "$1" >>"$2" 2>&1 </dev/null & echo $!'
    started = subprocess.run(
        ["sh", "-c", script, "sh", f"unix://{PODMAN_SOCKET}", PODMAN_LOG],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
        cwd=os.path.dirname(PODMAN_SOCKET),  # conmon writes a file "oom" into it on an OOM kill
    )
    pidfd = os.pidfd_open(int(started.stdout))
    _podman["pidfd"] = pidfd
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _podman_answers():
            return None
        if readable(pidfd, 0.1):
            return f"podman system service exited (see {PODMAN_LOG})"
    return f"podman system service did not answer in {timeout:g}s (see {PODMAN_LOG})"


def _load_base_into_podman() -> str | None:
    """The base image, as Docker has it (built when missing), into Podman's store."""
    ensure_base_image()
    save = subprocess.Popen(["docker", "save", BASE_IMAGE], stdout=subprocess.PIPE)
    load = subprocess.run(["podman", "load"], stdin=save.stdout, capture_output=True, check=False)
    assert save.stdout is not None
    save.stdout.close()
    if save.wait() != 0 or load.returncode != 0:
        return f"cannot load {BASE_IMAGE} into podman: {load.stderr.decode(errors='replace')}"
    return None


def stop_started_podman() -> None:
    """Stop the service this session started, unless another session still uses it (then it
    stays running, as a service the tests of a later session find)."""
    users, pidfd = _podman.pop("users", None), _podman.pop("pidfd", None)
    if users is None:
        return
    assert hasattr(users, "fileno") and hasattr(users, "close")
    with open(PODMAN_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # no session checks the service meanwhile
        try:
            fcntl.flock(users.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            last = True
        except BlockingIOError:  # another session's tests use it
            last = False
        if isinstance(pidfd, int):
            if last:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                readable(pidfd, 30)
            os.close(pidfd)
        users.close()


def has_image(tag: str, cli: list[str] | None = None) -> bool:
    return (
        subprocess.run(
            [*(cli or ["docker"]), "image", "inspect", tag], capture_output=True, check=False
        ).returncode
        == 0
    )


def ensure_base_image(tag: str = BASE_IMAGE) -> str:
    """``tag``: Debian bookworm (minbase) with python3, built locally when missing."""
    if has_image(tag):
        return tag
    from clawpen.container.base import build_base
    from clawpen.container.engine import Engine, client

    api = client(Engine("docker", SOCKET), timeout=300)
    try:
        build_base(api, tag, mirror_url=MIRROR)
    finally:
        api.close()
    return tag


@contextlib.contextmanager
def container_daemon(home: Path) -> Iterator[Any]:
    """A test daemon (conftest's ``daemon_at``) on state ``home``, the base image ready; the
    containers it leaves under its names are removed after, on both engines."""
    from clawpen.paths import cgroup_scope
    from conftest import daemon_at

    ensure_base_image()
    try:
        with daemon_at(home) as d:
            yield d
    finally:
        for cli in (["docker"], ["podman"]):
            if shutil.which(cli[0]) is None:
                continue
            left = subprocess.run(
                [*cli, "ps", "-a", "-q", "--filter", f"name=clawpen-{cgroup_scope(home)}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if left:
                subprocess.run([*cli, "rm", "-f", *left], capture_output=True, check=False)


if __name__ == "__main__":  # python -m tests.integration.container_env stop  (scripts/test.sh)
    if sys.argv[1:] != ["stop"]:
        sys.exit("usage: python -m tests.integration.container_env stop")
    if stop_test_dockerd():
        print("stopped the dockerd the tests started")
