"""Docker for the container tier's tests: a running engine and a local base image.

No registry is reachable here, so the base image is built from Debian's packages by clawpen's
own builder (:func:`clawpen.container.base.build_base`: debootstrap into a folder, then the
engine's import), once per machine: ``clawpen-test-base:bookworm``.
The tests start dockerd when none runs (CI's clean machine) and leave it running for the
session; pytest's end stops the one it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time

SOCKET = "/var/run/docker.sock"
BASE_IMAGE = "clawpen-test-base:bookworm"
MIRROR = os.environ.get("CLAWPEN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
_started: list[subprocess.Popen[bytes]] = []


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


def has_image(tag: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0
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
