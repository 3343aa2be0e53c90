"""Releases you can inspect and roll back (issue 15, items 1 and 2), without root: the per-bot
diff of two releases, the spec text diff, the schema migration that adds ``rollback_of``, and the
operations' refusals (an unknown release, no release before the latest, a spec folder that is gone)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from clawpen.daemon.release_diff import bot_diff, folder_of, policies, stored_spec, text_diff
from clawpen.daemon.server import Daemon
from clawpen.daemon.statedb import SCHEMA_VERSION
from clawpen.daemon.store import Store
from clawpen.errors import ConfigError, UsageError

FIXTURE_V1 = Path(__file__).parent.parent / "fixtures" / "state_v1.sql"
OLD = (
    '[bots.web]\ncommand = ["sleep", "300"]\n[bots.gone]\ncommand = ["true"]\n'
    '[bots.same]\ncommand = ["true"]\n'
)
NEW = (
    '[bots.web]\ncommand = ["sleep", "301"]\nenv = { A = "1" }\n[bots.same]\ncommand = ["true"]\n'
    '[bots.fresh]\ncommand = ["true"]\n'
)


def release(number: int, text: str, folder: Path) -> dict[str, Any]:
    return {"id": number, "spec_text": text, "spec_path": str(folder / "clawpen.toml")}


def test_bot_diff_names_added_removed_and_changed_fields(tmp_path: Path) -> None:
    old = policies(stored_spec(release(1, OLD, tmp_path)))
    new = policies(stored_spec(release(2, NEW, tmp_path)))
    found = {d.bot: d for d in bot_diff(old, new)}
    assert {b: d.change for b, d in found.items()} == {
        "fresh": "added",
        "gone": "removed",
        "same": "unchanged",
        "web": "changed",
    }
    assert found["web"].fields == ("command", "env.A")
    assert found["web"].why == "changed: command, env.A"  # up's own words for the same change
    assert found["same"].fields == () and found["gone"].fields == ()
    # the other way round: what a rollback from 2 to 1 would do
    back = {d.bot: d.change for d in bot_diff(new, old)}
    assert back == {"fresh": "removed", "gone": "added", "same": "unchanged", "web": "changed"}


def test_bot_diff_sees_a_moved_spec_folder_and_nothing_for_the_same_spec(tmp_path: Path) -> None:
    here = policies(stored_spec(release(1, OLD, tmp_path / "a")))
    there = policies(stored_spec(release(2, OLD, tmp_path / "b")))
    assert all(d.change == "unchanged" for d in bot_diff(here, here))
    moved = {d.bot: d.fields for d in bot_diff(here, there)}
    assert moved == dict.fromkeys(("gone", "same", "web"), ("the spec's folder",))


def test_text_diff_is_a_unified_diff_of_the_spec_texts(tmp_path: Path) -> None:
    text = text_diff(release(1, OLD, tmp_path), release(2, NEW, tmp_path))
    lines = text.splitlines()
    assert lines[0].startswith("--- release 1 (") and lines[1].startswith("+++ release 2 (")
    assert '-command = ["sleep", "300"]' in lines and '+command = ["sleep", "301"]' in lines
    assert "+[bots.fresh]" in lines and "-[bots.gone]" in lines
    assert text_diff(release(1, OLD, tmp_path), release(2, OLD, tmp_path)) == ""
    cut = text_diff(release(1, OLD, tmp_path), release(2, NEW, tmp_path), limit=3)
    assert cut.endswith("... (diff cut at 3 lines)\n") and len(cut.splitlines()) == 4


def test_folder_of_a_release_whose_folder_is_gone_is_a_clear_error(tmp_path: Path) -> None:
    assert folder_of(release(1, OLD, tmp_path)) == tmp_path
    with pytest.raises(ConfigError) as err:
        folder_of(release(3, OLD, tmp_path / "gone"))
    assert "release 3's spec folder" in str(err.value) and err.value.exit_code == 2
    assert err.value.where == str(tmp_path / "gone" / "clawpen.toml")


# ------------------------------------------------------------------------ schema version 2
def test_a_version_1_database_migrates_and_keeps_its_releases(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.db"
    db = sqlite3.connect(path)
    db.executescript(FIXTURE_V1.read_text())
    db.close()
    store = Store(path, records=tmp_path / "run")
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.recovered is None
        rows = store.releases()
        assert [(r["id"], r["summary"], r["rollback_of"]) for r in rows] == [
            (2, "recreate web", None),
            (1, "create web", None),
        ]
        first = store.release(1)
        assert first is not None and first["spec_text"] == '[bots.web]\ncommand = ["sleep", "300"]\n'
        assert store.bots()["web"].spec_hash == "feedfacefeedface"  # bots kept as written
        number = store.add_release("root", "/srv/bots/clawpen.toml", first["spec_text"], "x", rollback_of=1)
        again = store.release(number)
        assert again is not None and again["rollback_of"] == 1 and number == 3
        assert store.release(99) is None
    finally:
        store.close()


# ------------------------------------------------------------------------ the operations
@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    store = Store(tmp_path / "clawpen.db")
    d = Daemon(store, lambda _d: SimpleNamespace(state_dir=tmp_path, logs_dir=tmp_path / "logs"))  # type: ignore[arg-type,return-value]
    yield d
    store.close()


def call(daemon: Daemon, op: str, **args: Any) -> Any:
    return asyncio.run(daemon.dispatch(op, args, "root"))


def test_show_and_diff_read_the_stored_releases(daemon: Daemon, tmp_path: Path) -> None:
    spec = str(tmp_path / "clawpen.toml")
    daemon.store.add_release("alice", spec, OLD, "create gone, same, web")
    daemon.store.add_release("bob", spec, NEW, "create fresh; recreate web; remove gone")
    shown = call(daemon, "release_show", release=1)
    assert shown["who"] == "alice" and shown["spec_text"] == OLD and shown["rollback_of"] is None
    assert [b["bot"] for b in shown["bots"]] == ["gone", "same", "web"]
    assert all(len(b["policy_hash"]) == 16 and b["running"] is False for b in shown["bots"])
    diff = call(daemon, "release_diff", a=1)  # B defaults to the latest
    assert diff["a"] == 1 and diff["b"] == 2 and diff["problem"] is None
    web = next(b for b in diff["bots"] if b["bot"] == "web")
    assert web["change"] == "changed" and web["fields"] == ["command", "env.A"]
    assert '+command = ["sleep", "301"]' in diff["spec_diff"]


def test_a_stored_spec_this_clawpen_refuses_still_shows_its_text(daemon: Daemon, tmp_path: Path) -> None:
    daemon.store.add_release("root", str(tmp_path / "clawpen.toml"), "[bots.x]\nnope = 1\n", "old")
    shown = call(daemon, "release_show", release=1)
    assert shown["bots"] is None and "nope" in shown["problem"] and shown["spec_text"].startswith("[bots.x]")


def test_unknown_releases_and_no_previous_release_are_usage_errors(daemon: Daemon, tmp_path: Path) -> None:
    for op, args in (("release_show", {"release": 1}), ("rollback", {}), ("rollback", {"release": 5})):
        with pytest.raises(UsageError) as err:
            call(daemon, op, **args)
        assert err.value.exit_code == 2
    daemon.store.add_release("root", str(tmp_path / "clawpen.toml"), OLD, "create")
    with pytest.raises(UsageError, match="there is no release 7 \\(releases 1 to 1\\)"):
        call(daemon, "release_diff", a=1, b=7)
    with pytest.raises(UsageError, match="no release before the latest"):
        call(daemon, "rollback")
    with pytest.raises(UsageError, match="release: Input should be greater than or equal to 1"):
        call(daemon, "rollback", release=0)


def test_rollback_to_a_release_whose_folder_is_gone_changes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    daemon.store.add_release("root", str(tmp_path / "moved" / "clawpen.toml"), OLD, "create")
    daemon.store.add_release("root", str(tmp_path / "clawpen.toml"), NEW, "recreate")
    with pytest.raises(ConfigError, match="does not exist any more"):
        call(daemon, "rollback")  # the one before the latest: release 1
    assert [r["id"] for r in daemon.store.releases()] == [2, 1]
    assert daemon.store.bots() == {}
