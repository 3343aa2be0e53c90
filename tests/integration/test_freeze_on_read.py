"""The freeze of a snapshot starts when restic opens the workspace (fanotify permission event),
not when restic starts: the opener waits in the kernel until the freeze is done, other openers
(the bot itself) are never held, and without a reader nothing is frozen."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from clawpen.snapshots.freezeonread import FreezeOnRead, available

pytestmark = [pytest.mark.root]


@pytest.fixture
def reader(tmp_path: Path) -> Path:
    """``ls`` under the name ``restic`` (a process's name is the name it was run by)."""
    link = tmp_path / "bin" / "restic"
    link.parent.mkdir()
    link.symlink_to("/bin/ls")
    return link


def test_fanotify_is_available_to_root() -> None:
    assert available()


def test_the_reader_lists_the_folder_only_after_the_freeze(tmp_path: Path, reader: Path) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "data.txt").write_text("x")
    seen: dict[str, float] = {}

    def freeze() -> None:
        seen["start"] = time.monotonic()
        # the bot opening its own folder meanwhile is not held (else it could not freeze)
        other = subprocess.run(["ls", str(folder)], capture_output=True, text=True, timeout=5, check=True)
        seen["other_ok"] = float("data.txt" in other.stdout)
        time.sleep(0.3)
        seen["end"] = time.monotonic()

    with FreezeOnRead(folder, freeze) as watch:
        begun = time.monotonic()
        out = subprocess.run([str(reader), str(folder)], capture_output=True, text=True, timeout=10)
        done = time.monotonic()
    assert out.returncode == 0 and out.stdout.split() == ["data.txt"], out
    assert watch.error is None and watch.frozen_at is not None
    assert seen["other_ok"] == 1.0
    assert begun <= seen["start"] < seen["end"] <= done  # the listing waited for the whole freeze
    assert done - begun >= 0.3


def test_other_processes_do_not_trigger_the_freeze(tmp_path: Path) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()
    calls: list[int] = []
    with FreezeOnRead(folder, lambda: calls.append(1)) as watch:
        for _ in range(5):  # positive control of the mark: these opens go through it
            subprocess.run(["ls", str(folder)], capture_output=True, timeout=5, check=True)
    assert calls == [] and watch.frozen_at is None


def test_a_failed_freeze_still_lets_the_reader_through(tmp_path: Path, reader: Path) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()

    def freeze() -> None:
        raise RuntimeError("no freezer")

    with FreezeOnRead(folder, freeze) as watch:
        out = subprocess.run([str(reader), str(folder)], capture_output=True, timeout=10)
    assert out.returncode == 0
    assert isinstance(watch.error, RuntimeError)


def test_closing_the_mark_lets_a_held_open_through(tmp_path: Path, reader: Path) -> None:
    """The daemon dies (or leaves) while restic's open is held: the kernel allows it."""
    folder = tmp_path / "ws"
    folder.mkdir()
    proc: subprocess.Popen[bytes] | None = None

    def freeze() -> None:
        time.sleep(30)  # never done in time

    watch = FreezeOnRead(folder, freeze)
    watch.__enter__()
    try:
        proc = subprocess.Popen([str(reader), str(folder)], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        assert proc.poll() is None  # held in the kernel
    finally:
        os.close(watch._fd)  # what the daemon's death does
        watch._fd = -1
        watch._stop.set()
    assert watch._thread is not None
    watch._thread.join(timeout=35)
    assert proc is not None and proc.wait(timeout=5) == 0
