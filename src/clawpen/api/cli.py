"""``clawpen dashboard``: where the daemon serves the dashboard, and (with ``--token-create``)
a token to sign in with."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from clawpen.errors import HostError
from clawpen.paths import state_dir

WAIT = 5.0


def add_commands(sub: Any) -> None:
    dash = sub.add_parser("dashboard", help="print the URL of the web dashboard (and make a token)")
    dash.add_argument(
        "--token-create",
        metavar="ROLE",
        choices=["viewer", "operator"],
        help="also make a token with this role to sign in with (viewer or operator)",
    )
    dash.add_argument("--json", action="store_true", help="machine-readable output")


def _url() -> str | None:
    try:
        data = json.loads((state_dir() / "api.json").read_text())
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return str(url) if url else None


def cmd_dashboard(ns: argparse.Namespace) -> int:
    from clawpen.daemon.client import Client

    client = Client(state_dir())
    client.ensure_daemon()
    deadline = time.monotonic() + WAIT
    url = _url()
    while url is None and time.monotonic() < deadline:
        time.sleep(0.1)
        url = _url()
    if url is None:
        log = state_dir() / "daemon.log"
        raise HostError(
            "the daemon serves no dashboard",
            where=str(log),
            hint="read the daemon's log (the port may be taken, or CLAWPEN_API_LISTEN=off); "
            "restart it with `clawpen daemon --listen 127.0.0.1:PORT`",
        )
    made = None
    if ns.token_create:
        made = client.call("token_create", role=ns.token_create, name="dashboard")
    if ns.json:
        print(json.dumps({"url": url, **({"token": made["token"], "role": made["role"]} if made else {})}))
        return 0
    print(url)
    if made:
        print(made["token"])
        print(
            f"token {made['id']} ({made['role']}): paste it on the sign-in page; it is not shown again",
            file=sys.stderr,
        )
    else:
        print("sign in with a token: clawpen dashboard --token-create viewer", file=sys.stderr)
    if "127.0.0.1" in url or "localhost" in url or "[::1]" in url:
        port = url.rsplit(":", 1)[1].strip("/")
        print(f"from another machine: ssh -L {port}:127.0.0.1:{port} root@THIS_HOST", file=sys.stderr)
    return 0


COMMANDS = {"dashboard": cmd_dashboard}
