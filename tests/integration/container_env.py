"""Docker for the container tier's tests: a running engine and a local base image.

No registry is reachable here, so the base image is built from Debian's packages by clawpen's
own builder (:func:`clawpen.container.base.build_base`: debootstrap into a folder, then the
engine's import), once per machine: ``clawpen-test-base:bookworm``.
The tests start dockerd when none runs (CI's clean machine) and leave it running for the
session; pytest's end stops the one it started. The same for Podman's Docker-compatible API
service (``podman system service``), whose store gets the same base image (``docker save`` into
``podman load``). Several pytest processes may share one machine: starting Podman's service is
serialised by a lock file, each session holds a shared lock on it while it runs, and the session
that started the service stops it at its end only when no other session holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time

SOCKET = "/var/run/docker.sock"
BASE_IMAGE = "clawpen-test-base:bookworm"
MIRROR = os.environ.get("CLAWPEN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PODMAN_SOCKET = "/run/podman/podman.sock"
PODMAN_LOCK = "/run/clawpen-test-podman.lock"
PODMAN_LOG = "/var/log/clawpen-test-podman.log"
PODMAN_CLI = ["docker", "-H", f"unix://{PODMAN_SOCKET}"]  # the docker CLI, on Podman's Docker API
_started: list[subprocess.Popen[bytes]] = []
_podman: dict[str, object] = {}  # "lock": this session's open lock file; "proc": the service it started


def _answers() -> bool:
    if not os.path.exists(SOCKET):
        return False
    done = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, check=False
    )
    return done.returncode == 0


def ensure_dockerd(timeout: float = 60.0) -> str | None:
    """Start dockerd when it is installed and none answers; None when one answers, else why not."""
    if _answers():
        return None
    if not shutil.which("dockerd") or os.geteuid() != 0:
        return "needs a running Docker engine (apt-get install docker.io)"
    log = open("/var/log/clawpen-test-dockerd.log", "ab")  # noqa: SIM115 - dockerd's for its life
    proc = subprocess.Popen(["dockerd", "--log-level=warn"], stdout=log, stderr=log, start_new_session=True)
    log.close()
    _started.append(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers():
            return None
        if proc.poll() is not None:
            return f"dockerd exited with {proc.returncode} (see /var/log/clawpen-test-dockerd.log)"
        time.sleep(0.2)
    return "dockerd did not answer within a minute (see /var/log/clawpen-test-dockerd.log)"


def stop_started_dockerd() -> None:
    for proc in _started:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    _started.clear()


def _podman_answers() -> bool:
    if not os.path.exists(PODMAN_SOCKET):
        return False
    done = subprocess.run(
        [*PODMAN_CLI, "version", "--format", "{{.Server.Version}}"], capture_output=True, check=False
    )
    return done.returncode == 0


def ensure_podman(timeout: float = 30.0) -> str | None:
    """Start Podman's API service when Podman is installed and none answers, and put the base
    image in its store; None when ready, else why not. Idempotent across pytest processes."""
    if "lock" not in _podman:
        if not shutil.which("podman") or os.geteuid() != 0:
            return "needs Podman, as root (apt-get install podman catatonit)"
        lock = open(PODMAN_LOCK, "a")  # noqa: SIM115 - held (shared) for the session
        _podman["lock"] = lock
    lock = _podman["lock"]
    assert hasattr(lock, "fileno")
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one starter at a time
    try:
        why = _start_podman(timeout) if not _podman_answers() else None
        if why is None and not has_image(BASE_IMAGE, PODMAN_CLI):
            why = _load_base_into_podman()
    finally:
        fcntl.flock(lock.fileno(), fcntl.LOCK_SH)  # in use by this session until it ends
    return why


def _start_podman(timeout: float) -> str | None:
    os.makedirs(os.path.dirname(PODMAN_SOCKET), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(PODMAN_SOCKET)  # a dead service's
    log = open(PODMAN_LOG, "ab")  # noqa: SIM115 - the service's for its life
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{PODMAN_SOCKET}"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    _podman["proc"] = proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _podman_answers():
            return None
        if proc.poll() is not None:
            return f"podman system service exited with {proc.returncode} (see {PODMAN_LOG})"
        time.sleep(0.1)
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
    """Stop the service this session started, unless another session still uses it."""
    lock, proc = _podman.pop("lock", None), _podman.pop("proc", None)
    if lock is None:
        return
    assert hasattr(lock, "fileno") and hasattr(lock, "close")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        proc = None  # another session's tests use it: it stays running
    if isinstance(proc, subprocess.Popen):
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    lock.close()


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
