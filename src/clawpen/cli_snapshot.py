"""``clawpen snapshot create|ls|restore|forget BOT``: workspace snapshots (restic), through the
daemon (operator role for create/restore/forget, viewer for ls; see daemon/ops_snapshots.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clawpen import termsafe
from clawpen.paths import state_dir


def add_commands(sub: Any) -> None:
    snap = sub.add_parser("snapshot", help="snapshot, list, restore and forget a bot's workspace (restic)")
    actions = snap.add_subparsers(dest="snapshot_cmd", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="snapshot the workspace (a running bot is frozen meanwhile)")
    ls = actions.add_parser("ls", help="the bot's snapshots, oldest first")
    restore = actions.add_parser(
        "restore", help="restore into --to DIR, or in place of a stopped bot's workspace"
    )
    restore.add_argument("--to", metavar="DIR", help="a new (or empty) folder to restore into")
    forget = actions.add_parser("forget", help="keep the last daily/weekly/monthly snapshots, prune the rest")
    forget.add_argument("--keep-daily", type=int, default=7, metavar="N")
    forget.add_argument("--keep-weekly", type=int, default=4, metavar="N")
    forget.add_argument("--keep-monthly", type=int, default=6, metavar="N")
    for p in (create, ls, restore, forget):
        p.add_argument("bot", metavar="BOT")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    restore.add_argument("snapshot", nargs="?", default="latest", metavar="ID", help="id prefix or latest")


def cmd_snapshot(ns: argparse.Namespace) -> int:
    import os

    from clawpen.daemon.client import Client

    client = Client(state_dir())
    action = ns.snapshot_cmd
    if action == "create":
        data = client.call("snapshot_create", bot=ns.bot)
    elif action == "ls":
        data = client.call("snapshot_ls", bot=ns.bot)
    elif action == "restore":
        to = None if ns.to is None else os.path.abspath(ns.to)
        data = client.call("snapshot_restore", bot=ns.bot, snapshot=ns.snapshot, to=to)
    else:
        data = client.call(
            "snapshot_forget", bot=ns.bot, daily=ns.keep_daily, weekly=ns.keep_weekly, monthly=ns.keep_monthly
        )
    if ns.json:
        print(json.dumps(data, indent=1))
        return 0
    safe = termsafe.escape
    if action == "create":
        pause = f"frozen {data['pause_s'] * 1000:.1f} ms" if data["frozen"] else "not running: no freeze"
        print(
            f"snapshot {safe(data['snapshot'])} of {safe(data['bot'])}: {data['files_new']} new, "
            f"{data['files_changed']} changed files, {data['data_added']} bytes added ({pause})"
        )
    elif action == "ls":
        for row in data:
            print(f"{safe(row['short_id'])}  {safe(row['time'][:19])}  {safe(' '.join(row['tags']))}")
        if not data:
            print(f"no snapshots of {safe(ns.bot)}")
    elif action == "restore":
        print(f"restored {safe(data['snapshot'][:8])} into {safe(data['target'])}")
        if data.get("previous"):
            print(f"the replaced workspace is kept at {safe(data['previous'])} (remove it when done)")
    else:
        print(f"forgot {len(data['forgotten'])} snapshot(s) of {safe(data['bot'])}")
    return 0


COMMANDS = {"snapshot": cmd_snapshot}
