"""favordynmods (clawpen.sandbox.favor): when the daemon mounts its own hierarchy, and when not."""

from __future__ import annotations

from pathlib import Path

from clawpen.sandbox.favor import favor_dynmods

V1 = "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n"


def files(tmp_path: Path, features: str, mounts: str) -> dict[str, Path]:
    (tmp_path / "features").write_text(features)
    (tmp_path / "mounts").write_text(mounts)
    return {"features": tmp_path / "features", "mounts": tmp_path / "mounts", "point": tmp_path / "mnt"}


def test_nothing_is_mounted_when_the_kernel_lacks_it_or_it_is_on_or_off(tmp_path: Path) -> None:
    on = {"environ": {}}
    assert "no such option" in favor_dynmods(1, **files(tmp_path, "nsdelegate\n", V1), **on)  # type: ignore[arg-type]
    already = V1 + "cgroup /x cgroup rw,none,name=other,favordynmods 0 0\n"
    assert "already on" in favor_dynmods(1, **files(tmp_path, "favordynmods\n", already), **on)  # type: ignore[arg-type]
    off = favor_dynmods(1, **files(tmp_path, "favordynmods\n", V1), environ={"CLAWPEN_FAVORDYNMODS": "0"})  # type: ignore[arg-type]
    assert "off (CLAWPEN_FAVORDYNMODS=0)" in off
    v2 = favor_dynmods(
        2, **files(tmp_path, "favordynmods\n", "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"), **on
    )  # type: ignore[arg-type]
    assert "the host's own hierarchy" in v2 and "remount,favordynmods" in v2
    assert not (tmp_path / "mnt").exists()  # none of these made a mount point


def test_an_unreadable_features_file_is_a_note_not_an_error(tmp_path: Path) -> None:
    got = favor_dynmods(1, features=tmp_path / "missing", mounts=tmp_path / "missing", environ={})
    assert got.startswith("favordynmods: unavailable")
