"""Log ageing on real files with an injected clock: hot -> warm (gzipped) -> archived or deleted."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from clawpen.logs.ageing import age_logs
from clawpen.logs.store import compress_file, stamp_of

DAY = 86400.0
NOW = 2_000_000_000.0


def rotated(logs: Path, bot: str, days_old: float, body: bytes, *, gz: bool = False) -> Path:
    path = logs / f"{bot}.{stamp_of(NOW - days_old * DAY)}.log"
    path.write_bytes(body)
    if gz:
        out = compress_file(path)
        assert out is not None
        return out
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    logs, warm = tmp_path / "logs", tmp_path / "disk2" / "logs"
    logs.mkdir()
    (logs / "b1.log").write_bytes(b"current\n")
    return logs, warm


def test_old_rotated_logs_move_to_warm_gzipped_and_young_ones_stay(dirs: tuple[Path, Path]) -> None:
    logs, warm = dirs
    old = rotated(logs, "b1", 8, b"old plain\n")
    old_gz = rotated(logs, "b1", 9, b"old gz\n", gz=True)
    young = rotated(logs, "b1", 6, b"young\n")
    report = age_logs(logs, warm, NOW, hot_age=7 * DAY, warm_age=30 * DAY)
    assert not old.exists() and not old_gz.exists() and young.exists() and (logs / "b1.log").exists()
    assert sorted(p.name for p in warm.iterdir()) == sorted([old.name + ".gz", old_gz.name])
    assert gzip.decompress((warm / (old.name + ".gz")).read_bytes()) == b"old plain\n"
    assert gzip.decompress((warm / old_gz.name).read_bytes()) == b"old gz\n"
    assert len(report.moved) == 2 and report.errors == ()


def test_warm_logs_older_than_warm_age_are_archived_then_deleted(dirs: tuple[Path, Path]) -> None:
    logs, warm = dirs
    rotated(logs, "b1", 31, b"ancient\n")
    rotated(logs, "b1", 10, b"warm\n")
    taken: dict[str, bytes] = {}

    def archive(bot: str, files: list[Path]) -> None:
        for f in files:
            taken[f"{bot}/{f.name}"] = gzip.decompress(f.read_bytes())

    # one run: both move to warm, then the 31-day-old one is archived and deleted
    report = age_logs(logs, warm, NOW, hot_age=7 * DAY, warm_age=30 * DAY, archive=archive)
    assert list(taken.values()) == [b"ancient\n"]
    assert sorted(p.name for p in logs.iterdir()) == ["b1.log"]
    assert [p.name for p in warm.iterdir()] == [f"b1.{stamp_of(NOW - 10 * DAY)}.log.gz"]
    assert len(report.deleted) == 1


def test_a_failing_archive_deletes_nothing(dirs: tuple[Path, Path]) -> None:
    logs, warm = dirs
    rotated(logs, "b1", 40, b"keep me\n")

    def broken(bot: str, files: list[Path]) -> None:
        raise OSError("the cold repository is unreachable")

    report = age_logs(logs, warm, NOW, hot_age=7 * DAY, warm_age=30 * DAY, archive=broken)
    assert len(list(warm.iterdir())) == 1 and report.deleted == () and "unreachable" in report.errors[0]
    # positive control: no archive repository at all -> deleted
    report = age_logs(logs, warm, NOW, hot_age=7 * DAY, warm_age=30 * DAY)
    assert list(warm.iterdir()) == [] and len(report.deleted) == 1
