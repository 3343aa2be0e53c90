"""Scheduled snapshots (issue 15, item 3) on a daemon built in-process with an injected clock and
a real restic repository: due bots (running or stopped) are snapshotted, tagged `scheduled`;
nothing again before `every` has passed, also after a daemon restart (the due time comes from the
repository); `keep` forgets only scheduled snapshots; a failure is a `snapshot-failed` event;
changing the schedule restarts no bot."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from clawpen.daemon.app import build
from clawpen.daemon.release_diff import bot_policy
from clawpen.daemon.server import Daemon
from clawpen.daemon.snapshot_schedule import Scheduler, parse_time
from clawpen.daemon.store import policy_hash
from clawpen.errors import ConfigError
from clawpen.snapshots.restic import Repository
from clawpen.spec.loader import parse_spec_text
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

T0 = 1_790_000_000.0  # a fixed "now" (2026-09-21); restic records it (backup --time)
HOUR = 3600.0

SPEC = """
[bots.sa]
command = ["sh", "-c", "echo a > /workspace/a.txt; sleep 1000"]
workspace = "./wa"
workspace_adopt = true
snapshots = {{ every = "{every}", keep = {{ hourly = 2, daily = 0, weekly = 0, monthly = 0 }} }}

[bots.sb]
command = ["sleep", "1000"]
workspace = "./wb"
workspace_adopt = true
snapshots = {{ every = "1h" }}

[bots.sc]
command = ["sleep", "1000"]
workspace = "./wc"
workspace_adopt = true
"""


def run(tmp: Path, body: Callable[[Daemon, Path], Awaitable[None]], every: str = "1h") -> None:
    spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-ss-", dir="/tmp"))
    spec_dir.chmod(0o755)
    for ws in ("wa", "wb", "wc"):
        (spec_dir / ws).mkdir()
        (spec_dir / ws / "data.txt").write_text(f"{ws}\n")
    (spec_dir / "clawpen.toml").write_text(textwrap.dedent(SPEC.format(every=every)))

    async def main() -> None:
        daemon = build(tmp / "state", clock=lambda: T0)
        try:
            await daemon.dispatch("up", {"file": str(spec_dir / "clawpen.toml")}, "root")
            for _ in range(200):  # sa has started (its sandbox runs, it wrote its file)
                if (spec_dir / "wa" / "a.txt").exists() and all(i.sandbox for i in daemon.replicas("sa")):
                    break
                await asyncio.sleep(0.05)
            await body(daemon, spec_dir)
        finally:
            await daemon.shutdown()
            daemon.store.close()
            daemon.services.compressor.close(timeout=10)

    old = os.environ.get("CLAWPEN_UID_BASE")
    os.environ["CLAWPEN_UID_BASE"] = str(UID_BASE)
    try:
        asyncio.run(main())
    finally:
        if old is None:
            os.environ.pop("CLAWPEN_UID_BASE", None)
        else:
            os.environ["CLAWPEN_UID_BASE"] = old
        shutil.rmtree(spec_dir, ignore_errors=True)


def scheduled(repo: Repository, bot: str) -> list[float]:
    return [parse_time(s.time) for s in repo.snapshots(bot, tag="scheduled")]


def kinds(daemon: Daemon, kind: str) -> list[str]:
    return [e.reason for e in daemon.store.events(limit=200) if e.kind == kind]


def test_due_bots_are_snapshotted_once_per_interval_even_after_a_restart_and_keep_spares_manual_ones(
    tmp_path: Path,
) -> None:
    async def body(daemon: Daemon, spec_dir: Path) -> None:
        repo = Repository(daemon.services.state_dir)
        # sb is stopped: its workspace is snapshotted all the same
        await daemon.dispatch("stop", {"bots": ["sb"]}, "root")
        manual = await daemon.dispatch("snapshot_create", {"bot": "sa"}, "root")
        assert manual["frozen"]  # sa runs: the manual snapshot froze it
        sched = Scheduler(daemon, clock=lambda: T0)
        done = await sched.tick(T0)
        assert sorted(r["target"] for r in done) == ["sa", "sb"]  # sc has no schedule
        assert all(r["ok"] for r in done) and next(r for r in done if r["target"] == "sa")["frozen"]
        assert scheduled(repo, "sa") == [T0] and scheduled(repo, "sb") == [T0]
        assert scheduled(repo, "sc") == [] and repo.snapshots("sc") == []
        assert len(kinds(daemon, "snapshot")) == 2
        assert await sched.tick(T0 + 0.5 * HOUR) == []  # not due yet
        # a restarted daemon (a new scheduler, nothing in memory) reads the due time from restic
        again = Scheduler(daemon)
        assert await again.due(T0 + 0.9 * HOUR) == []
        assert await again.due(T0 + HOUR) == ["sa", "sb"]  # positive control: due after `every`
        for n in (1, 2, 3):
            assert [r["target"] for r in await again.tick(T0 + n * HOUR)] == ["sa", "sb"]
        # keep hourly = 2 for sa: two scheduled ones stay; the manual one is never touched
        assert scheduled(repo, "sa") == [T0 + 2 * HOUR, T0 + 3 * HOUR]
        assert [s.id for s in repo.snapshots("sa") if s.id.startswith(manual["snapshot"])]
        assert scheduled(repo, "sb") == [T0 + 3 * HOUR]  # daily = 7: the newest of the day stays
        assert len(kinds(daemon, "snapshot")) == 8
        # a failing restic (a wrong password here): a snapshot-failed event, nothing recorded
        broken = Scheduler(
            daemon, repo=lambda: Repository(daemon.services.state_dir, password=lambda: b"wrong")
        )
        failed = await broken.tick(T0 + 5 * HOUR)
        assert [r["ok"] for r in failed] == [False, False]
        reasons = kinds(daemon, "snapshot-failed")
        assert len(reasons) == 2 and "bot sa's workspace failed" in " ".join(reasons)
        assert "wrong password" in reasons[0] or "wrong password" in reasons[1]
        assert len(scheduled(repo, "sa")) == 2
        assert await broken.tick(T0 + 5.5 * HOUR) == []  # not retried at every tick
        assert len(kinds(daemon, "snapshot-failed")) == 2
        assert [r["ok"] for r in await broken.tick(T0 + 6 * HOUR)] == [False, False]  # after `every`

    run(tmp_path, body)


def test_changing_the_schedule_restarts_no_bot_and_is_read_from_the_applied_spec(tmp_path: Path) -> None:
    async def body(daemon: Daemon, spec_dir: Path) -> None:
        before = {n: list(daemon.replicas(n)) for n in ("sa", "sb", "sc")}
        sched = Scheduler(daemon)
        await sched.tick(T0)
        assert await sched.due(T0 + 2 * HOUR) == ["sa", "sb"]  # every = "1h"
        (spec_dir / "clawpen.toml").write_text(textwrap.dedent(SPEC.format(every="3h")))
        out = await daemon.dispatch("up", {"file": str(spec_dir / "clawpen.toml")}, "root")
        assert sorted(out["unchanged"]) == ["sa", "sb", "sc"], out
        for name, insts in before.items():  # the very same instances: nothing restarted
            assert daemon.replicas(name) == insts
        assert await Scheduler(daemon).due(T0 + 2 * HOUR) == ["sb"]  # sa now every 3h
        # positive control: a change of the command does restart sa
        text = SPEC.format(every="3h").replace("echo a >", "echo b >")
        (spec_dir / "clawpen.toml").write_text(textwrap.dedent(text))
        out = await daemon.dispatch("up", {"file": str(spec_dir / "clawpen.toml")}, "root")
        assert "sa" in out["recreate"] and daemon.replicas("sa") != before["sa"]

    run(tmp_path, body)


def test_the_schedule_is_in_no_policy_hash_and_bad_values_name_the_field(tmp_path: Path) -> None:
    bot = '[bots.x]\ncommand = ["true"]\n'
    plain = parse_spec_text(bot, tmp_path / "clawpen.toml")
    timed = parse_spec_text(bot + 'snapshots = { every = "6h" }\n', tmp_path / "clawpen.toml")
    assert timed.spec.bots["x"].snapshots is not None and timed.spec.bots["x"].snapshots.every == 6 * HOUR
    assert policy_hash(bot_policy(timed, "x")) == policy_hash(bot_policy(plain, "x"))
    other = parse_spec_text('[bots.x]\ncommand = ["false"]\n', tmp_path / "clawpen.toml")
    assert policy_hash(bot_policy(other, "x")) != policy_hash(bot_policy(plain, "x"))
    for extra, field in [
        ('snapshots = { every = "1m" }', "bots.x.snapshots.every"),
        ('snapshots = { every = "31d" }', "bots.x.snapshots.every"),
        ("snapshots = { keep = { daily = 10001 } }", "bots.x.snapshots.keep.daily"),
        (
            "snapshots = { keep = { hourly = 0, daily = 0, weekly = 0, monthly = 0 } }",
            "bots.x.snapshots.keep",
        ),
        ("snapshots = { keep = { yearly = 1 } }", "bots.x.snapshots.keep"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_spec_text(bot + extra + "\n", tmp_path / "clawpen.toml")
        assert field in str(err.value.where), (extra, err.value.where)
    with pytest.raises(ConfigError) as err:
        parse_spec_text('[snapshots]\nstate_every = "1s"\n' + bot, tmp_path / "clawpen.toml")
    assert "snapshots.state_every" in str(err.value.where)
    ok = parse_spec_text(
        '[snapshots]\nstate_every = "12h"\nstate_keep = { daily = 3 }\n' + bot, tmp_path / "c.toml"
    )
    assert ok.spec.snapshots.state_every == 12 * HOUR and ok.spec.snapshots.state_keep.daily == 3


def test_a_bot_with_a_snapshot_under_way_is_left_for_the_next_tick(tmp_path: Path) -> None:
    async def body(daemon: Daemon, spec_dir: Path) -> None:
        repo = Repository(daemon.services.state_dir)
        sched = Scheduler(daemon)
        async with daemon.snapshot_locks.hold("sa", "a snapshot of it is being taken"):  # say, a manual one
            done = await sched.tick(T0)
        assert [(r["target"], r.get("skipped")) for r in done] == [
            ("sa", "a snapshot of it is being taken"),
            ("sb", None),
        ]
        assert scheduled(repo, "sa") == [] and scheduled(repo, "sb") == [T0]
        assert await sched.due(T0 + 60) == ["sa"]  # still due
        done = await sched.tick(T0 + 60)  # positive control: once free, sa is taken
        assert [r["target"] for r in done] == ["sa"] and scheduled(repo, "sa") == [T0 + 60]

    run(tmp_path, body)
