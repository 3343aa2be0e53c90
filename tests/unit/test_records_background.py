"""The bots' JSON records written in the background (the daemon's Store): every change lands,
the newest content wins, a removal is not undone by an older write, a failing folder is
reported through the store's warning and recovers, and close() waits for the queue."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from clawpen.daemon import records as records_mod
from clawpen.daemon.records import Records
from clawpen.daemon.store import Instance, Store

POLICY = {"base_dir": "/srv/bots", "spec": {"command": ["sleep", "300"]}}


def _inst(bot: str, restarts: int) -> Instance:
    return Instance(bot, 0, "running", 11, 12, 13, f"{bot}.0", 1020.0, restarts, None, None, None, None)


def test_many_changes_land_and_the_newest_content_wins(tmp_path: Path) -> None:
    store = Store(tmp_path / "clawpen.db", records=tmp_path / "run", background_records=True)
    for i in range(200):
        store.put_bot(f"b{i:03d}", POLICY, "running", None)
        store.save_instance(_inst(f"b{i:03d}", 1))
    for i in range(200):
        store.save_instance(_inst(f"b{i:03d}", 7))
    store.remove_bot("b005")
    store.close()  # waits for the writer
    files = sorted((tmp_path / "run" / "bots").glob("*.json"))
    assert len(files) == 199 and not (tmp_path / "run" / "bots" / "b005.json").exists()
    for f in files:
        record = json.loads(f.read_text())
        assert record["instances"][0]["restarts"] == 7, f
    assert not list((tmp_path / "run" / "bots").glob(".*tmp"))
    bots, _release, problems = Records(tmp_path / "run").load()
    assert len(bots) == 199 and problems == []


def test_the_event_loop_does_not_wait_for_the_disk(tmp_path: Path, monkeypatch) -> None:
    """A write that blocks (a slow fsync) blocks the writer thread, not the caller."""
    gate = threading.Event()
    real = records_mod._replace

    def slow(path: Path, data: bytes) -> None:
        gate.wait(10)
        real(path, data)

    monkeypatch.setattr(records_mod, "_replace", slow)
    rec = Records(tmp_path / "run", background=True)
    rec.write_bot("a", {"policy": POLICY})  # returns at once although the write cannot finish
    assert not rec.flush(timeout=0.2)
    assert not (tmp_path / "run" / "bots" / "a.json").exists()
    gate.set()
    assert rec.flush(timeout=10)
    assert json.loads((tmp_path / "run" / "bots" / "a.json").read_text())["bot"] == "a"


def test_a_failing_folder_is_reported_once_and_recovers(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = Store(tmp_path / "clawpen.db", records=tmp_path / "run", background_records=True)
    store.warn = warnings.append
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "bots").write_text("in the way")  # the folder cannot be made
    store.put_bot("web", POLICY, "running", None)
    assert store.records is not None and store.records.flush(10)
    store.save_instance(_inst("web", 1))  # the writer's error comes back with the next change
    assert store.records.flush(10)
    store.save_instance(_inst("web", 2))
    assert len([w for w in warnings if "cannot be written" in w]) == 1, warnings
    (tmp_path / "run" / "bots").unlink()
    store.save_instance(_inst("web", 3))
    assert store.records.flush(10)
    store.save_instance(_inst("web", 4))
    store.close()
    assert any("writable again" in w for w in warnings), warnings
    record = json.loads((tmp_path / "run" / "bots" / "web.json").read_text())
    assert record["instances"][0]["restarts"] == 4
