"""`clawpen validate --hostile` on a container bot, with real Docker: every built-in action runs in
a throwaway container of the bot's image (or, with --exec, is entered into one running container
of it), each with its positive control on the host, as tests/integration/test_hostile.py does for
the sandbox tier. Images derived locally from the base image: python3 without ctypes and json
(as Debian's python3-minimal has it), and one without python3.

Positive: a hardened container bot contains every action (the syscall actions through
clawpen-sysprobe, inside and in their controls, and the report says so); the host keeps no trace
and no container is left. Negative: `disk = "unlimited"` lets the file-size action through
(escaped, exit 1). An image without python3 cannot be judged: reported as such, never passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_env import BASE_IMAGE, ensure_base_image
from helpers import CLAWPEN, run_hostile

from clawpen.validate.actions import ACTIONS
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.bwrap]  # the peer bot is a sandbox
NO_PYTHON = "clawpen-test-nopython:bookworm"
MINIMAL = "clawpen-test-pyminimal:bookworm"  # python3 as in python3-minimal: no ctypes, no json
STRIP_PYTHON = "rm -f /usr/bin/python3 /usr/bin/python3.11 /usr/local/bin/python3"
STRIP_CTYPES = (
    "rm -rf /usr/lib/python3.11/ctypes /usr/lib/python3.11/json /usr/lib/python3.11/lib-dynload/_ctypes*"
)
SYSCALL_ACTIONS = {
    "fs.mount", "proc.pidfd-host", "proc.ptrace", "priv.userns", "priv.netns", "priv.mountns",
    "priv.keyctl", "priv.bpf", "priv.perf", "priv.module", "priv.clock", "priv.io-uring", "priv.userfaultfd",
}  # fmt: skip


@pytest.fixture
def spec_dir() -> Iterator[Path]:
    ensure_base_image()
    path = Path(tempfile.mkdtemp(prefix="clawpen-hc-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _hostile(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_hostile(home, cwd, UID_BASE, *args)


def _spec(folder: Path, bot: str, image: str, resources: str) -> None:
    (folder / "clawpen.toml").write_text(
        f'[bots.{bot}]\ntier = "container"\nimage = "{image}"\ncommand = ["sleep", "1"]\n'
        f'workspace = "./ws"\nsecrets = ["API_KEY"]\nresources = {{ {resources} }}\n'
    )


def _containers(bot: str) -> list[str]:
    found = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"name=clawpen-{bot}_hostile"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.split()


def _traces() -> set[str]:
    found = set()
    for folder in ("/usr", "/etc", "/", "/root", "/tmp"):
        found |= {f"{folder}/{n}" for n in os.listdir(folder) if "clawpen-hostile" in n}
    return found


@contextlib.contextmanager
def _derived(tag: str, run: str) -> Iterator[str]:
    """``tag``: the base image with ``run`` applied (built locally, removed afterwards)."""
    ensure_base_image()
    with tempfile.TemporaryDirectory(prefix="clawpen-hc-img-") as ctx:
        Path(ctx, "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN {run}\n")
        subprocess.run(["docker", "build", "-q", "-t", tag, ctx], capture_output=True, check=True)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


@pytest.fixture
def no_python_image() -> Iterator[str]:
    with _derived(NO_PYTHON, STRIP_PYTHON) as tag:
        yield tag


@pytest.fixture
def minimal_image() -> Iterator[str]:
    with _derived(MINIMAL, STRIP_CTYPES) as tag:
        yield tag


def test_a_container_bot_contains_every_action(tmp_path: Path, spec_dir: Path, minimal_image: str) -> None:
    _spec(
        spec_dir, "boxed", minimal_image, 'memory = "96M", pids = 48, nofile = 256, disk = "32M", tmp = "16M"'
    )
    before = _traces()
    proc = _hostile(tmp_path / "state", spec_dir, "--json")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)["bots"]["boxed"]
    actions = report["actions"]
    assert [a["id"] for a in actions] == [a.id for a in ACTIONS]  # the same catalogue as the sandbox tier
    assert {a["verdict"] for a in actions} == {"contained"}, [
        a for a in actions if a["verdict"] != "contained"
    ]
    by_id = {a["id"]: a for a in actions}
    # inside the container, not on the host: its own pid 1, read-only root, no capability, no network
    assert "is not the host's pid 1" in by_id["fs.proc1-environ"]["inside"]
    assert "EROFS" in by_id["fs.write-usr"]["inside"] and "created" in by_id["fs.write-usr"]["control"]
    assert "CapEff 0000000000000000" in by_id["priv.capabilities"]["inside"]
    assert "ENETUNREACH" in by_id["net.raw-egress"]["inside"]
    assert (
        "ECONNREFUSED" in by_id["net.host-loopback"]["inside"]
        and "connected" in by_id["net.host-loopback"]["control"]
    )
    # the engine's and clawpen's limits hold: OOM kill, pids, tmpfs size, nofile, file size
    assert "oom" in by_id["res.memory"]["inside"] and "allocated" in by_id["res.memory"]["control"]
    assert "EAGAIN" in by_id["proc.fork-bomb"]["inside"] and "forked" in by_id["proc.fork-bomb"]["control"]
    assert "ENOSPC" in by_id["res.fill-tmp"]["inside"]
    assert "EMFILE" in by_id["res.fds"]["inside"]
    assert "EFBIG" in by_id["res.file-size"]["inside"]
    assert "read the secret" in by_id["sec.other-bot-file"]["control"]
    # no ctypes in the image: the syscall actions ran clawpen-sysprobe, and their controls too
    for aid in SYSCALL_ACTIONS:
        assert "via clawpen-sysprobe" in by_id[aid]["inside"], by_id[aid]
        assert "via clawpen-sysprobe" in by_id[aid]["control"], by_id[aid]
    assert "EPERM" in by_id["priv.userns"]["inside"] and "unshare(user) ok" in by_id["priv.userns"]["control"]
    assert "PTRACE_ATTACH ok" in by_id["proc.ptrace"]["control"]
    notes = " ".join(report["notes"])
    assert "container tier" in notes and minimal_image in notes and "clawpen-sysprobe" in notes
    # the host keeps nothing, no container is left, the bot's own workspace was not used
    assert _traces() <= before
    assert _containers("boxed") == []
    assert not (spec_dir / "ws").exists()


def test_the_exec_path_into_a_container_bot_contains_every_action(tmp_path: Path, spec_dir: Path) -> None:
    """--exec: each probe entered into one running container of the bot (clawpen exec's path). Its
    resource actions failed before the entered command joined the container's own cgroup."""
    _spec(
        spec_dir, "entered", BASE_IMAGE, 'memory = "96M", pids = 48, nofile = 256, disk = "32M", tmp = "16M"'
    )
    proc = _hostile(tmp_path / "state", spec_dir, "--json", "--exec")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)["bots"]["entered"]
    actions = report["actions"]
    assert [a["id"] for a in actions] == [a.id for a in ACTIONS]
    assert {a["verdict"] for a in actions} == {"contained"}, [
        a for a in actions if a["verdict"] != "contained"
    ]
    by_id = {a["id"]: a for a in actions}
    # the OOM killer ended the entered probe (the container's memory limit), the pids limit held
    assert "signaled" in by_id["res.memory"]["inside"] and "allocated" in by_id["res.memory"]["control"]
    assert "EAGAIN" in by_id["proc.fork-bomb"]["inside"]
    assert "is not the host's pid 1" in by_id["fs.proc1-environ"]["inside"]
    notes = " ".join(report["notes"])
    assert "--exec" in notes and "entered into a container" in notes
    assert _containers("entered") == []
    bare = subprocess.run([CLAWPEN, "validate", "--exec"], capture_output=True, text=True, cwd=spec_dir)
    assert bare.returncode == 2 and "--exec goes with --hostile" in bare.stderr


def test_a_container_without_a_disk_cap_lets_a_file_grow(tmp_path: Path, spec_dir: Path) -> None:
    _spec(spec_dir, "loose", BASE_IMAGE, 'memory = "64M", pids = 32, disk = "unlimited"')
    proc = _hostile(tmp_path / "state", spec_dir, "--only", "res.file-size", "--only", "res.memory")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = {line.split()[2]: line for line in proc.stdout.splitlines() if line.startswith("loose ")}
    assert "ESCAPED" in lines["res.file-size"] and "a file reached" in lines["res.file-size"], proc.stdout
    assert lines["res.memory"].split()[1] == "ok", proc.stdout
    assert _containers("loose") == []


def test_an_image_without_python3_is_not_judged(tmp_path: Path, spec_dir: Path, no_python_image: str) -> None:
    _spec(spec_dir, "bare", no_python_image, 'memory = "64M", pids = 32')
    proc = _hostile(tmp_path / "state", spec_dir, "--json", "--only", "priv.userns", "--only", "fs.write-usr")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)["bots"]["bare"]
    assert {a["verdict"] for a in report["actions"]} == {"not-judged"}, report["actions"]
    assert all("has no python3" in a["inside"] for a in report["actions"])
    assert report["counts"]["not-judged"] == 2 and report["counts"]["contained"] == 0
    assert any("not judged" in note for note in report["notes"])
    assert _containers("bare") == []
