"""Snapshot ageing on real restic repositories: hot and warm on two local "disks" (temporary
folders); ``backup --time`` makes snapshots look old."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path

import pytest

from clawpen.errors import HostError
from clawpen.snapshots.tierrepo import TierRepo
from clawpen.snapshots.tiers import plan_ageing, run_ageing, tier_repos
from clawpen.spec.storage import StorageSettings

PASSWORD = b"tier-test-password-7f3a"
DAY = 86400.0


def _repos(
    tmp_path: Path, argv: list[list[str]], *, mounted: bool = True
) -> tuple[dict[str, TierRepo], StorageSettings]:
    storage = StorageSettings.model_validate(
        {"warm": {"repository": str(tmp_path / "disk2" / "warm")}},
        context={"state_dir": str(tmp_path / "state")},
    )
    repos = tier_repos(
        tmp_path / "state", storage, password=lambda: PASSWORD, secret=lambda n: b"", argv_seen=argv
    )
    repos["hot"].run(["init"], "init")
    if mounted:
        (tmp_path / "disk2").mkdir()
    return repos, storage


def _backup(repo: TierRepo, workspace: Path, days_old: float, now: float) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - days_old * DAY))
    repo.run(
        [
            "backup",
            "--tag",
            "clawpen",
            "--tag",
            "bot:b1",
            "--host",
            "clawpen",
            "--time",
            when,
            str(workspace),
        ],
        "backup",
    )


def test_ageing_moves_exactly_the_old_ones_and_warm_restores_byte_identical(tmp_path: Path) -> None:
    argv: list[list[str]] = []
    repos, storage = _repos(tmp_path, argv)
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    contents = {}
    for days in (20, 10, 3):
        (ws / "data.bin").write_bytes(f"state at -{days}d ".encode() * 5000)
        contents[days] = hashlib.sha256((ws / "data.bin").read_bytes()).hexdigest()
        _backup(repos["hot"], ws, days, now)
    hot_before = repos["hot"].snapshots()
    report = run_ageing(repos, storage, now)
    assert report.created == ["warm"]
    hot_after = repos["hot"].snapshots()
    warm = repos["warm"].snapshots()
    assert [s.id for s in hot_after] == [hot_before[2].id]  # only the 3-day-old one stays hot
    assert sorted(s.key for s in warm) == sorted(s.id for s in hot_before[:2])
    # a restore from warm is byte-identical to what was backed up 20 days "ago"
    oldest = min(warm, key=lambda s: s.time)
    target = tmp_path / "restored"
    repos["warm"].run(["restore", oldest.id, "--target", str(target)], "restore")
    got = hashlib.sha256((target / str(ws).lstrip("/") / "data.bin").read_bytes()).hexdigest()
    assert got == contents[20]
    # a second run has nothing to do; 31 days later warm forgets the 20-day one (no cold tier)
    assert run_ageing(repos, storage, now).copied == []
    later = run_ageing(repos, storage, now + 11 * DAY)
    assert [a.id for a in later.forgotten if a.source == "warm"] == [oldest.id]
    # the password was never in an argv
    assert argv and all(PASSWORD.decode() not in " ".join(a) for a in argv)
    assert any("--from-password-file" in a for a in argv)


def test_an_interrupted_copy_is_finished_next_run_and_nothing_is_lost(tmp_path: Path) -> None:
    argv: list[list[str]] = []
    repos, storage = _repos(tmp_path, argv)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("old data\n")
    now = time.time()
    _backup(repos["hot"], ws, 9, now)
    _backup(repos["hot"], ws, 8, now)
    old = repos["hot"].snapshots()
    # interrupted: one copy reached warm, then the run died before forgetting anything
    repos["warm"].ensure_from(repos["hot"])
    repos["warm"].copy_from(repos["hot"], [old[0].id])
    plan = plan_ageing({n: r.snapshots() for n, r in repos.items()}, now, storage)
    assert sorted((a.kind, a.id) for a in plan) == sorted([("forget", old[0].id), ("copy", old[1].id)])
    run_ageing(repos, storage, now)
    assert repos["hot"].snapshots() == []
    assert sorted(s.key for s in repos["warm"].snapshots()) == sorted(s.id for s in old)  # one copy each


def test_an_unreachable_warm_tier_forgets_nothing(tmp_path: Path) -> None:
    argv: list[list[str]] = []
    repos, storage = _repos(tmp_path, argv, mounted=False)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("x\n")
    now = time.time()
    _backup(repos["hot"], ws, 9, now)
    # the warm disk is not mounted: its folder is missing
    with pytest.raises(HostError):
        run_ageing(repos, storage, now)
    assert len(repos["hot"].snapshots()) == 1
    # positive control: once the disk is back, the snapshot moves
    (tmp_path / "disk2").mkdir()
    run_ageing(repos, storage, now)
    assert repos["hot"].snapshots() == [] and len(repos["warm"].snapshots()) == 1


def test_age_now_archives_old_warm_logs_into_the_repository_and_leaves_them_out_of_ageing(
    tmp_path: Path,
) -> None:
    from clawpen.daemon.ops_storage import age_now
    from clawpen.logs.store import stamp_of

    argv: list[list[str]] = []
    repos, _ = _repos(tmp_path, argv)
    storage = StorageSettings.model_validate(
        {
            "warm": {"repository": str(tmp_path / "disk2" / "warm")},
            "logs_warm": str(tmp_path / "disk2" / "logs"),
        },
        context={"state_dir": str(tmp_path / "state")},
    )
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    now = time.time()
    ancient = logs / f"b1.{stamp_of(now - 40 * DAY)}.log"
    ancient.write_bytes(b"forty days ago\n")
    recent = logs / f"b1.{stamp_of(now - 10 * DAY)}.log"
    recent.write_bytes(b"ten days ago\n")
    report = age_now(tmp_path / "state", logs, storage, now, repos=repos)
    assert report["errors"] == [] and report["logs_moved"] == 2 and report["logs_archived"] == 1
    assert sorted(p.name for p in (tmp_path / "disk2" / "logs").iterdir()) == [recent.name + ".gz"]
    listed = repos["warm"].run(["snapshots", "--json", "--tag", "logs"], "snapshots")
    assert "bot:b1" in listed
    assert repos["warm"].snapshots() == []  # a log archive is not a snapshot that ages away
    out = tmp_path / "out"
    repos["warm"].run(["restore", "latest", "--tag", "logs", "--target", str(out)], "restore")
    archived = out / str(tmp_path / "disk2" / "logs").lstrip("/") / (ancient.name + ".gz")
    assert gzip.decompress(archived.read_bytes()) == b"forty days ago\n"
    assert all(PASSWORD.decode() not in " ".join(a) for a in argv)


def test_cold_keeps_what_its_keep_says_per_series_and_never_the_log_archives(tmp_path: Path) -> None:
    storage = StorageSettings.model_validate(
        {
            "warm": {"repository": str(tmp_path / "disk2" / "warm")},
            "cold": {
                "repository": str(tmp_path / "disk3" / "cold"),
                "keep": {"daily": 2, "weekly": 0, "monthly": 0},
            },
        },
        context={"state_dir": str(tmp_path / "state")},
    )
    repos = tier_repos(tmp_path / "state", storage, password=lambda: PASSWORD, secret=lambda n: b"")
    repos["hot"].run(["init"], "init")
    (tmp_path / "disk2").mkdir()
    (tmp_path / "disk3").mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    for days in (70, 60, 50, 40):  # all older than warm.age: they end in cold
        (ws / "data.bin").write_bytes(f"at -{days}d ".encode() * 100)
        _backup(repos["hot"], ws, days, now)
    report = run_ageing(repos, storage, now)
    cold = repos["cold"].snapshots()
    # the two newest days stay (restic's daily keep), the two oldest were forgotten in cold
    assert len(cold) == 2, cold
    assert sorted(round((now - s.time) / DAY) for s in cold) == [40, 50]
    assert len([a for a in report.forgotten if a.source == "cold"]) == 2
    # a log archive in cold (tags logs, bot:b1; not clawpen) is never a snapshot series to trim
    log = tmp_path / "b1.log.gz"
    log.write_bytes(gzip.compress(b"old log\n"))
    repos["cold"].run(["backup", "--tag", "logs", "--tag", "bot:b1", "--host", "clawpen", str(log)], "backup")
    run_ageing(repos, storage, now)
    tags = [r["tags"] for r in json.loads(repos["cold"].run(["snapshots", "--json"], "ls"))]
    assert ["logs", "bot:b1"] in tags or ["bot:b1", "logs"] in tags, tags
    assert len(repos["cold"].snapshots()) == 2  # clawpen's own: still the two


def test_keep_on_warm_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"warm\.keep is not used"):
        StorageSettings.model_validate(
            {"warm": {"repository": str(tmp_path / "w"), "keep": {"daily": 1}}},
            context={"state_dir": str(tmp_path / "state")},
        )
