"""``clawpen cluster status`` and ``clawpen failover BOT [--to HOST]``: the failover cluster
(``[cluster]``, a bot's ``ha``); see :mod:`clawpen.ha.component`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clawpen import termsafe
from clawpen.paths import state_dir


def add_commands(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="the failover cluster: hosts, and who runs each HA bot")
    actions = cluster.add_subparsers(dest="cluster_cmd", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="hosts, their health, each HA bot's primary, term and copy age"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    failover = sub.add_parser(
        "failover", help="hand an HA bot over to its backup (stop, ship the workspace, start there)"
    )
    failover.add_argument("bot")
    failover.add_argument("--to", metavar="HOST", help="the host to hand over to (default: the next one)")
    failover.add_argument("--wait", type=float, default=120.0, metavar="S", help="give up after S seconds")
    failover.add_argument("--json", action="store_true", help="machine-readable output")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def cmd_cluster(ns: argparse.Namespace) -> int:
    from clawpen.daemon.client import Client

    data = Client(state_dir()).call("cluster_status")
    if ns.json:
        print(json.dumps(data, indent=1))
        return 0
    safe = termsafe.escape
    print(f"this host: {safe(str(data['host'] or '?'))}   etcd: {safe(', '.join(data['endpoints']) or '-')}")
    if data["problem"]:
        print(f"problem: {safe(data['problem'])}")
    print("HOST            ADDRESS           UP")
    for h in data["hosts"]:
        mark = " (this)" if h["this"] else ""
        print(f"{safe(h['host'])[:15]:<15} {safe(str(h['address'] or '-'))[:17]:<17} yes{mark}")
    if data["bots"]:
        print()
        print("BOT             PRIMARY         TERM     HERE      COPY")
        for b in data["bots"]:
            term = "-" if b["term"] is None else str(b["term"])
            print(
                f"{safe(b['bot'])[:15]:<15} {safe(str(b['primary'] or '(none)'))[:15]:<15} {term:<8} "
                f"{safe(str(b['here'] or '-')):<9} {_age(b['copy_age_s'])}"
            )
    return 0


def cmd_failover(ns: argparse.Namespace) -> int:
    from clawpen.daemon.client import Client

    data = Client(state_dir()).call("failover", bot=ns.bot, to=ns.to, wait=ns.wait)
    if ns.json:
        print(json.dumps(data, indent=1))
        return 0
    print(
        f"{termsafe.escape(data['bot'])}: {termsafe.escape(str(data['before']))} -> "
        f"{termsafe.escape(str(data['after']))} (term {data['term']})"
    )
    return 0


COMMANDS = {"cluster": cmd_cluster, "failover": cmd_failover}
