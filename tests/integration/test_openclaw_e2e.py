"""End to end: `clawpen init --template openclaw`, then `clawpen up` installs Node 24 and the
real OpenClaw gateway through the egress gateway (npm registry only) and starts it.

Checked for real: it becomes healthy; it answers on the host's 127.0.0.1:18789 and not from
another network namespace; a connection outside its allowlist is denied and logged; its memory
stays within the 2 GiB limit; `clawpen validate --quick` passes on it and
`clawpen validate --hostile` reports every action contained; start.sh wrote OpenClaw's config
file once, and a restart neither rewrites it nor loses a user's edit (OpenClaw reads the edited
value); the gateway token reads back with `secrets get --force` on a run without a terminal
(refused without it) and a provider key goes into the vault and the spec with one `secrets
add-to ... --env`, as the template and `init` say, and reaches the gateway after `up`; the
template's start-up CPU allowance (start_cpus) ends at the first passing health check, and that
check is a health event. Printed (run with -s): the build output's size, the one figure the template and
docs/templates.md name, and a restart's time to ready (speed: bench/openclaw_bench.py). npm
downloads are kept in /var/cache/clawpen-test/openclaw, so a re-run installs from the cache.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import wait_for
from template_env import fit_build, template_daemon

from clawpen.spec.loader import load_spec

pytestmark = [
    pytest.mark.root,
    pytest.mark.bwrap,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
]

PORT = 18789
TOKEN = "e2e-" + "7" * 40
KEY = "sk-ant-e2e-" + "3" * 30  # not a real key: nothing calls the provider


def _port_free() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", PORT)) != 0


def _readyz() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=5) as resp:
        return json.loads(resp.read())


def test_openclaw_end_to_end() -> None:
    assert _port_free(), f"something already listens on 127.0.0.1:{PORT}; stop it first"
    with template_daemon() as (d, spec_dir):
        d.cli("init", "--template", "openclaw", str(spec_dir))
        toml = spec_dir / "clawpen.toml"
        fit_build(toml, "openclaw", ("registry.npmjs.org",))
        # enable one model provider, so the bot has a gateway link and an allowlist to break
        text = toml.read_text()
        assert '# "api.anthropic.com:443",' in text
        toml.write_text(text.replace('# "api.anthropic.com:443",', '"api.anthropic.com:443",'))
        d.spec = toml
        d.cli("secrets", "set", "OPENCLAW_GATEWAY_TOKEN", stdin=TOKEN)
        up = d.cli("up", "-f", str(toml), "--wait-timeout", "300", timeout=1200)  # waits until healthy
        assert "start openclaw" in up.stdout, up.stdout
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
        # the real gateway, Node 24, on the host's loopback
        assert _readyz()["ready"] is True
        ver = d.cli("exec", "openclaw", "--", "node", "--version").stdout.strip()
        assert ver.startswith("v24."), ver
        _build_size(d.home)
        # not from another network namespace (a fresh one has its own loopback)
        other = subprocess.run(
            [
                "unshare",
                "--net",
                "sh",
                "-c",
                f"ip link set lo up; curl -sS -m 5 http://127.0.0.1:{PORT}/readyz",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert other.returncode != 0 and "ready" not in other.stdout, other
        # outside the allowlist: denied by the gateway and logged; the allowlisted name resolves
        denied = d.cli(
            "exec", "openclaw", "--", "node", "-e",
            "fetch('https://example.com/').then(r => console.log('reached', r.status))"
            ".catch(e => { console.log('blocked', e.cause && e.cause.code); process.exit(3) })",
            check=False,
        )  # fmt: skip
        assert denied.returncode != 0 and "reached" not in denied.stdout, denied
        log = wait_for(lambda: "example.com" in d.cli("net", "log", "openclaw").stdout, 10)
        assert log, d.cli("net", "log", "openclaw").stdout
        net_log = d.cli("net", "log", "openclaw").stdout
        assert any("example.com" in line and "DENY" in line for line in net_log.splitlines()), net_log
        assert any(e["kind"] == "egress-denied" for e in d.events("openclaw"))
        # memory within the limit; the failure scenarios (kill, freeze) are left to
        # test_validate_report.py on a bot with a 1 s health interval: with OpenClaw's 30 s
        # interval and 180 s start period they take about five minutes
        report = json.loads(d.cli("validate", "openclaw", "--quick", "--json", timeout=600).stdout)
        checks = {c["name"]: c for c in report["bots"]["openclaw"]}
        assert report["ok"], json.dumps(report, indent=2)
        assert checks["resource headroom"]["memory_bytes"] < 2 << 30
        for name in ("running", "healthy", f"published 127.0.0.1:{PORT}", "resource headroom"):
            assert checks[name]["ok"], checks[name]
        assert (d.home / "validate" / f"{report['release']}.json").exists()
        hostile = d.cli(
            "validate", "--hostile", "openclaw", "-f", str(toml), "--json", check=False, timeout=600
        )
        result = json.loads(hostile.stdout)
        actions = result["bots"]["openclaw"]["actions"]
        assert hostile.returncode == 0 and len(actions) >= 30, hostile.stdout[-3000:]
        assert {a["verdict"] for a in actions} == {"contained"}
        # after validate: a restart's health is unknown for an interval (30 s), which --quick checks
        _config_written_once(d, spec_dir / "openclaw-data" / ".openclaw" / "openclaw.json")
        _token_and_provider_key(d, toml)
        _broken_upgrade_is_rolled_back(d, toml)
    assert _port_free()


def _allowance_ended_when_healthy(d) -> None:  # type: ignore[no-untyped-def]
    """The template's start_cpus = 2 over cpus = 1 (none on a 1-core host: capped at the cores)."""
    health = [e["reason"] for e in d.events("openclaw") if e["kind"] == "health"]
    assert health and health[0].startswith("starting -> healthy: HTTP 200"), health

    def ended() -> list[str]:
        return [e["reason"] for e in d.events("openclaw") if e["kind"] == "start-cpus"]

    if (os.cpu_count() or 1) >= 2:  # the event follows the first pass within a poll (0.1 s)
        assert wait_for(ended, 5, interval=0.1), d.events("openclaw")
        [text] = ended()
        assert text.startswith("start_cpus 2 ended, cpus 1 now: healthy after "), text
    else:
        assert ended() == []
    print(f"openclaw start-up allowance: {ended()}")


def _token_and_provider_key(d, toml: Path) -> None:  # type: ignore[no-untyped-def]
    """The token and provider-key flows as documented (the template's head, `init`'s hints)."""
    refused = d.cli("secrets", "get", "OPENCLAW_GATEWAY_TOKEN", check=False)  # stdout: a pipe
    assert refused.returncode == 2 and TOKEN not in refused.stdout + refused.stderr, refused
    got = d.cli("secrets", "get", "OPENCLAW_GATEWAY_TOKEN", "--force").stdout
    assert got == TOKEN, got
    # the very value the gateway has
    inside = d.cli("exec", "openclaw", "--", "cat", "/run/secrets/OPENCLAW_GATEWAY_TOKEN").stdout
    assert inside == TOKEN
    add = d.cli("secrets", "add-to", "openclaw", "ANTHROPIC_API_KEY", "--env", "-f", str(toml), stdin=KEY)
    assert "added ANTHROPIC_API_KEY to [bots.openclaw] secrets and secret_env" in add.stderr, add.stderr
    bot = load_spec(toml).spec.bots["openclaw"]
    assert bot.secrets == ["OPENCLAW_GATEWAY_TOKEN", "ANTHROPIC_API_KEY"], bot.secrets
    assert bot.secret_env == ["OPENCLAW_GATEWAY_TOKEN", "ANTHROPIC_API_KEY"], bot.secret_env
    assert KEY not in toml.read_text()  # the value is in the vault only
    d.cli("up", "-f", str(toml), "--wait-timeout", "300", timeout=1200)
    inst = d.json("status", "openclaw")["instances"][0]
    assert inst["state"] == "running" and inst["health"] == "healthy", inst
    assert _readyz()["ready"] is True
    # the gateway's environment and /run/secrets hold it (compared inside: never printed)
    same = d.cli(
        "exec", "openclaw", "--", "node", "-e",
        "const fs = require('fs'); const v = fs.readFileSync('/run/secrets/ANTHROPIC_API_KEY', 'utf8');"
        f"process.exit(process.env.ANTHROPIC_API_KEY === v && v === '{KEY}' ? 0 : 3)",
        check=False,
    )  # fmt: skip
    assert same.returncode == 0, same
    pid = d.json("status", "openclaw")["instances"][0]["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert KEY.encode() not in argv and TOKEN.encode() not in argv


def _build_size(state: Path) -> None:
    """The one build-size figure the template and docs/templates.md name: du of the output."""
    [out] = [p for p in Path(f"{state}-build/openclaw").iterdir() if p.is_dir()]
    du = subprocess.run(["du", "-sm", str(out)], capture_output=True, text=True, check=True)
    print(f"openclaw build output: {int(du.stdout.split()[0])} MiB ({out})")


def _config_written_once(d, config: Path) -> None:  # type: ignore[no-untyped-def]
    """start.sh wrote OpenClaw's config file on the first start; a restart neither rewrites it
    nor loses a user's edit, and OpenClaw reads the edited value."""
    conf = json.loads(config.read_text())
    assert conf["gateway"]["mode"] == "local", conf
    assert conf["update"]["checkOnStart"] is False and conf["models"]["catalogRefresh"]["enabled"] is False
    assert conf["logging"] == {"file": "/workspace/.openclaw/logs/openclaw.log", "maxFileBytes": 10485760}
    assert config.stat().st_mode & 0o077 == 0, oct(config.stat().st_mode)  # the owner's only
    # the user's edit: a 20 MB log rotation instead of 10 MB
    conf["logging"]["maxFileBytes"] = 20 << 20
    config.write_text(json.dumps(conf, indent=2) + "\n")
    edited, mtime = config.read_text(), config.stat().st_mtime_ns
    t0 = time.monotonic()
    d.cli("restart", "openclaw", timeout=120)
    gone = False
    while time.monotonic() - t0 < 300:  # the old gateway must be gone before "ready" counts
        try:
            now_ready = _readyz()["ready"] is True
        except OSError:
            now_ready = False
        gone = gone or not now_ready
        if gone and now_ready:
            break
        time.sleep(0.1)
    took = time.monotonic() - t0
    assert gone and _readyz()["ready"] is True, d.cli("logs", "openclaw").stdout[-3000:]
    print(f"openclaw restart -> /readyz ready: {took:.1f} s (speed: bench/openclaw_bench.py)")
    assert config.read_text() == edited and config.stat().st_mtime_ns == mtime
    script = "/opt/bot/node_modules/openclaw/openclaw.mjs"
    got = d.cli("exec", "openclaw", "--", "node", script, "config", "get", "logging.maxFileBytes")
    assert got.stdout.strip().splitlines()[-1] == str(20 << 20), got.stdout
    assert (config.parent / "logs").is_dir()  # OpenClaw's own log file: in the workspace


# An "upgrade" whose new openclaw does not start: the build installs it, then a step damages
# the package (as a bad release would); `start.sh` then exits at once, so the gateway never
# becomes healthy and `[deploy] auto_rollback` must go back to the working release by itself.
BROKEN_STEP = '    ["rm", "-f", "/opt/bot/node_modules/openclaw/openclaw.mjs"],\n'


def _broken_upgrade_is_rolled_back(d, toml) -> None:  # type: ignore[no-untyped-def]
    good = d.json("releases")[0]["id"]
    text = toml.read_text()
    marker = '"openclaw@latest"],\n'
    assert marker in text, "the template's openclaw install step moved"
    text = text.replace(marker, marker + BROKEN_STEP, 1)
    toml.write_text(text + '\n[deploy]\nauto_rollback = true\nhealth_window = "5m"\n')
    up = d.cli("up", "-f", str(toml), "--json", check=False, timeout=1500)
    assert up.returncode == 1, (up.returncode, up.stdout[-3000:], up.stderr[-2000:])
    result = json.loads(up.stdout)
    auto = result["auto_rollback"]
    assert auto["done"] and auto["rollback_of"] == good, auto
    releases = d.json("releases")
    assert releases[0]["id"] == auto["new_release"] and releases[0]["rollback_of"] == good
    assert releases[0]["who"] == "auto-rollback", releases[0]
    events = [json.loads(line) for line in d.cli("events", "--json").stdout.splitlines()]
    [event] = [e for e in events if e["kind"] == "auto-rollback"]
    assert "openclaw" in event["reason"], event
    # the old build output was kept: going back rebuilt nothing, and the gateway is back
    builds = [e["reason"] for e in d.events("openclaw") if e["kind"] == "build"]
    assert "cached" in builds[-1], builds
    inst = d.json("status", "openclaw")["instances"][0]
    assert inst["state"] == "running" and inst["health"] == "healthy", inst
    assert _readyz()["ready"] is True
