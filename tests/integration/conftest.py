"""Fixtures shared by the integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Clawpen, DaemonCli, Sink, daemons_of, kill_fences, session_uid_base

UID_BASE = session_uid_base()
PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(autouse=True)
def _no_subreaper_left() -> Iterator[None]:
    """A test that runs a sandbox in this process makes pytest a child subreaper (as the daemon
    is). Afterwards it stops being one: processes orphaned by a later test (a daemon it kills)
    then go to init, which reaps them, as on a real host; never to pytest, which would leave
    them zombies that keep their cgroups busy."""
    yield
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def clawpen(tmp_path: Path) -> Iterator[Clawpen]:
    """``clawpen run`` as a subprocess with a private CLAWPEN_HOME; kills what is left after."""
    home = tmp_path / "state"
    home.mkdir()
    cp = Clawpen(home, UID_BASE)
    try:
        yield cp
    finally:
        cp.cleanup()


@pytest.fixture
def pub() -> Iterator[Path]:
    """A 0755 scratch folder in /tmp that any uid can reach (workspaces, the setuid control)."""
    path = Path(tempfile.mkdtemp(prefix="clawpen-it-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def daemon_at(home: Path) -> Iterator[DaemonCli]:
    """A DaemonCli on state dir ``home`` with a 0755 spec folder in /tmp; its daemon is stopped
    after, and a daemon left running fails the test."""
    spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-d-", dir="/tmp"))
    spec_dir.chmod(0o755)
    d = DaemonCli(home, spec_dir, UID_BASE)
    try:
        yield d
    finally:
        d.shutdown()
        subprocess.run(["rm", "-rf", str(spec_dir)], check=False)
        leaked = daemons_of(d.home)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        kill_fences(d.home)  # a failover fence outlives its daemon by design (it leaves when idle)
        assert not leaked, f"the test left daemons running: {leaked}"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonCli]:
    with daemon_at(tmp_path / "state") as d:
        yield d


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A webhook receiver on loopback (json:// notification URLs)."""
    s = Sink()
    try:
        yield s
    finally:
        s.close()
