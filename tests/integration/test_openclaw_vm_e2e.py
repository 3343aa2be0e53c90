"""End to end: the OpenClaw template switched to the VM tier, nothing else changed.

`clawpen init --template openclaw`, then ``tier = "vm"`` (and the test's kernel) added to its bot:
`clawpen up` runs the template's build steps on the host (the sandbox tier: npm installs Node 24
and openclaw through the egress gateway), shares their output read-only with the guest at
/opt/bot, and starts the real gateway in the guest (TCG here: slow, so the waits are long).
Checked for real: it turns healthy; /readyz answers through the published 127.0.0.1 port (the
gateway listens on its guest's loopback); the vault's gateway token is the gateway's (a wrong
one and none are refused); QEMU runs as the bot's uid with the guest kernel; `down` leaves no
cgroup, link or control folder behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import wait_for
from template_env import openclaw_in_tier, template_daemon
from test_openclaw_container_e2e import _invoke
from test_openclaw_e2e import PORT, TOKEN, _port_free, _readyz
from vm_env import guest_kernel

from clawpen.paths import cgroup_scope
from clawpen.sandbox.cgroups import detect
from clawpen.vm.tier import CTL_ROOT

pytestmark = [
    pytest.mark.root,
    pytest.mark.bwrap,
    pytest.mark.netns,
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
]


def _leftovers(home: Path) -> list[str]:
    scope = cgroup_scope(home)
    host = detect()
    groups = [str(p) for d in set(host.hierarchies.values()) for p in (d / host.base).glob(f"{scope}*")]
    links = (
        [str(p) for p in (home / "netns").glob("*") if p.name != "gw"] if (home / "netns").is_dir() else []
    )
    ctl = [str(p) for p in CTL_ROOT.glob(f"{scope}*")] if CTL_ROOT.is_dir() else []
    return groups + links + ctl


def test_the_openclaw_template_runs_in_the_vm_tier() -> None:
    assert _port_free(), f"something already listens on 127.0.0.1:{PORT}; stop it first"
    with template_daemon() as (d, spec_dir):
        switch = f'tier = "vm"\nvm = {{ kernel = "{guest_kernel()}" }}\n'
        # under TCG (this machine: no usable KVM) Node runs emulated, several times slower: the
        # template's 180 s start period is too short, so the test gives it longer
        openclaw_in_tier(d, spec_dir, switch, wait=1200, timeout=1300, start_period="1200s")

        def healthy() -> bool:
            inst = d.json("status", "openclaw")["instances"][0]
            return inst["state"] == "running" and inst["health"] == "healthy"

        assert wait_for(healthy, 600, interval=2), (
            d.json("status", "openclaw"),
            d.cli("logs", "openclaw").stdout[-3000:],
        )
        # QEMU, as the bot's uid, runs the guest kernel
        row = d.ps()["openclaw"]
        uid = os.stat(spec_dir / "openclaw-data").st_uid
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if os.readlink(proc / "exe").endswith("/qemu-system-x86_64"):
                        found.append(proc)
                except OSError:
                    continue
        mine = [p for p in found if p.stat().st_uid == uid]
        assert len(mine) == 1 and row["pid"], (found, uid)
        # ready through the published port on the host's loopback
        assert _readyz()["ready"] is True
        status, body = _invoke(TOKEN)
        assert status == 200, (status, body[:500])
        assert _invoke("wrong-" + TOKEN[6:])[0] == 401
        assert _invoke(None)[0] == 401
        d.cli("down", timeout=180)
        assert wait_for(lambda: _leftovers(d.home) == [], 15), _leftovers(d.home)
        assert _port_free()
