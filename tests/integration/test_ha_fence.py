"""The fence (clawpen.ha.fence), a real process guarding a real cgroup: a bot whose deadline is
not moved is killed, one whose deadline moves lives on, and a fence told to stop kills what it
guards (it fails closed)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from clawpen.ha.fence import now
from clawpen.ha.fenceclient import FenceClient
from clawpen.plan.model import CgroupLimits
from clawpen.sandbox import cgroups

pytestmark = [pytest.mark.root]


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A cgroup under clawpen's root holding a `sleep` (with a child of its own)."""
    host = cgroups.detect()
    name = f"test-fence-{os.getpid()}-{time.monotonic_ns() % 100000}"
    cg = host.create(name, CgroupLimits(pids_max=16))
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], preexec_fn=lambda: cg.add(os.getpid()))
    time.sleep(0.2)
    assert len(cg.pids()) >= 2
    try:
        yield name, proc
    finally:
        cg.kill()
        proc.wait()
        cg.remove()


def _fence_pids(sock: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"clawpen.ha.fence {sock}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FenceClient]:
    sock = tmp_path / "run" / "fence.sock"
    fc = FenceClient(sock, tmp_path / "fence.log")
    try:
        yield fc
    finally:
        for pid in _fence_pids(sock):
            os.kill(pid, signal.SIGKILL)


def test_an_unrenewed_deadline_kills_the_bot_and_a_renewed_one_does_not(
    guarded: tuple[str, subprocess.Popen[bytes]], client: FenceClient
) -> None:
    name, proc = guarded
    members = cgroups.detect().attach(name)

    async def scenario() -> dict[str, object]:
        try:
            # deadlines 2 s ahead, renewed every 0.5 s: a loaded CI host's scheduling never fires it
            await client.checked(
                {"op": "arm", "bot": "b", "cgroup": name, "deadline": now() + 2.0, "lease": 7, "token": 42}
            )
            for _ in range(4):  # positive control: moved forward, the deadline never comes
                await asyncio.sleep(0.5)
                await client.checked({"op": "extend", "bot": "b", "deadline": now() + 2.0})
            assert proc.poll() is None and len(members.pids()) >= 2
            stopped_at = now()  # the renewals stop: like a daemon that is SIGSTOPped
            await asyncio.sleep(2.6)
            listed = await client.checked({"op": "list"})
            guard = listed["guards"][0]  # type: ignore[index]
            assert guard["fired"] and guard["token"] == 42, guard
            assert guard["fired_at"] - stopped_at < 4.0, guard  # at the deadline (2 s; a loaded tick)
            refused = await client.request({"op": "extend", "bot": "b", "deadline": now() + 10})
            assert not refused["ok"] and "already killed" in str(refused["error"])
            return guard
        finally:
            await client.close()

    asyncio.run(scenario())
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert members.pids() == []
    assert "killed bot b (term 42)" in (client.log_path.read_text())


def test_the_fence_outlives_its_daemon_and_a_new_one_finds_its_guards(
    guarded: tuple[str, subprocess.Popen[bytes]], client: FenceClient
) -> None:
    name, proc = guarded

    async def first() -> None:
        await client.checked(
            {"op": "arm", "bot": "b", "cgroup": name, "deadline": now() + 30, "lease": 9, "token": 5}
        )
        await client.close()  # the daemon is gone (its connection closed)

    asyncio.run(first())
    again = FenceClient(client.socket_path, client.log_path)

    async def second() -> dict[str, object]:
        reply = await again.checked({"op": "list"})
        await again.close()
        return reply

    listed = second_reply = asyncio.run(second())
    assert [(g["bot"], g["lease"], g["token"], g["fired"]) for g in listed["guards"]] == [("b", 9, 5, False)]  # type: ignore[index, union-attr]
    assert len(_fence_pids(client.socket_path)) == 1  # the same fence, not a second one
    assert proc.poll() is None and second_reply


def test_a_fence_told_to_stop_kills_what_it_guards(
    guarded: tuple[str, subprocess.Popen[bytes]], client: FenceClient
) -> None:
    name, proc = guarded

    async def arm() -> None:
        await client.checked(
            {"op": "arm", "bot": "b", "cgroup": name, "deadline": now() + 60, "lease": 1, "token": 1}
        )
        await client.close()

    asyncio.run(arm())
    (pid,) = _fence_pids(client.socket_path)
    os.kill(pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGKILL  # long before its deadline
    assert wait_for(lambda: not client.socket_path.exists(), 10)  # the fence kills, then leaves
