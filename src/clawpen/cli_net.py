"""``clawpen net log BOT``: the egress gateway's connection log of a bot, from the daemon;
``clawpen net suggest BOT``: the ``egress = [...]`` line for what the bot reached or was denied."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from clawpen.termsafe import clean, escape, for_stream

POLL = 0.5  # seconds between asks while following


def add_commands(sub: Any) -> None:
    net = sub.add_parser("net", help="the egress gateway: connection log, allowlist suggestion")
    actions = net.add_subparsers(dest="net_cmd", metavar="ACTION", required=True)
    log = actions.add_parser("log", help="connections of a bot through the gateway (allowed and denied)")
    log.add_argument("bot", metavar="BOT")
    log.add_argument("-f", "--follow", action="store_true", help="keep printing new connections")
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    log.add_argument(
        "--raw", action="store_true", help="the exact names even on a terminal (default there: escaped)"
    )
    log.add_argument("--since", metavar="WHEN", help='e.g. "1h", "30m", "2026-11-24T10:00:00Z"')
    log.add_argument("--denied", action="store_true", help="only denied connections and DNS queries")
    log.add_argument("-n", "--tail", type=int, default=50, metavar="N", help="last N rows (default 50)")
    sug = actions.add_parser(
        "suggest",
        help="the egress = [...] line for the hosts a bot reached or was denied (learn mode or not)",
    )
    sug.add_argument("bot", metavar="BOT")
    sug.add_argument("--since", metavar="WHEN", help='only the log since then, e.g. "24h", "7d"')
    sug.add_argument("--json", action="store_true", help="the entries as JSON (rule, count, hosts)")


_VERDICTS = {"allowed": "ALLOW", "denied": "DENY ", "budget": "SKIP "}  # budget: rows left out


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 1024 or unit == "G":
            break
    return f"{value:.1f}{unit}"


def render(row: dict[str, Any], safe: Callable[[str], str] = escape) -> str:
    """One connection as a line; ``safe`` filters the bot-controlled parts (a DNS name the bot
    asked for can hold any byte, an escape sequence included)."""
    row = clean(row, safe)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["at"]))
    who = row["bot"] if not row.get("replica") else f"{row['bot']}[{row['replica']}]"
    dest = f"{row['host']}:{row['port']}" if row["port"] else row["host"]
    verdict = _VERDICTS.get(row["verdict"], "DENY ")
    times = int(row.get("count") or 1)
    if times > 1:  # denials folded into one row per second, or a budget marker
        dest = f"{dest} x{times}"
    traffic = f"up {_size(row['up'])} down {_size(row['down'])} {row['duration']:.2f}s"
    return f"{when}  {who:<14} {row['kind']:<11} {verdict} {dest:<40} {traffic}  {row['reason']}"


def cmd_net(ns: argparse.Namespace) -> int:
    from clawpen.cli_daemon import _client
    from clawpen.errors import UsageError
    from clawpen.logs.query import parse_since

    if ns.net_cmd == "suggest":
        return _suggest(ns)
    if ns.tail < 1:
        raise UsageError("--tail must be at least 1", where="--tail", hint="e.g. -n 50")
    since = parse_since(ns.since, time.time()) if ns.since else None
    client = _client()
    args = {"bot": ns.bot, "since": since, "denied": ns.denied}
    rows = client.call("net_log", limit=ns.tail, **args)
    safe = for_stream(sys.stdout, raw=ns.raw)
    last = 0
    while True:
        for row in rows:
            print(json.dumps(row) if ns.json else render(row, safe), flush=True)
            last = max(last, int(row["id"]))
        if not ns.follow:
            return 0
        time.sleep(POLL)
        rows = client.call("net_log", after_id=last, limit=1000, **args)


COMMANDS = {"net": cmd_net}


def _suggest(ns: argparse.Namespace) -> int:
    from clawpen.cli_daemon import _client
    from clawpen.logs.query import parse_since
    from clawpen.net.suggest import Suggestion, render_toml

    since = parse_since(ns.since, time.time()) if ns.since else None
    rows = _client().call("net_suggest", bot=ns.bot, since=since)
    if ns.json:
        print(json.dumps({"bot": ns.bot, "egress": [r["rule"] for r in rows], "entries": rows}, indent=1))
        return 0
    found = [
        Suggestion(r["rule"], int(r["count"]), int(r["denied"]), tuple(r["hosts"]), bool(r["dns_only"]))
        for r in rows
    ]
    print(
        f"# what {ns.bot} reached or was denied{f' since {ns.since}' if ns.since else ''}; check before use"
    )
    print(render_toml(found), end="")
    return 0
