"""The daemon's workspace disk-cap watcher: quiet under the cap, a verdict once over it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clawpen.daemon.watchers import Outcome, disk_cap


def test_quiet_under_the_cap_and_a_disk_verdict_over_it(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 300_000)

    async def watch(limit: int) -> object:
        try:
            return await asyncio.wait_for(disk_cap(str(tmp_path), limit, interval=0.02), 0.3)
        except TimeoutError:
            return None

    assert asyncio.run(watch(1 << 20)) is None  # 300 kB of a 1 MiB cap: no verdict
    (tmp_path / "sub").mkdir()
    for i in range(4):  # many files under the one-file limit add up past the cap
        (tmp_path / "sub" / f"f{i}").write_bytes(b"y" * 300_000)
    verdict = asyncio.run(watch(1 << 20))
    assert isinstance(verdict, tuple) and verdict[0] is Outcome.DISK
    assert "over its disk cap of 1 MiB" in verdict[1]
