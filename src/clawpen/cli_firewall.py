"""``clawpen firewall plan|apply|confirm|rollback|status``: the host firewall from ``[host.firewall]``.

Runs locally as root (no daemon): nftables rules belong to the network namespace the command
runs in. ``apply`` reverts by itself unless ``confirm`` follows within ``--confirm-within``
seconds (default 60), so a rule that cuts the admin's SSH session undoes itself.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from clawpen.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from clawpen.spec.host import Firewall

DEFAULT_CONFIRM_WITHIN = 60.0


def add_commands(sub: Any) -> None:
    """Add ``firewall`` and its actions to the main parser's subcommands."""
    fw = sub.add_parser("firewall", help="the host firewall from [host.firewall] (nftables, needs root)")
    actions = fw.add_subparsers(dest="firewall_cmd", metavar="ACTION", required=True)
    helps = {
        "plan": "show the diff between the live table and [host.firewall]",
        "apply": "load [host.firewall]; reverts by itself unless confirmed in time",
        "confirm": "keep the applied firewall (cancel the automatic revert)",
        "rollback": "restore the table saved by the last apply",
        "status": "the live table, the pending revert, and rule counters",
    }
    for name, text in helps.items():
        p = actions.add_parser(name, help=text)
        if name in ("plan", "apply"):
            p.add_argument(
                "-f",
                "--file",
                default="clawpen.toml",
                metavar="FILE",
                help="spec file (default clawpen.toml)",
            )
        if name == "apply":
            p.add_argument(
                "--confirm-within",
                type=float,
                metavar="S",
                help=f"revert unless confirmed within S seconds (default {DEFAULT_CONFIRM_WITHIN:g})",
            )
            p.add_argument("--no-confirm", action="store_true", help="no automatic revert (for scripts)")
        p.add_argument("--json", action="store_true", help="machine-readable output")


def _config(file: str) -> Firewall:
    from clawpen.spec.loader import load_spec

    loaded = load_spec(file)
    fw = loaded.spec.host.firewall
    if fw is None:
        raise ConfigError(
            f"{file} has no [host.firewall] section",
            where=file,
            hint='add one, e.g. [host.firewall] with ssh_from = ["203.0.113.7/32"]; see docs/firewall.md',
        )
    return fw


def _confirm_within(ns: argparse.Namespace) -> float | None:
    if ns.no_confirm and ns.confirm_within is not None:
        raise UsageError(
            "--no-confirm and --confirm-within contradict each other",
            where="clawpen firewall apply",
            hint="give one of them",
        )
    if ns.no_confirm:
        return None
    value = DEFAULT_CONFIRM_WITHIN if ns.confirm_within is None else float(ns.confirm_within)
    if not 1 <= value <= 3600:
        raise UsageError(
            f"--confirm-within {value:g} is out of range",
            where="clawpen firewall apply",
            hint="give 1 to 3600 seconds (time to open a new SSH session and run confirm)",
        )
    return value


def _print_diff(text: str, changed: bool) -> None:
    print(text if changed else "no change: the live table already matches [host.firewall]")


def cmd_firewall(ns: argparse.Namespace) -> int:
    from clawpen import audit
    from clawpen.net import firewall
    from clawpen.paths import state_dir

    action = ns.firewall_cmd
    within = _confirm_within(ns) if action == "apply" else None
    fw = _config(ns.file) if action in ("plan", "apply") else None  # bad spec: exit 2, nothing touched
    firewall.require_root()
    state, who = state_dir(), audit.caller()
    if action == "plan" and fw is not None:
        change = firewall.plan(fw)
        if ns.json:
            print(
                json.dumps(
                    {"changed": change.changed, "live_present": change.live_present, "diff": change.text}
                )
            )
        else:
            _print_diff(change.text, change.changed)
        return 0
    if action == "apply" and fw is not None:
        result = firewall.apply(fw, state, confirm_within=within, who=who)
        if ns.json:
            print(json.dumps(result.__dict__))
        else:
            _print_apply(result)
        return 0
    if action == "confirm":
        out = firewall.confirm(state, who=who)
        _emit(ns, out, f"confirmed: the firewall stays ({out['seconds_left']:g} s were left)")
        return 0
    if action == "rollback":
        out = firewall.rollback(state, who=who)
        what = "removed table" if out["restored"] == "absent" else "restored the previous table"
        _emit(ns, out, f"rollback: {what} {firewall.QUALIFIED}" + ("" if out["changed"] else " (no change)"))
        return 0
    info = firewall.status(state)
    if ns.json:
        print(json.dumps(info))
    else:
        _print_status(info)
    return 0


def _emit(ns: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if ns.json else text)


def _print_apply(result: Any) -> None:
    from clawpen.net.firewall import QUALIFIED

    _print_diff(result.diff, result.changed)
    print(f"checked   nft -c accepted the script for table {QUALIFIED} ({result.rules} rules)")
    if result.changed:
        print("applied   in one transaction; other tables untouched")
    else:
        print("applied   nothing to load (no change)")
    saved = {
        "table": "the live table",
        "absent": "'no table'",
        "kept": "the table before the unconfirmed apply",
    }
    print(f"saved     {saved[result.previous]} for rollback")
    if result.deadline is not None:
        at = time.strftime("%H:%M:%S UTC", time.gmtime(result.deadline))
        left = max(result.deadline - time.time(), 0)
        print(f"pending   reverts at {at} (in {left:.0f} s) unless you run `clawpen firewall confirm`")
        print("          (confirm from a NEW ssh session: it proves you are not locked out)")


def _print_status(info: dict[str, Any]) -> None:
    print(
        f"table     {info['table']}: " + (f"present, {info['rules']} rules" if info["present"] else "absent")
    )
    match = info["matches_last_load"]
    if match is not None:
        print("loaded    " + ("matches what clawpen last loaded" if match else "CHANGED outside clawpen:"))
        if info["drift"]:
            print(info["drift"])
    pending = info["pending"]
    if pending:
        left = max(float(pending["deadline"] or 0) - time.time(), 0)
        print(f"pending   reverts in {left:.0f} s unless confirmed (applied by {pending['who']})")
    if info["previous_saved"]:
        saved = "the saved table" if info["previous_saved"] == "table" else "no table"
        print(f"rollback  would restore {saved}")
    last = info["last"]
    if last:
        print(f"last      {last['action']} at {last['ts']} by {last['who']}")
    for c in info["counters"]:
        print(f"  {c['packets']:>10} pkts {c['bytes']:>12} B  {c['comment'] or c['rule']}")


COMMANDS = {"firewall": cmd_firewall}
