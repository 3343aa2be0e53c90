"""``clawpen host harden plan|apply|rollback``: the host part of the deployment practice from
``[host.harden]`` (see :mod:`clawpen.harden`). Runs locally as root (no daemon). ``--root DIR``
works on another system's root folder (a debootstrap root, a mounted disk image)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clawpen.errors import UsageError


def add_commands(sub: Any) -> None:
    """Add ``host`` and ``host harden ACTION`` to the main parser's subcommands."""
    host = sub.add_parser("host", help="the host itself: hardening (the deployment practice)")
    groups = host.add_subparsers(dest="host_cmd", metavar="GROUP", required=True)
    harden = groups.add_parser(
        "harden", help="operator user, SSH, updates, firewall, snapshots ([host.harden])"
    )
    actions = harden.add_subparsers(dest="harden_cmd", metavar="ACTION", required=True)
    helps = {
        "plan": "show every change [host.harden] would make (changes nothing)",
        "apply": "back up, then make the changes (needs --yes on this host's own root)",
        "rollback": "undo the latest apply (or --id): files byte for byte, the created user removed",
    }
    for name, text in helps.items():
        p = actions.add_parser(name, help=text)
        p.add_argument("--root", metavar="DIR", help="the system's root folder (default /)")
        if name != "rollback":
            p.add_argument(
                "-f",
                "--file",
                default="clawpen.toml",
                metavar="FILE",
                help="spec file (default clawpen.toml)",
            )
        if name == "apply":
            p.add_argument("--yes", action="store_true", help="apply to this host's own root (/)")
        if name == "rollback":
            p.add_argument("--id", metavar="ID", help="the apply to undo (a folder of STATE/harden)")
        p.add_argument("--json", action="store_true", help="machine-readable output")


def _root(raw: str) -> Path:
    root = Path(raw)
    if not root.is_dir():
        raise UsageError(f"--root {raw} is not a folder", where="--root", hint="give a system's root folder")
    return root.resolve()


def cmd_host(ns: argparse.Namespace) -> int:
    from clawpen import audit
    from clawpen.harden import apply as harden
    from clawpen.harden.facts import is_live
    from clawpen.harden.session import prepare, token_state
    from clawpen.paths import state_dir

    root = _root(ns.root or "/")
    state, who = state_dir(), audit.caller()
    if ns.harden_cmd == "rollback":
        harden.require_root("rollback")
        if ns.id and ns.root:
            from clawpen.harden.backup import load

            made_for = load(state, ns.id).manifest["root"]
            if made_for != str(root):
                raise UsageError(
                    f"apply {ns.id} was made to {made_for}, not {root}",
                    where="--root",
                    hint="leave --root out with --id, or give the apply's root",
                )
        out = harden.rollback(harden.Context(root, state, token_state(root, state), who), ns.id)
        if ns.json:
            print(json.dumps(out))
        elif not out["changed"]:
            print(out["note"])
        else:
            print(
                f"rolled back {out['id']}: {len(out['files'])} file(s) restored"
                + (f", user(s) removed: {', '.join(out['users'])}" if out["users"] else "")
                + (", firewall restored" if out["firewall"] else "")
            )
        return 0
    from clawpen.spec.loader import load_spec

    spec = load_spec(ns.file).spec  # a bad spec: exit 2, nothing read or changed
    session = prepare(root, spec, state, who)
    plan = session.plan
    if ns.harden_cmd == "plan" or (is_live(root) and not ns.yes and not plan.empty):
        if ns.json:
            print(json.dumps({**plan.to_json(), "defaults": session.defaults}))
        else:
            if session.defaults:
                print(f"{ns.file} has no [host.harden]: the practice's defaults")
            print(plan.describe())
        if ns.harden_cmd == "apply":
            raise UsageError(
                "apply to this host's own root needs --yes",
                where="clawpen host harden apply",
                hint="read the plan above, then run it again with --yes",
            )
        return 0
    result = harden.apply(plan, session.ctx)
    if ns.json:
        print(json.dumps(result.__dict__))
    else:
        print(plan.describe())
        if result.id is None:
            print("no change: nothing applied")
        else:
            print(f"applied {len(result.steps)} step(s): {', '.join(result.steps)}")
            print(f"backup  {result.backup} (undo: clawpen host harden rollback --id {result.id})")
        for note in result.notes:
            print(f"note    {note}")
    return 0


COMMANDS = {"host": cmd_host}
