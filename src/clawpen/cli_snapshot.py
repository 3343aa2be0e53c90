"""``clawpen snapshot create|ls|restore|forget BOT``: workspace snapshots (restic), through the
daemon (operator role for create/restore/forget, viewer for ls; see daemon/ops_snapshots.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clawpen import termsafe
from clawpen.errors import UsageError
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
    for p in (create, ls, restore):
        p.add_argument(
            "--state", action="store_true", help="clawpen's own state (admin), not a bot's workspace"
        )
    for p in (ls, restore):
        p.add_argument(
            "--tier", choices=("hot", "warm", "cold"), default="hot", help="the [storage] tier (default: hot)"
        )
    restore.add_argument(
        "--password-file",
        metavar="FILE",
        help="with --state: the repository password (- for stdin), when the vault cannot give it",
    )
    for p in (create, ls, restore, forget):
        p.add_argument("bot", metavar="BOT", nargs="?" if p is not forget else None)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    restore.add_argument("snapshot", nargs="?", default="latest", metavar="ID", help="id prefix or latest")
    password = actions.add_parser(
        "password", help="print the repository password (admin; keep a copy apart from the vault)"
    )
    password.add_argument("--force", action="store_true", help="print it even when stdout is not a terminal")


def cmd_snapshot(ns: argparse.Namespace) -> int:
    import os

    from clawpen.daemon.client import Client

    action = ns.snapshot_cmd
    if action == "password":
        return _password(ns)
    if getattr(ns, "state", False):
        return _state(ns)
    if ns.bot is None:
        raise UsageError(f"snapshot {action} needs a BOT (or --state)", where=f"clawpen snapshot {action}")
    client = Client(state_dir())
    if action == "create":
        data = client.call("snapshot_create", bot=ns.bot)
    elif action == "ls":
        data = client.call("snapshot_ls", bot=ns.bot, tier=ns.tier)
    elif action == "restore":
        to = None if ns.to is None else os.path.abspath(ns.to)
        data = client.call("snapshot_restore", bot=ns.bot, snapshot=ns.snapshot, to=to, tier=ns.tier)
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


def _password(ns: argparse.Namespace) -> int:
    import sys

    from clawpen.daemon.client import Client

    if not (sys.stdout.isatty() or ns.force):
        raise UsageError(
            "the snapshot password is printed only to a terminal",
            where="clawpen snapshot password",
            hint="run it in a terminal, or pass --force to print it to a pipe or file",
        )
    print(Client(state_dir()).call("snapshot_password")["password"])
    return 0


def _state(ns: argparse.Namespace) -> int:
    """``create|ls --state`` through the daemon (admin); ``restore --state`` offline."""
    from clawpen.daemon.client import Client

    safe = termsafe.escape
    if ns.snapshot_cmd == "restore":
        return _restore_state(ns)
    client = Client(state_dir())
    if ns.snapshot_cmd == "create":
        data = client.call("snapshot_state_create")
        if not ns.json:
            print(f"state snapshot {safe(data['snapshot'][:8])}: {data['data_added']} bytes added")
    else:
        data = client.call("snapshot_state_ls")
        if not ns.json:
            for row in data:
                print(f"{safe(row['short_id'])}  {safe(row['time'][:19])}  {safe(' '.join(row['tags']))}")
            if not data:
                print("no state snapshots")
    if ns.json:
        print(json.dumps(data, indent=1))
    return 0


def _restore_state(ns: argparse.Namespace) -> int:
    """Offline (no daemon needed): restic is run here, with the password from the vault if it
    still opens, else from --password-file (``-``: stdin)."""
    import os
    import sys
    from pathlib import Path

    from clawpen.errors import ClawpenError
    from clawpen.snapshots import state
    from clawpen.snapshots.restic import Repository
    from clawpen.snapshots.runner import PASSWORD_SECRET
    from clawpen.vault.store import Vault

    where = "clawpen snapshot restore --state"
    if ns.to is None:
        raise UsageError("restore --state needs --to DIR (a new folder)", where=where,
                         hint="then move its files into the state folder (docs/rollback.md)")  # fmt: skip
    home = state_dir()
    password: bytes | None = None
    if ns.password_file is not None:
        raw = sys.stdin.buffer.read() if ns.password_file == "-" else Path(ns.password_file).read_bytes()  # noqa: S105
        password = raw.strip(b"\r\n")
    else:
        try:
            vault = Vault(home)
            if PASSWORD_SECRET in vault.names():
                password = vault.get(PASSWORD_SECRET)
        except ClawpenError:
            password = None
    if not password:
        raise UsageError(
            "the vault does not give the snapshot password", where=where,
            hint="pass it with --password-file FILE (or - for stdin): `clawpen snapshot password` printed it",
        )  # fmt: skip
    known = password
    repo = Repository(home, password=lambda: known)
    snapshot = ns.bot or ns.snapshot  # with --state the first ID is taken as the snapshot
    target = Path(os.path.abspath(ns.to))
    snap = state.restore(repo, snapshot, target)
    if ns.json:
        print(json.dumps({"snapshot": snap.id, "target": str(target)}, indent=1))
    else:
        print(f"restored state snapshot {termsafe.escape(snap.short_id)} into {termsafe.escape(str(target))}")
        print("stop the daemon, then move these files into the state folder (docs/rollback.md)")
    return 0
