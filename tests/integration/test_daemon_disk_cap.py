"""A supervised bot's workspace total is held to its disk cap, as `clawpen run` holds it:
RLIMIT_FSIZE stops one big file, the watcher stops many small ones adding up past the cap."""

from __future__ import annotations

import pytest
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

SPEC = """
    [bots.dc-filler]
    command = [
        "sh", "-c", "for i in 1 2 3 4 5 6; do head -c 1000000 /dev/zero >/workspace/f$i; done; sleep 99",
    ]
    workspace = "{ws}"
    resources = {{ disk = "4M" }}
    restart = {{ policy = "no" }}
"""


def test_many_small_files_past_the_cap_stop_the_bot(daemon: DaemonCli) -> None:
    ws = daemon.spec.parent / "ws"
    daemon.write(SPEC.format(ws=ws))
    daemon.cli("up", "--detach")
    assert wait_for(lambda: daemon.ps()["dc-filler"]["state"] in ("failed", "exited", "stopped"), 20)
    reasons = [e["reason"] for e in daemon.events("dc-filler")]
    assert any("over its disk cap of 4 MiB" in r for r in reasons), reasons
    # positive control: each file alone was allowed (under the 4 MiB one-file limit)
    assert sum(p.stat().st_size for p in ws.iterdir()) > 4_000_000
