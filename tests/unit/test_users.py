"""Bot uid allocation (clawpen.sandbox.users): one registry write for many new bots, host users
and subordinate ranges skipped, the registry re-read when another process changed it."""

from __future__ import annotations

import json
import pwd
from pathlib import Path
from typing import Any

import pytest

from clawpen.errors import SandboxError
from clawpen.sandbox import users

BASE = 1_500_000_000


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    seen: list[Path] = []
    real = users.write_atomic

    def counting(path: Path, data: bytes, mode: int = 0o644) -> None:
        seen.append(path)
        real(path, data, mode)

    monkeypatch.setattr(users, "write_atomic", counting)
    return seen


def test_allocate_gives_many_bots_distinct_uids_in_one_write(tmp_path: Path, writes: list[Path]) -> None:
    names = [f"b{i}" for i in range(300)]
    got = users.allocate(names, tmp_path, BASE)
    assert len(writes) == 1
    assert list(got) == names
    assert sorted(got.values()) == list(range(BASE, BASE + 300))
    assert json.loads((tmp_path / "users.json").read_text()) == got
    # read back: no further write, the same uid
    assert users.identity_for("b7", tmp_path, BASE).uid == got["b7"]
    assert users.allocate(names[:5], tmp_path, BASE) == {n: got[n] for n in names[:5]}
    assert len(writes) == 1


def test_known_bots_keep_their_uid_and_new_ones_take_free_ids(tmp_path: Path, writes: list[Path]) -> None:
    (tmp_path / "users.json").write_text(json.dumps({"old": BASE + 1}))
    got = users.allocate(["new1", "old", "new2"], tmp_path, BASE)
    assert got == {"new1": BASE, "old": BASE + 1, "new2": BASE + 2}
    assert len(writes) == 1


def test_host_users_and_subordinate_ranges_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = pwd.struct_passwd(("x", "x", BASE, BASE, "", "/", "/bin/false"))
    monkeypatch.setattr(users.pwd, "getpwall", lambda: [listed])
    hidden = {BASE + 1}  # an NSS source that does not enumerate: found only by uid

    def getpwuid(uid: int) -> Any:
        if uid in hidden or uid == BASE:
            return listed
        raise KeyError(uid)

    monkeypatch.setattr(users.pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(users, "_subordinate_ranges", lambda: [(BASE + 2, BASE + 5)])
    got = users.allocate(["a", "b"], tmp_path, BASE)
    assert got == {"a": BASE + 5, "b": BASE + 6}


def test_a_full_range_is_refused_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users, "RANGE", 3)
    with pytest.raises(SandboxError, match="no free uid"):
        users.allocate(["a", "b", "c", "d"], tmp_path, BASE)
    assert not (tmp_path / "users.json").exists()
    assert users.allocate(["a", "b", "c"], tmp_path, BASE) == {"a": BASE, "b": BASE + 1, "c": BASE + 2}


def test_a_registry_changed_by_another_process_is_read_again(tmp_path: Path) -> None:
    users.allocate(["a"], tmp_path, BASE)
    assert users.identity_for("a", tmp_path, BASE).uid == BASE
    registry = tmp_path / "users.json"
    # another process (a second daemon on the same state, `clawpen run`) rewrites it atomically
    tmp = tmp_path / "users.json.new"
    tmp.write_text(json.dumps({"a": BASE + 40}))
    tmp.replace(registry)
    assert users.identity_for("a", tmp_path, BASE).uid == BASE + 40


def test_a_base_out_of_bounds_is_refused(tmp_path: Path) -> None:
    from clawpen.errors import HostError

    with pytest.raises(HostError):
        users.allocate(["a"], tmp_path, 5)
    with pytest.raises(HostError):
        users.identity_for("a", tmp_path, 2**31)
