"""``clawpen storage age [--dry-run]`` and ``clawpen storage status``: the ``[storage]`` tiers
(hot, warm, cold) of the spec applied now; see :mod:`clawpen.daemon.ops_storage`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clawpen import termsafe
from clawpen.paths import state_dir


def add_commands(sub: Any) -> None:
    storage = sub.add_parser("storage", help="snapshot and log storage tiers (hot, warm, cold)")
    actions = storage.add_subparsers(dest="storage_cmd", metavar="ACTION", required=True)
    age = actions.add_parser("age", help="move what is old enough to the next tier now")
    age.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    status = actions.add_parser("status", help="per tier: repository, snapshot count, oldest/newest, size")
    for p in (age, status):
        p.add_argument("--json", action="store_true", help="machine-readable output")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def cmd_storage(ns: argparse.Namespace) -> int:
    from clawpen.daemon.client import Client

    client = Client(state_dir())
    if ns.storage_cmd == "age":
        data = client.call("storage_age", dry_run=ns.dry_run)
    else:
        data = client.call("storage_status")
    if ns.json:
        print(json.dumps(data, indent=1))
        return 0
    safe = termsafe.escape
    if ns.storage_cmd == "status":
        for row in data:
            age = "keeps" if row["age_days"] is None else f"{row['age_days']:g}d"
            span = f"{row['oldest']} .. {row['newest']}" if row["snapshots"] else "-"
            print(f"{row['tier']:<5} {safe(row['repository'])}")
            print(f"      age {age}, {row['snapshots']} snapshots ({span}), {_size(row['size'])}")
            if row["problem"]:
                print(f"      problem: {safe(row['problem'])}")
        return 0
    if not data["configured"]:
        print("no [storage] warm tier or logs_warm in the spec applied now: nothing moves")
        return 0
    verb = "would " if data["dry_run"] else ""
    for m in data["snapshots"]:
        where = f"{m['source']} -> {m['target']}" if m["kind"] == "copy" else f"in {m['source']}"
        print(f"{verb}{m['kind']} {safe(m['snapshot'][:8])} ({m['age_days']:g} days old) {where}")
    if not data["snapshots"]:
        print("no snapshot is old enough to move")
    if not data["dry_run"]:
        print(
            f"logs: {data['logs_moved']} moved to warm, {data['logs_archived']} archived, "
            f"{data['logs_deleted']} deleted from warm"
        )
    for err in data["errors"]:
        print(f"error: {safe(err)}")
    return 1 if data["errors"] else 0


COMMANDS = {"storage": cmd_storage}
