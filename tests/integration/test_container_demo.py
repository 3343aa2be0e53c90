"""The demo deployment's bots switched from the sandbox tier to the container tier: the same
spec with `tier` and `image` changed keeps the same guarantees.

The demo bot reports what it may and may not do; run in both tiers under one daemon, each of its
verdicts (allowed/refused per action) must be the same, the refusals included (a positive
control in each tier: its workspace and /tmp are writable). The web bot is health-checked and
published on the host's loopback as in the sandbox tier.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import free_port
from container_env import BASE_IMAGE, container_daemon
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.netns]
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
VERDICT = re.compile(r"^\s*(allowed|refused)\s+([^:]+?)(?::|$)")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonCli]:
    with container_daemon(tmp_path / "state") as d:
        yield d


def verdicts(logs: str) -> dict[str, str]:
    found = {}
    for line in logs.splitlines():
        text = line.split(" out ", 1)[-1]
        match = VERDICT.match(text)
        if match:
            found[match.group(2).strip()] = match.group(1)
    return found


def demo_spec(daemon: DaemonCli, name: str, tier_lines: str, *, health_extra: str = "") -> int:
    """Write the demo's bots twice, in the sandbox tier (``demo``) and in another (``name``, with
    ``tier_lines``), and its web bot in that tier published on a free host port (returned)."""
    for folder in ("bot", "fetcher"):
        shutil.copytree(DEMO / folder, daemon.spec.parent / folder)
    port = free_port()
    demo = (
        'command = ["python3", "/app/bot.py"]\nresources = { cpus = 0.5, memory = "128M", pids = 64, '
        'nofile = 256 }\nfilesystem = { ro = ["./bot:/app"] }\nrestart = { policy = "no" }\n'
    )
    daemon.write(
        f"[bots.demo]\nworkspace = './ws-sandbox'\n{demo}\n"
        f"[bots.{name}]\nworkspace = './ws-{name}'\n{tier_lines}{demo}\n"
        f"[bots.web]\n{tier_lines}"
        'command = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/app"]\n'
        'resources = { cpus = 0.5, memory = "96M", pids = 32 }\nfilesystem = { ro = ["./bot:/app"] }\n'
        'health = { http = "http://127.0.0.1:8000/", interval = "2s", timeout = "2s", retries = 3'
        f"{health_extra} }}\n"
        'restart = { policy = "always" }\n'
        f'network = {{ publish = ["127.0.0.1:{port}:8000"] }}\n'
    )
    return port


def test_the_demo_bots_keep_their_guarantees_in_the_container_tier(daemon: DaemonCli) -> None:
    port = demo_spec(daemon, "cdemo", f'tier = "container"\nimage = "{BASE_IMAGE}"\n')
    daemon.cli("up")
    for bot in ("demo", "cdemo"):
        assert wait_for(lambda b=bot: "open files limit" in daemon.cli("logs", b).stdout, 90), bot
    sandbox = verdicts(daemon.cli("logs", "demo").stdout)
    container_v = verdicts(daemon.cli("logs", "cdemo").stdout)
    # /home: the sandbox has none, the image has an empty one; the host's is in neither
    assert sandbox.pop("list /home") == "refused" and container_v.pop("list /home") == "allowed"
    assert "allowed  list /home: []" in daemon.cli("logs", "cdemo").stdout
    assert len(sandbox) == 11 and sandbox == container_v, (sandbox, container_v)
    for action in ("read /etc/shadow", "list /root", "write /usr/bin/evil", "connect to 1.1.1.1"):
        assert container_v[action] == "refused", action
    assert container_v["create a user namespace"] == "refused"
    # the positive controls: the workspace and /tmp are writable in both tiers
    assert container_v["append to /workspace/visits.log"] == "allowed" == container_v["write /tmp/scratch"]
    assert (daemon.spec.parent / "ws-cdemo" / "visits.log").exists()
    # the web bot: healthy, and published on the host's loopback like a sandbox bot
    assert wait_for(lambda: daemon.ps().get("web", {}).get("health") == "healthy", 30), daemon.ps().get("web")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/bot.py", timeout=5) as reply:
        assert reply.status == 200 and b"demo bot" in reply.read()
    daemon.cli("down")
