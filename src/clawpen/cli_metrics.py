"""``clawpen metrics``, ``alerts``, ``export prometheus-rules`` and ``top``: parse, call, render.
(``export compose`` is :func:`clawpen.cli_image.export_compose`.)"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from clawpen import termsafe
from clawpen.errors import HostError, UsageError
from clawpen.paths import state_dir

SORT_KEYS = {"c": "cpu", "m": "mem", "n": "name", "r": "restarts", "i": "net"}


def add_commands(sub: Any) -> None:
    met = sub.add_parser("metrics", help="a bot's or the host's metrics over a time range")
    met.add_argument("target", metavar="BOT|host")
    met.add_argument("--since", default="1h", metavar="DURATION", help='how far back (default "1h")')
    met.add_argument("--json", action="store_true", help="every point: {series: [[time, value], ...]}")
    al = sub.add_parser("alerts", help="firing and pending alerts; ack, silence, test notifications")
    al.add_argument("--json", action="store_true", help="machine-readable output")
    al_sub = al.add_subparsers(dest="alerts_action", metavar="ACTION")
    ack = al_sub.add_parser("ack", help="acknowledge an alert: no more reminders until it resolves")
    ack.add_argument("id", metavar="ID")
    sil = al_sub.add_parser("silence", help="send nothing for a rule for a while")
    sil.add_argument("rule", metavar="RULE")
    sil.add_argument("--for", dest="duration", default="2h", metavar="DURATION", help='default "2h"')
    al_sub.add_parser("test", help="send a test message to every notification URL")
    ex = sub.add_parser("export", help="write the alert rules for Prometheus, or a Compose file")
    ex.add_argument("what", choices=["prometheus-rules", "compose"])
    ex.add_argument(
        "-f", "--file", default="clawpen.toml", metavar="FILE", help="spec file (default clawpen.toml)"
    )
    ex.add_argument("-o", "--output", metavar="OUT", help="write here (default: standard output)")
    top = sub.add_parser("top", help="live view of the host and every bot (keys: c m n r i sort, q quits)")
    top.add_argument("--sort", choices=sorted(SORT_KEYS.values()), default="cpu")
    top.add_argument("--interval", type=float, default=2.0, metavar="S", help="refresh every S seconds")
    top.add_argument("--once", action="store_true", help="print one screen and exit")


class _Daemon:
    """The daemon's client without starting a daemon: metrics of a daemon that is not running
    do not exist, so saying so beats starting an empty one."""

    def __init__(self) -> None:
        from clawpen.daemon.client import Client

        self.client = Client(state_dir())

    def call(self, op: str, **args: Any) -> Any:
        from clawpen.daemon.app import socket_path

        try:
            return self.client.call(op, autostart=False, **args)
        except (FileNotFoundError, ConnectionRefusedError):
            raise HostError(
                "the clawpen daemon is not running",
                where=str(socket_path(state_dir())),
                hint="start it with `clawpen up` (or `clawpen daemon`)",
            ) from None


def _client() -> _Daemon:
    return _Daemon()


def _fmt(name: str, value: float, scope: str) -> str:
    from clawpen.alerts.messages import fmt_value

    return fmt_value("host" if scope == "host" else "bot", name, value)


def cmd_metrics(ns: argparse.Namespace) -> int:
    data = _client().call("metrics", target=ns.target, since=ns.since)
    if ns.json:
        print(json.dumps(data))
        return 0
    data = termsafe.clean_for(sys.stdout, data)
    series = data["series"]
    if not series:
        print(f"no samples of {data['target']} in the last {ns.since}")
        return 0
    print(f"{data['target']}, last {ns.since} ({max(len(v) for v in series.values())} points)")
    print(f"{'SERIES':<34} {'LAST':>12} {'MIN':>12} {'AVG':>12} {'MAX':>12}")
    for name in sorted(series):
        if "|" in name:
            continue
        vals = [p[1] for p in series[name]]
        cells = (vals[-1], min(vals), sum(vals) / len(vals), max(vals))
        print(f"{name:<34} " + " ".join(f"{_fmt(name, v, data['target']):>12}" for v in cells))
    return 0


def _when(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_alerts(ns: argparse.Namespace) -> int:
    from clawpen.audit import caller

    client = _client()
    action = ns.alerts_action
    if action == "ack":
        data = termsafe.clean_for(sys.stdout, client.call("alerts_ack", id=ns.id, who=caller()))
        print(f"acknowledged alert {data['id']} ({data['rule']} on {data['target']})")
        return 0
    if action == "silence":
        data = client.call("alerts_silence", rule=ns.rule, who=caller(), **{"for": ns.duration})
        data = termsafe.clean_for(sys.stdout, data)
        print(f"silenced {data['rule']} until {_when(data['until'])}")
        return 0
    if action == "test":
        data = termsafe.clean_for(sys.stdout, client.call("alerts_test"))
        failed = [d for d in data["deliveries"] if not d["ok"]]
        for d in data["deliveries"]:
            status = "sent" if d["ok"] else f"FAILED after {d['attempts']} tries: {d['error']}"
            print(f"{d['notifier']}: {status}")
        return 1 if failed else 0
    data = client.call("alerts")
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    data = termsafe.clean_for(sys.stdout, data)  # notifiers' errors and labels: shown, not obeyed
    if not data["alerts"]:
        print("no alert is pending or firing")
    else:
        print(f"{'ID':>5} {'STATE':<8} {'SEVERITY':<9} {'RULE':<24} {'TARGET':<16} {'SINCE':<20} VALUE")
        for a in data["alerts"]:
            scope = "host" if a["target"] == "host" else "bot"
            state = a["state"] + ("*" if a.get("acked_by") else "")
            print(
                f"{a['id']:>5} {state:<8} {a['severity']:<9} {a['rule']:<24} {a['target']:<16} "
                f"{_when(a['active_at']):<20} {_fmt(a['series'], a['value'], scope)}"
            )
    for rule, s in sorted(data["silences"].items()):
        print(f"silenced: {rule} until {_when(s['until'])} (by {s['by']})")
    for d in data["deliveries"][:5]:
        if not d["ok"]:
            print(f"failed delivery: {d['kind']} to {d['notifier']} at {_when(d['at'])}: {d['error']}")
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    if ns.what == "compose":
        from clawpen.cli_image import export_compose

        return export_compose(ns)
    from clawpen.alerts.rules import rules_from
    from clawpen.metrics.prom import rules_yaml
    from clawpen.spec.loader import load_spec

    spec = load_spec(ns.file).spec
    from clawpen.cli_image import write_export

    return write_export(ns.output, rules_yaml(rules_from(spec.monitoring)))


# ---------------------------------------------------------------- top
def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def _rows(data: dict[str, Any], sort: str) -> list[tuple[str, dict[str, float], str]]:
    states = data.get("states", {})
    rows = [(t, v, states.get(t, "-")) for t, v in data.get("bots", {}).items()]
    for t, s in states.items():
        if t not in data.get("bots", {}):
            rows.append((t, {}, s))

    def key(row: tuple[str, dict[str, float], str]) -> Any:
        v = row[1]
        if sort == "name":
            return row[0]
        if sort == "mem":
            return -v.get("memory_bytes", 0)
        if sort == "restarts":
            return -v.get("restarts", 0)
        if sort == "net":
            return -(v.get("net_rx_bytes_per_s", 0) + v.get("net_tx_bytes_per_s", 0))
        return -v.get("cpu_percent", 0)

    return sorted(rows, key=key)


def render_top(data: dict[str, Any], sort: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    h = data.get("host", {})
    disk = max((v for k, v in h.items() if k.startswith("disk_used_percent")), default=None)
    iops = sum(v for k, v in h.items() if k.startswith("disk_iops"))
    head = Text(
        f"host  cpu {h.get('cpu_percent', 0):.1f}%  load {h.get('load1', 0):.2f}  "
        f"mem avail {_size(h.get('memory_available_bytes'))}B ({h.get('memory_percent', 0):.0f}% used)  "
        f"disk {'-' if disk is None else f'{disk:.0f}%'} {iops:.0f} iops  "
        f"net rx {_size(h.get('net_rx_bytes_per_s'))}B/s tx {_size(h.get('net_tx_bytes_per_s'))}B/s  "
        f"firing alerts {data.get('alerts', 0)}  (sort: {sort})"
    )
    table = Table(box=None, header_style="bold")
    for col in ("BOT", "STATE", "CPU%", "MEM", "MEM%", "PIDS", "RX/s", "TX/s", "IOPS", "HEALTH", "RESTARTS"):
        table.add_column(col, justify="left" if col in ("BOT", "STATE") else "right")
    for target, v, state in _rows(data, sort):
        health = v.get("healthy")
        table.add_row(  # Text: a bracket in a name is no rich markup; escape: no control is obeyed
            Text(termsafe.escape(target)),
            Text(termsafe.escape(state)),
            f"{v['cpu_percent']:.1f}" if "cpu_percent" in v else "-",
            _size(v.get("memory_bytes")),
            f"{v['memory_percent']:.0f}" if "memory_percent" in v else "-",
            f"{v['pids']:.0f}" if "pids" in v else "-",
            _size(v.get("net_rx_bytes_per_s")),
            _size(v.get("net_tx_bytes_per_s")),
            f"{v['iops']:.0f}" if "iops" in v else "-",
            "-" if health is None else ("ok" if health else "FAIL"),
            f"{v.get('restarts', 0):.0f}",
        )
    return Group(head, table)


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single key presses from a terminal (cbreak); yields False when stdin is no terminal."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_top(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    if not 0.2 <= ns.interval <= 3600:  # (also refuses nan)
        raise UsageError(
            f"--interval {ns.interval} is out of range",
            where="clawpen top --interval",
            hint="0.2 to 3600 seconds",
        )
    client = _client()
    sort = ns.sort
    console = Console()
    if ns.once:
        console.print(render_top(client.call("metrics_latest"), sort))
        return 0
    poller = select.poll()  # not select(): it fails on descriptors >= 1024
    with _keys() as keys, Live(console=console, auto_refresh=False, screen=False) as live:
        if keys:
            poller.register(sys.stdin.fileno(), select.POLLIN)
        while True:
            live.update(render_top(client.call("metrics_latest"), sort), refresh=True)
            deadline = time.monotonic() + ns.interval
            while (left := deadline - time.monotonic()) > 0:
                if not keys:
                    time.sleep(left)
                    break
                if poller.poll(max(1, int(left * 1000))):
                    key = os.read(sys.stdin.fileno(), 1).decode(errors="replace").lower()
                    if key in ("q", ""):  # q, or the terminal is gone
                        return 0
                    if key in SORT_KEYS:
                        sort = SORT_KEYS[key]
                        break


COMMANDS = {"metrics": cmd_metrics, "alerts": cmd_alerts, "export": cmd_export, "top": cmd_top}
