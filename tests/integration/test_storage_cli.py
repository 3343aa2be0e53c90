"""`clawpen storage age|status` and `clawpen snapshot ls|restore --tier` against a real daemon
and real restic: a bot's snapshot older than hot.age moves to the warm "disk" (a temporary
folder) and is listed and restored from there, byte-identical; a tier the spec does not name is
a clear refusal (exit 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import DaemonCli

from clawpen.snapshots.restic import Repository

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

DAY = 86400.0


def test_an_old_snapshot_moves_to_warm_and_is_restored_from_there(daemon: DaemonCli, tmp_path: Path) -> None:
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    (ws / "data.bin").write_bytes(b"ten days ago " * 4000)
    disk2 = tmp_path / "disk2"
    disk2.mkdir()
    daemon.write(
        f"""
        [storage]
        hot = {{ age = "7d" }}
        warm = {{ repository = "{disk2 / "warm"}", age = "30d" }}

        [bots.tw1]
        command = ["sleep", "1000"]
        workspace = "./ws"
        workspace_adopt = true
        """
    )
    daemon.cli("up")
    # the refusal first: no warm tier has ever been written, but it is named: an empty listing
    assert daemon.json("snapshot", "ls", "tw1", "--tier", "warm") == []
    # a snapshot "ten days old" in the daemon's own hot repository (its vault's password)
    old = Repository(daemon.home).backup("tw1", ws, at=time.time() - 10 * DAY)
    (ws / "data.bin").write_bytes(b"damaged now")
    fresh = daemon.json("snapshot", "create", "tw1")["snapshot"]  # type: ignore[index]

    dry = daemon.cli("storage", "age", "--dry-run")
    assert old.snapshot_id[:8] in dry.stdout, dry.stdout
    assert (
        [s["short_id"] for s in daemon.json("snapshot", "ls", "tw1")]
        == [  # type: ignore[union-attr]
            old.snapshot_id[:8],
            fresh[:8],
        ]
    )  # the dry run moved nothing
    daemon.cli("storage", "age", timeout=180)
    hot = [s["short_id"] for s in daemon.json("snapshot", "ls", "tw1")]  # type: ignore[union-attr]
    warm = daemon.json("snapshot", "ls", "tw1", "--tier", "warm")
    assert hot == [fresh[:8]], hot  # only the new one stays hot
    assert len(warm) == 1 and "bot:tw1" in warm[0]["tags"], warm  # type: ignore[index, arg-type]
    status = {t["tier"]: t for t in json.loads(daemon.cli("storage", "status", "--json").stdout)}
    assert status["warm"]["snapshots"] == 1 and status["hot"]["snapshots"] == 1, status

    target = tmp_path / "from-warm"
    daemon.cli("snapshot", "restore", "tw1", warm[0]["id"], "--tier", "warm", "--to", str(target))  # type: ignore[index]
    assert (target / "data.bin").read_bytes() == b"ten days ago " * 4000
    # a tier the spec does not name: exit 2, a clear error, no traceback
    cold = daemon.cli("snapshot", "ls", "tw1", "--tier", "cold", check=False)
    assert cold.returncode == 2 and "there is no cold tier" in cold.stderr, cold
    assert "Traceback" not in cold.stderr
