"""End to end: the OpenClaw template switched to the container tier, nothing else changed.

`clawpen init --template openclaw`, then ``tier = "container"`` and ``image`` (the test's
Debian base image) added to its bot: `clawpen up` runs the template's build steps on the host
(the sandbox tier: npm installs Node 24 and openclaw through the egress gateway), binds their
output read-only at /opt/bot in the container, and starts the real gateway there. Checked for
real: it turns healthy and its start-up CPU allowance ends then (on clawpen's cgroup around the
container); /readyz answers through the published 127.0.0.1 port; the gateway token from the
vault is the one the gateway takes (its HTTP API refuses a wrong one); the build output is
read-only to the bot; `down` leaves no container, cgroup or link behind. The npm downloads come
from /var/cache/clawpen-test/openclaw, as in test_openclaw_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from container_env import BASE_IMAGE, ensure_base_image
from helpers import wait_for
from template_env import openclaw_in_tier, template_daemon
from test_openclaw_e2e import PORT, TOKEN, _allowance_ended_when_healthy, _port_free, _readyz

from clawpen.paths import cgroup_scope
from clawpen.sandbox.cgroups import detect

pytestmark = [
    pytest.mark.root,
    pytest.mark.bwrap,
    pytest.mark.netns,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]


def _invoke(token: str | None) -> tuple[int, str]:
    """POST /tools/invoke (OpenClaw's gateway HTTP API, behind its auth) through the published port."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/tools/invoke",
        data=json.dumps({"tool": "sessions_list", "args": {}}).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _leftovers(home: Path) -> list[str]:
    """Containers, cgroups and bot network links of this daemon still on the host."""
    scope = cgroup_scope(home)
    ctrs = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=clawpen-{scope}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    host = detect()
    groups = [str(p) for d in set(host.hierarchies.values()) for p in (d / host.base).glob(f"{scope}*")]
    # the bots' links (the gateway's own namespace, netns/gw, lives as long as the daemon)
    links = (
        [str(p) for p in (home / "netns").glob("*") if p.name != "gw"] if (home / "netns").is_dir() else []
    )
    return ctrs + groups + links


def test_the_openclaw_template_runs_in_the_container_tier() -> None:
    assert _port_free(), f"something already listens on 127.0.0.1:{PORT}; stop it first"
    ensure_base_image()
    with template_daemon() as (d, spec_dir):
        switch = f'tier = "container"\nimage = "{BASE_IMAGE}"\n'
        openclaw_in_tier(d, spec_dir, switch, wait=300, timeout=800)
        builds = [e["reason"] for e in d.events("openclaw") if e["kind"] == "build"]
        assert any("built in" in r or "cached" in r for r in builds), builds

        def healthy() -> bool:
            inst = d.json("status", "openclaw")["instances"][0]
            return inst["state"] == "running" and inst["health"] == "healthy"

        assert wait_for(healthy, 300, interval=1), (
            d.json("status", "openclaw"),
            d.cli("logs", "openclaw").stdout[-3000:],
        )
        _allowance_ended_when_healthy(d)
        # it runs in its container: the image's userland, Node 24 from the build output
        scope = cgroup_scope(d.home)
        info = json.loads(
            subprocess.run(
                ["docker", "inspect", f"clawpen-{scope}openclaw-0"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )[0]
        assert info["Config"]["Image"] == BASE_IMAGE and info["State"]["Running"], info["State"]
        [opt] = [m for m in info["Mounts"] if m["Destination"] == "/opt/bot"]
        assert opt["RW"] is False and opt["Source"].startswith(f"{d.home}-build/openclaw/"), opt
        ver = d.cli("exec", "openclaw", "--", "node", "--version").stdout.strip()
        assert ver.startswith("v24."), ver
        os_id = d.cli("exec", "openclaw", "--", "sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME")
        assert os_id.stdout.strip() == "bookworm", os_id
        ro = d.cli("exec", "openclaw", "--", "touch", "/opt/bot/x", check=False)
        assert ro.returncode != 0 and "Read-only file system" in ro.stderr, ro
        # ready through the published port on the host's loopback
        assert _readyz()["ready"] is True
        # the gateway token from the vault is the gateway's: a wrong one and none are refused
        status, body = _invoke(TOKEN)
        assert status == 200 and json.loads(body)["ok"] is True, (status, body[:500])
        assert _invoke("wrong-" + TOKEN[6:])[0] == 401
        assert _invoke(None)[0] == 401
        print(f"openclaw in a container: /tools/invoke with the token -> {status}")
        d.cli("down", timeout=120)
        assert wait_for(lambda: _leftovers(d.home) == [], 10), _leftovers(d.home)
        assert _port_free()
    assert _port_free()
