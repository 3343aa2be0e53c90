"""scripts/test.sh's parallel run: every test lands in exactly one group, and the test processes
of a run share one dockerd, started once however many ask at the same time and stopped only
when no test process uses it (tests/conftest.py, tests/integration/container_env.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import WAIT_GROUP, group_of, pytest_collection_modifyitems

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


class FakeItem:
    """What group_of reads of a pytest.Item."""

    def __init__(self, rel: str, name: str, markers: tuple[str, ...] = ()) -> None:
        self.path = TESTS / rel
        self.name = self.originalname = name
        self.markers = markers

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


def test_wait_group_files_exist_and_docker_tests_always_wait() -> None:
    assert all((TESTS / e.split("::")[0]).is_file() for e in WAIT_GROUP)
    assert group_of(FakeItem("integration/test_openclaw_e2e.py", "test_openclaw_end_to_end")) == "wait"  # type: ignore[arg-type]
    assert group_of(FakeItem("unit/test_ops.py", "test_x")) == "main"  # type: ignore[arg-type]
    # a docker test waits wherever it is (other helpers add them under any name)
    assert group_of(FakeItem("unit/test_ops.py", "test_x", ("docker",))) == "wait"  # type: ignore[arg-type]
    assert group_of(FakeItem("integration/test_container_new.py", "t", ("docker", "root"))) == "wait"  # type: ignore[arg-type]


class FakeHook:
    def __init__(self) -> None:
        self.deselected: list[FakeItem] = []

    def pytest_deselected(self, items: list[FakeItem]) -> None:
        self.deselected += items


class FakeConfig:
    def __init__(self, group: str | None) -> None:
        self.group = group
        self.hook = FakeHook()

    def getoption(self, name: str) -> str | None:
        assert name == "--group"
        return self.group


def test_the_two_groups_split_what_one_run_collects() -> None:
    items = [
        FakeItem("unit/test_ops.py", "test_a"),
        FakeItem("integration/test_openclaw_e2e.py", "test_openclaw_end_to_end"),
        FakeItem("integration/test_daemon.py", "test_b"),
        FakeItem("integration/test_container_x.py", "test_c", ("docker",)),
    ]
    runs = {}
    for group in ("main", "wait", None):
        config, selected = FakeConfig(group), list(items)
        pytest_collection_modifyitems(config, selected)  # type: ignore[arg-type]
        runs[group] = (selected, config.hook.deselected)
    main, wait = runs["main"][0], runs["wait"][0]
    assert [i.name for i in wait] == ["test_openclaw_end_to_end", "test_c"]
    assert [i.name for i in main] == ["test_a", "test_b"]
    assert runs["main"][1] == wait and runs["wait"][1] == main  # reported as deselected
    assert runs[None] == (items, [])  # no --group: everything, as before


# --------------------------------------------------------------------------------------------
# one dockerd for all the test processes: a fake one (a script named dockerd) on private paths

FAKE_DOCKERD = """#!/bin/sh
echo $$ >> "$FAKE_STARTS"
sleep 0.5
: > "$FAKE_SOCK"
while :; do sleep 0.2; done
"""
FAKE_DOCKER = """#!/bin/sh
[ -e "$FAKE_SOCK" ]
"""
CALL = """
import sys
import tests.integration.container_env as c
d = sys.argv[1]
c.SOCKET, c.LOCK, c.USERS, c.PIDFILE, c.LOG = (f"{d}/sock", f"{d}/lock", f"{d}/users", f"{d}/pid", f"{d}/log")
if sys.argv[2] == "ensure":
    print(c.ensure_dockerd(timeout=20))
elif sys.argv[2] == "stop":
    print(c.stop_test_dockerd(timeout=5))
else:  # ensure, then hold on (a test process still running)
    print(c.ensure_dockerd(timeout=20), flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("dockerd", FAKE_DOCKERD), ("docker", FAKE_DOCKER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_STARTS": str(tmp_path / "starts"),
        "FAKE_SOCK": str(tmp_path / "sock"),
        "DIR": str(tmp_path),
    }


def _call(env: dict[str, str], what: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", CALL, env["DIR"], what],
        env=env,
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        **kw,
    )


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.root
def test_processes_asking_at_once_start_one_dockerd_and_only_the_last_user_stops_it(
    fake: dict[str, str],
) -> None:
    starts = Path(fake["FAKE_STARTS"])
    try:
        askers = [_call(fake, "ensure") for _ in range(3)]
        outs = [p.communicate(timeout=60)[0].strip() for p in askers]
        assert outs == ["None"] * 3, outs  # every one found it answering
        [pid] = [int(line) for line in starts.read_text().split()]  # started once
        assert _alive(pid)
        # a test process that used it still runs: stop leaves it
        user = _call(fake, "hold", stdin=subprocess.PIPE)
        assert user.stdout is not None and user.stdout.readline().strip() == "None"
        assert _call(fake, "stop").communicate(timeout=30)[0].strip() == "False"
        assert _alive(pid) and len(starts.read_text().split()) == 1
        # once it ended, stop stops the one the tests started
        user.communicate("", timeout=30)
        assert _call(fake, "stop").communicate(timeout=30)[0].strip() == "True"
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
        assert not Path(fake["DIR"], "pid").exists()
    finally:
        for line in starts.read_text().split() if starts.exists() else []:
            if _alive(int(line)):
                os.kill(int(line), signal.SIGKILL)


@pytest.mark.root
def test_stop_leaves_a_dockerd_the_tests_did_not_start(fake: dict[str, str]) -> None:
    other = subprocess.Popen(["dockerd"], env=fake, start_new_session=True)  # "the machine's own"
    try:
        deadline = time.monotonic() + 5
        while not Path(fake["FAKE_SOCK"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _call(fake, "ensure").communicate(timeout=30)[0].strip() == "None"  # it answers
        assert _call(fake, "stop").communicate(timeout=30)[0].strip() == "False"
        assert other.poll() is None
        assert Path(fake["FAKE_STARTS"]).read_text().split() == [str(other.pid)]  # none started
    finally:
        other.kill()
        other.wait()
