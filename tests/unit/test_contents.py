"""What a release's bots ran: content hashes of code folders, build output retention, state v3."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from clawpen.daemon.build_steps import _prune
from clawpen.daemon.contents import (
    code_folders,
    content_changes,
    folder_record,
    rollback_warnings,
    tree_hash,
)
from clawpen.daemon.release_diff import with_contents
from clawpen.daemon.statedb import SCHEMA_VERSION
from clawpen.daemon.store import Store, policy_hash
from clawpen.spec.loader import parse_spec_text

FIXTURE_V2 = Path(__file__).parent.parent / "fixtures" / "state_v2.sql"


def _tree(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / "app.js").write_text("console.log(1)\n")
    (root / "lib" / "a.txt").write_bytes(b"\x00\x01data")
    os.symlink("lib/a.txt", root / "link")
    return root


def test_tree_hash_is_stable_and_sees_content_mode_and_links(tmp_path: Path) -> None:
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    os.utime(b / "app.js", (1, 1))  # times are not content
    assert tree_hash(a) == tree_hash(b)
    (b / "app.js").write_text("console.log(2)\n")  # same size, other bytes
    assert tree_hash(a) != tree_hash(b)
    (b / "app.js").write_text("console.log(1)\n")
    assert tree_hash(a) == tree_hash(b)
    (b / "app.js").chmod(0o755)
    assert tree_hash(a) != tree_hash(b)
    (b / "app.js").chmod((a / "app.js").stat().st_mode & 0o777)
    (b / "link").unlink()
    os.symlink("lib/other", b / "link")  # a link's target counts, never followed
    assert tree_hash(a) != tree_hash(b)
    (b / "link").unlink()
    os.symlink("lib/a.txt", b / "link")
    (b / "lib" / "new").write_text("")  # an added empty file counts
    assert tree_hash(a) != tree_hash(b)
    # the metadata of a build output is left out of its hash
    (b / "lib" / "new").unlink()
    (b / ".clawpen-build").write_text("{}")
    assert tree_hash(a) == tree_hash(b, skip=(".clawpen-build",)) != tree_hash(b)


def test_missing_folder_is_recorded_not_raised(tmp_path: Path) -> None:
    gone = folder_record("./gone", "/app", str(tmp_path / "gone"))
    assert gone == {"source": "./gone", "target": "/app", "hash": None, "state": "missing"}
    there = folder_record("./a", "/app", str(_tree(tmp_path / "a")))
    assert there["state"] == "ok" and there["hash"] == tree_hash(tmp_path / "a")


def test_code_folders_are_ro_mounts_from_the_spec_folder_only(tmp_path: Path) -> None:
    (tmp_path / "openclaw").mkdir()
    (tmp_path / "ws").mkdir()
    text = (
        '[bots.c]\ncommand = ["true"]\nworkspace = "./ws"\n'
        'filesystem = { ro = ["./openclaw:/app", "/usr/share/zoneinfo"] }\n'
    )
    loaded = parse_spec_text(text, tmp_path / "clawpen.toml")
    found = code_folders(loaded.spec.bots["c"], str(loaded.base_dir))
    assert found == [("./openclaw", "/app", str(tmp_path / "openclaw"))]  # not the workspace, not /usr


def test_diff_names_a_content_change_of_an_unchanged_bot() -> None:
    def rec(h: str, out: str) -> dict[str, object]:
        folder = {"source": "./openclaw", "target": "/app", "hash": h, "state": "ok"}
        return {"folders": [folder], "build": {"key": "k1", "output_hash": out}}

    assert content_changes(rec("h1", "o1"), rec("h1", "o1")) == []
    assert content_changes(None, rec("h1", "o1")) == []  # a release of an older clawpen: nothing known
    rows = [{"bot": "c", "change": "unchanged", "fields": [], "why": "unchanged"}]
    with_contents(rows, {"c": rec("h1", "o1")}, {"c": rec("h2", "o2")})
    assert rows[0]["change"] == "changed"
    assert rows[0]["fields"] == ["content of ./openclaw changed", "build output changed"]
    warnings = rollback_warnings(4, {"c": rec("h1", "o1")}, {"c": rec("h2", "o2")})
    assert len(warnings) == 2 and "./openclaw differs from release 4" in warnings[0]
    assert "build output was rebuilt and differs" in warnings[1]
    assert rollback_warnings(4, {"c": rec("h1", "o1")}, {"c": rec("h1", "o1")}) == []


def test_prune_keeps_the_most_recently_used_and_never_the_running_one(tmp_path: Path) -> None:
    for i, name in enumerate(["old", "mid", "new"]):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.log").write_text("")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    (tmp_path / "cache").mkdir()
    os.utime(tmp_path / "old", (2000, 2000))  # used again (a rollback brought it back)
    _prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cache", "new", "old"]
    assert not (tmp_path / "mid.log").exists()
    _prune(tmp_path, 1, {"new"})  # keep 1, but "new" is what the bot runs
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cache", "new", "old"]
    _prune(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cache", "old"]


def test_a_version_2_database_migrates_releases_without_contents(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.db"
    db = sqlite3.connect(path)
    db.executescript(FIXTURE_V2.read_text())
    db.close()
    store = Store(path, records=tmp_path / "run")
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.recovered is None
        rows = store.releases()
        assert [(r["id"], r["rollback_of"]) for r in rows] == [(3, 1), (2, None), (1, None)]
        assert store.release_bots(3) == {}  # old releases simply have no contents
        row = store.bots()["web"]
        # the stored policy, with a build's new `keep`, hashes as before: an upgrade restarts nothing
        with_keep = json.loads(json.dumps(row.policy))
        with_keep["spec"]["build"]["keep"] = 3
        assert policy_hash(row.policy) == row.spec_hash == policy_hash(with_keep)
        number = store.add_release("root", "/srv/bots/clawpen.toml", "x", "y")
        contents = {"folders": [], "build": {"key": "k", "output_hash": "o"}}
        store.add_release_bots(number, {"web": ("abc", contents)})
        assert store.release_bots(number) == {"web": contents}
    finally:
        store.close()
