"""Schedules, periodic restarts, memory pressure and replicas, on a daemon built in-process with
an injected clock (the wiring function takes it), real sandboxes underneath."""

from __future__ import annotations

import asyncio
import os
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clawpen.daemon.app import build
from clawpen.daemon.server import Daemon
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

MONDAY = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday


def clock_at(hh: int, mm: int, ss: int) -> Callable[[], float]:
    """A clock that reads Monday hh:mm:ss UTC now and runs at real speed."""
    start, wall = time.time(), MONDAY.replace(hour=hh, minute=mm, second=ss).timestamp()
    return lambda: wall + (time.time() - start)


def run_daemon(
    tmp: Path, spec: str, clock: Callable[[], float], body: Callable[[Daemon], Awaitable[None]]
) -> None:
    spec_dir = Path(tempfile.mkdtemp(prefix="clawpen-p-", dir="/tmp"))
    spec_dir.chmod(0o755)
    (spec_dir / "clawpen.toml").write_text(textwrap.dedent(spec))

    async def main() -> None:
        daemon = build(tmp / "state", clock=clock)
        try:
            await daemon.dispatch("up", {"file": str(spec_dir / "clawpen.toml")}, "root")
            await body(daemon)
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


async def until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def states(daemon: Daemon, bot: str) -> list[str]:
    return [e.to_state for e in daemon.store.events(bot=bot) if e.to_state]


def test_bot_starts_when_its_window_opens(tmp_path: Path) -> None:
    spec = """
        [bots.office]
        command = ["sleep", "300"]
        schedule = { active = "Mon 08:00-09:00", timezone = "UTC" }
    """

    async def body(daemon: Daemon) -> None:
        inst = daemon.instances["office"][0]
        assert await until(lambda: inst.machine.state == "scheduled_off", 5)
        assert inst.sandbox is None  # 07:59:58: no process
        assert await until(lambda: inst.machine.state == "running", 8)  # 08:00:00
        assert inst.sandbox is not None

    run_daemon(tmp_path, spec, clock_at(7, 59, 58), body)


def test_bot_stops_when_its_window_closes(tmp_path: Path) -> None:
    spec = """
        [bots.office]
        command = ["sleep", "300"]
        schedule = { active = "Mon 08:00-08:01", timezone = "UTC" }
    """

    async def body(daemon: Daemon) -> None:
        inst = daemon.instances["office"][0]
        assert await until(lambda: inst.machine.state == "running", 5)
        pid = inst.sandbox.pid if inst.sandbox else None
        assert await until(lambda: inst.machine.state == "scheduled_off", 8)  # 08:01:00
        assert pid is not None and not Path(f"/proc/{pid}").exists()
        assert states(daemon, "office")[-3:] == ["running", "stopping", "scheduled_off"]

    run_daemon(tmp_path, spec, clock_at(8, 0, 58), body)


def test_cron_restart(tmp_path: Path) -> None:
    spec = """
        [bots.nightly]
        command = ["sleep", "300"]
        schedule = { restart = "1 8 * * *", timezone = "UTC" }
    """

    async def body(daemon: Daemon) -> None:
        inst = daemon.instances["nightly"][0]
        assert await until(lambda: inst.machine.state == "running", 5)
        first = inst.sandbox.pid if inst.sandbox else None
        assert await until(lambda: inst.sandbox is not None and inst.sandbox.pid != first, 8)
        assert any("scheduled restart" in e.reason for e in daemon.store.events(bot="nightly"))

    run_daemon(tmp_path, spec, clock_at(8, 0, 58), body)


def test_memory_pressure_restarts_the_bot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On cgroup v1 the watcher sleeps until the kernel says the use crossed the level (it never
    polls); on v2 it polls."""
    from clawpen.daemon import watchers
    from clawpen.sandbox.cgroups import detect

    polled: list[str] = []
    real = watchers._memory_polled

    async def polling(inst: watchers.Watched, *args: object) -> watchers.Verdict:
        polled.append(inst.name)
        return await real(inst, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(watchers, "_memory_polled", polling)
    hog = "b = bytearray(40 << 20)\\nimport time\\ntime.sleep(300)"
    spec = f"""
        [bots.leaky]
        command = ["python3", "-c", "{hog}"]
        resources = {{ memory = "64M" }}
        memory_pressure = {{ share = 0.5, for = "1s" }}
    """

    async def body(daemon: Daemon) -> None:
        inst = daemon.instances["leaky"][0]
        assert await until(lambda: inst.machine.state == "running", 5)
        assert await until(lambda: any("memory at" in e.reason for e in daemon.store.events(bot="leaky")), 15)
        assert await until(lambda: inst.machine.state == "running" and inst.restarts >= 1, 10)

    run_daemon(tmp_path, spec, time.time, body)
    assert (polled == []) if detect().version == 1 else ("leaky" in polled)


def test_memory_below_the_share_is_left_alone(tmp_path: Path) -> None:
    spec = """
        [bots.calm]
        command = ["sleep", "300"]
        resources = { memory = "64M" }
        memory_pressure = { share = 0.5, for = "1s" }
    """

    async def body(daemon: Daemon) -> None:
        inst = daemon.instances["calm"][0]
        assert await until(lambda: inst.machine.state == "running", 5)
        await asyncio.sleep(3)
        assert inst.restarts == 0 and inst.machine.state == "running"

    run_daemon(tmp_path, spec, time.time, body)


def test_replicas_run_with_their_index(tmp_path: Path) -> None:
    spec = """
        [bots.worker]
        command = ["sh", "-c", "echo replica=$CLAWPEN_REPLICA; sleep 300"]
        replicas = 3
    """

    async def body(daemon: Daemon) -> None:
        insts = daemon.instances["worker"]
        assert len(insts) == 3
        assert await until(lambda: all(i.machine.state == "running" for i in insts), 10)
        assert len({i.sandbox.pid for i in insts if i.sandbox}) == 3
        logs = daemon.services.logs_dir

        def seen() -> bool:
            text = "".join(p.read_text() for p in logs.glob("worker*.log"))
            return all(f"replica={i}" in text for i in range(3))

        assert await until(seen, 5)

    run_daemon(tmp_path, spec, time.time, body)
