"""The pure parts of shipping a workspace (clawpen.ha.sync): refusals before restic runs, the tree
digest of a handover, the times restic writes, the folder swap."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from clawpen.errors import ConfigError, HostError
from clawpen.ha import sync
from clawpen.ha.sync import Shipped, ShipRepo, age_seconds, tree_digest
from clawpen.snapshots.runner import snapshot_time


def _repo(tmp_path: Path, argv: list[list[str]], location: str | None = None) -> ShipRepo:
    return ShipRepo(
        location or str(tmp_path / "disk" / "repo"),
        cache=tmp_path / "cache",
        password=lambda: b"pw",
        argv_seen=argv,
    )


def test_restic_times_read_with_zone_and_nanoseconds() -> None:
    base = snapshot_time("2026-12-01T10:00:00Z", where="w")
    assert base == 1796119200.0
    assert snapshot_time("2026-12-01T10:00:00.123456789Z", where="w") == pytest.approx(base + 0.123456)
    assert snapshot_time("2026-12-01T11:00:00.5+01:00", where="w") == pytest.approx(base + 0.5)
    with pytest.raises(HostError) as err:
        snapshot_time("yesterday", where="ha.sync: /r")
    assert err.value.where == "ha.sync: /r"


def test_age_of_the_backups_copy() -> None:
    shipped = Shipped("id", 1000.0, "a", 3, "interval", None)
    assert age_seconds(shipped, 1061.5) == 61.5
    assert age_seconds(shipped, 990.0) == 0.0  # a clock behind the primary's: never negative
    assert age_seconds(None, 1000.0) is None


@pytest.mark.parametrize(
    ("kw", "error", "text"),
    [
        ({"reason": "nightly"}, ConfigError, "unknown shipping reason"),
        ({"bot": "Bad,Bot"}, ConfigError, "cannot tag a snapshot"),
        ({"host": "a b"}, ConfigError, "cannot tag a snapshot"),
        ({"term": -1}, ConfigError, "never negative"),
        ({"workspace": "missing"}, HostError, "is not a folder"),
    ],
)
def test_ship_refuses_bad_input_before_restic_runs(
    tmp_path: Path, kw: dict[str, object], error: type[Exception], text: str
) -> None:
    argv: list[list[str]] = []
    ws = tmp_path / "ws"
    ws.mkdir()
    args: dict[str, object] = {"bot": "trader", "host": "a", "term": 2, "reason": "interval"}
    args.update({k: v for k, v in kw.items() if k != "workspace"})
    target = tmp_path / str(kw["workspace"]) if "workspace" in kw else ws
    with pytest.raises(error, match=text) as err:
        _repo(tmp_path, argv).ship(target, **args)  # type: ignore[arg-type]
    assert isinstance(err.value, ConfigError | HostError) and err.value.where
    assert argv == [] and not (tmp_path / "disk").exists()


def test_prune_keeps_at_least_one(tmp_path: Path) -> None:
    argv: list[list[str]] = []
    with pytest.raises(ConfigError, match="at least 1") as err:
        _repo(tmp_path, argv).prune("trader", keep_last=0)
    assert err.value.hint and argv == []


def test_ensure_never_creates_a_missing_parent_and_never_takes_a_foreign_folder(tmp_path: Path) -> None:
    argv: list[list[str]] = []
    with pytest.raises(HostError, match="is missing") as err:
        _repo(tmp_path, argv).ensure()
    assert "mount" in (err.value.hint or "") and not (tmp_path / "disk").exists()
    foreign = tmp_path / "disk" / "repo"
    foreign.mkdir(parents=True)
    (foreign / "photos.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(HostError, match="not a restic repository"):
        _repo(tmp_path, argv).ensure()
    assert [p.name for p in foreign.iterdir()] == ["photos.jpg"] and argv == []
    (tmp_path / "disk" / "file").write_text("x")
    with pytest.raises(HostError, match="not a restic repository"):
        _repo(tmp_path, argv, str(tmp_path / "disk" / "file")).ensure()
    assert argv == []


def _tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"one")
    (root / "empty").touch()
    (root / "link").symlink_to("a/b/f")
    (root / "x").write_text("x")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "a" / "b" / "f").write_bytes(b"onE"),
        lambda r: (r / "a" / "b" / "f").chmod(0o600),
        lambda r: (r / "a").chmod(0o700),
        lambda r: ((r / "link").unlink(), (r / "link").symlink_to("x")),
        lambda r: (r / "a" / "new-empty").touch(),
        lambda r: (r / "a" / "new-dir").mkdir(),
        lambda r: (r / "x").unlink(),
        lambda r: (r / "x").rename(r / "y"),
        lambda r: (r / "empty").write_bytes(b"\0"),
    ],
)
def test_tree_digest_sees_every_change_a_restore_must_reproduce(tmp_path: Path, change: object) -> None:
    _tree(tmp_path)
    before = tree_digest(tmp_path)
    assert tree_digest(tmp_path) == before  # stable
    change(tmp_path)  # type: ignore[operator]
    assert tree_digest(tmp_path) != before


def test_tree_digest_ignores_times_and_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    before = tree_digest(tmp_path)
    os.utime(tmp_path / "x", (1, 1))
    os.utime(tmp_path / "a", (2, 2))
    monkeypatch.chdir(tmp_path / "a")  # a relative socket path: within the 108 bytes AF_UNIX allows
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("s")
        assert (tmp_path / "a" / "s").is_socket()
        assert tree_digest(tmp_path) == before  # restic skips sockets: so does the digest


def test_rename_exchange_swaps_two_folders(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "n").write_text("new")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "o").write_text("old")
    assert sync._rename_exchange(tmp_path / "new", tmp_path / "ws")
    assert [p.name for p in (tmp_path / "ws").iterdir()] == ["n"]
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["o"]
    with pytest.raises(FileNotFoundError):
        sync._rename_exchange(tmp_path / "new", tmp_path / "gone")
    assert (tmp_path / "new" / "o").exists()


def test_shipped_read_back_from_restics_listing(tmp_path: Path) -> None:
    repo = _repo(tmp_path, [])
    row = {
        "id": "f" * 64,
        "time": "2026-12-01T10:00:00.25Z",
        "hostname": "ignored",
        "tags": ["clawpen", "ha:trader", "host:b", "term:12", "reason:handover", "digest:abc"],
    }
    got = repo._shipped(row)
    assert got == Shipped("f" * 64, 1796119200.25, "b", 12, "handover", "abc", None, None)
    bare = repo._shipped({"id": "e" * 64, "time": "2026-12-01T10:00:00Z", "hostname": "h", "tags": ["ha:t"]})
    assert (bare.host, bare.term, bare.reason, bare.digest) == ("h", 0, "", None)
