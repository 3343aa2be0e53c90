"""The idle daemon's import set (issue 22): a real daemon (``clawpen.daemon.app.serve``, no bots)
has not imported the HTTP API's stack (FastAPI, Starlette, uvicorn), prometheus_client, Apprise,
httpx, dnspython, the gateway or the Docker SDK after its start; the first connection to the
API imports and starts it, and the same daemon then answers on it (the positive control)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]

HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "apprise",
    "httpx",
    "dns",
    "docker",
    "clawpen.api.app",
    "clawpen.net.gateway",
    "clawpen.net.resolve",
)

SCRIPT = r"""
import asyncio, json, os, signal, sys, urllib.request
from pathlib import Path
from clawpen.daemon import app

state = Path(sys.argv[1])

def modules():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "starlette", "uvicorn",
        "prometheus_client", "apprise", "httpx", "dns", "docker") or m.startswith(("clawpen.api.app",
        "clawpen.net.gateway", "clawpen.net.resolve")))

async def main():
    async def probe():
        while not (state / "clawpen.sock").exists():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        before = modules()
        url = json.loads((state / "api.json").read_text())["url"]
        fetch = lambda: urllib.request.urlopen(url + "api/health", timeout=20)
        try:
            status = (await asyncio.to_thread(fetch)).status
        except urllib.error.HTTPError as err:
            status = err.code
        print(json.dumps({"before": before, "status": status, "after": modules()}), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    asyncio.get_running_loop().create_task(probe())
    await app.serve(state)

asyncio.run(main())
"""


def test_an_idle_daemon_has_not_imported_the_api_metrics_or_gateway_stacks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env.update(CLAWPEN_HOME=str(state), CLAWPEN_API_LISTEN="127.0.0.1:0")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(state)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"] == [], f"imported before any use: {seen['before']}"
    # the first connection imports the API and is answered (401/404: not signed in, or no such
    # route, is an answer of FastAPI's; a lazy start that never served would time out)
    assert seen["status"] in (200, 401, 404), seen
    assert {"fastapi", "uvicorn", "clawpen.api.app"} <= set(seen["after"]), seen["after"]
    assert not (set(seen["after"]) & {"prometheus_client", "docker", "clawpen.net.gateway"}), seen["after"]
