"""The demo deployment's bots switched from the sandbox tier to the VM tier: the same spec with
`tier` (and the test's kernel) added keeps the same guarantees.

The demo bot reports what it may and may not do; run in both tiers under one daemon, each of its
verdicts (allowed/refused per action) must be the same, the refusals included (a positive
control in each tier: its workspace and /tmp are writable). The web bot, listening on its
guest's loopback, is health-checked and published on the host's loopback as in the sandbox tier.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonCli, wait_for
from test_container_demo import demo_spec, verdicts
from vm_env import guest_kernel

from conftest import daemon_at

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.vm, pytest.mark.slow]
BOOT = 120


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonCli]:
    with daemon_at(tmp_path / "state") as d:
        yield d


def test_the_demo_bots_keep_their_guarantees_in_the_vm_tier(daemon: DaemonCli) -> None:
    vm = f'tier = "vm"\nvm = {{ kernel = "{guest_kernel()}" }}\n'
    port = demo_spec(daemon, "vdemo", vm, health_extra=', start_period = "5s"')
    daemon.cli("up", "--wait-timeout", "240", timeout=300)
    for bot in ("demo", "vdemo"):
        assert wait_for(lambda b=bot: "open files limit" in daemon.cli("logs", b).stdout, BOOT), (
            bot,
            daemon.cli("logs", bot).stdout[-2000:],
        )
    sandbox = verdicts(daemon.cli("logs", "demo").stdout)
    in_vm = verdicts(daemon.cli("logs", "vdemo").stdout)
    assert len(sandbox) == 12 and sandbox == in_vm, (sandbox, in_vm)
    for action in ("read /etc/shadow", "list /root", "write /usr/bin/evil", "connect to 1.1.1.1"):
        assert in_vm[action] == "refused", action
    assert in_vm["create a user namespace"] == "refused"
    # the positive controls: the workspace and /tmp are writable in both tiers
    assert in_vm["append to /workspace/visits.log"] == "allowed" == in_vm["write /tmp/scratch"]
    assert (daemon.spec.parent / "ws-vdemo" / "visits.log").exists()
    # the web bot: healthy, and published on the host's loopback like a sandbox bot
    assert wait_for(lambda: daemon.ps().get("web", {}).get("health") == "healthy", BOOT), daemon.ps().get(
        "web"
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/bot.py", timeout=10) as reply:
        assert reply.status == 200 and b"demo bot" in reply.read()
    daemon.cli("down", timeout=120)
