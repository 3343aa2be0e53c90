"""``clawpen init`` (templates) and ``clawpen validate`` (release checks, hostile actions)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from clawpen import termsafe
from clawpen.errors import UsageError
from clawpen.paths import state_dir


def add_commands(sub: Any) -> None:
    init = sub.add_parser("init", help="write a ready clawpen.toml and bot folder from a template")
    init.add_argument(
        "--template", "-t", metavar="NAME", help="openclaw, python, node or shell (asked when omitted)"
    )
    init.add_argument("--force", action="store_true", help="overwrite the template's files if they exist")
    init.add_argument("--list", action="store_true", help="list the templates")
    init.add_argument("dir", nargs="?", default=".", metavar="DIR", help="where to write (default: .)")
    val = sub.add_parser("validate", help="check a deployed bot, or attack its sandbox policy (--hostile)")
    val.add_argument("bot", nargs="?", metavar="BOT", help="one bot (default: every bot of the spec)")
    val.add_argument("-f", "--file", metavar="FILE", help="spec file (default: clawpen.toml)")
    val.add_argument("--hostile", action="store_true", help="run the built-in hostile actions")
    val.add_argument(
        "--only", action="append", default=[], metavar="ID", help="--hostile: only this action or group"
    )
    val.add_argument(
        "--exec",
        dest="exec_path",
        action="store_true",
        help="--hostile: enter each action into one running sandbox of the bot, as clawpen exec does",
    )
    val.add_argument("--quick", action="store_true", help="skip the failure scenarios (kill, restart)")
    val.add_argument(
        "--live", action="store_true", help="run the failure scenarios on the live bot (default: on a copy)"
    )
    val.add_argument(
        "--empty-workspace", action="store_true", help="the copy gets an empty workspace (default: a copy)"
    )
    val.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_init(ns: argparse.Namespace) -> int:
    from clawpen.init import TEMPLATES, ask_template, write_template

    if ns.list:
        for name, text in TEMPLATES.items():
            print(f"{name:<9} {text}")
        return 0
    name = ns.template
    if name is None:
        if not sys.stdin.isatty():
            raise UsageError(
                "no template given and no terminal to ask on",
                where="clawpen init",
                hint=f"pass --template NAME ({', '.join(TEMPLATES)})",
            )
        name = ask_template()
    written = write_template(name, Path(ns.dir), force=ns.force)
    target = Path(ns.dir).resolve()
    print(f"wrote the {name} template to {target}:")
    for path in written:
        print(f"  {path.relative_to(target)}")
    spec = target / "clawpen.toml"
    if name == "openclaw":
        _openclaw_next_steps(spec)
    print(f"then: clawpen up -f {spec}")
    return 0


def _openclaw_next_steps(spec: Path) -> None:
    """How to set and read the gateway token and add a model provider's key (issue 21)."""
    print("next: set the gateway token (the Control UI asks for it):")
    print("  openssl rand -hex 32 | clawpen secrets set OPENCLAW_GATEWAY_TOKEN")
    print("  read it back, on a terminal: clawpen secrets get OPENCLAW_GATEWAY_TOKEN")
    print("a model provider's key: store it and add it to the bot's secrets in one command,")
    print(f"  clawpen secrets add-to openclaw ANTHROPIC_API_KEY --env -f {spec}")
    print(f'  then uncomment its host ("api.anthropic.com:443") in egress in {spec}')


def _spec_file(ns: argparse.Namespace) -> str | None:
    if ns.file:
        if not os.path.exists(ns.file):
            raise UsageError(
                f"spec file {ns.file} does not exist", where="clawpen validate -f", hint="check the path"
            )
        return str(ns.file)
    return "clawpen.toml" if os.path.exists("clawpen.toml") else None


def _policies(ns: argparse.Namespace) -> list[Any]:
    """(bot name, policy) pairs to attack: the spec's bots, or a default bot without a spec."""
    from clawpen.spec.policy import policy_from_flags

    file = _spec_file(ns)
    if file is None:
        if ns.bot:
            raise UsageError(
                f"no spec file to find bot {ns.bot!r} in",
                where="clawpen validate --hostile",
                hint="pass -f FILE, or run it next to clawpen.toml",
            )
        return [policy_from_flags(["true"], base_dir=os.getcwd(), name="hostile-default")]
    from clawpen.spec.loader import load_spec

    loaded = load_spec(file)
    bots = loaded.spec.bots
    if ns.bot and ns.bot not in bots:
        raise UsageError(
            f"no bot named {ns.bot!r} in {file}", where=file, hint=f"bots: {', '.join(bots) or 'none'}"
        )
    names = [ns.bot] if ns.bot else list(bots)
    if not names:
        raise UsageError(f"{file} has no bots", where=file, hint="add a [bots.NAME] section")
    return [bots[n].to_policy(n, str(loaded.base_dir)) for n in names]


def _hostile(ns: argparse.Namespace) -> int:
    from clawpen.validate.actions import ACTIONS
    from clawpen.validate.hostile import Outcome, all_contained, run_hostile, run_notes

    known = {a.id for a in ACTIONS} | {a.group for a in ACTIONS}
    unknown = [o for o in ns.only if o not in known]
    if unknown:
        raise UsageError(
            f"no hostile action or group {unknown[0]!r}",
            where="clawpen validate --only",
            hint=f"groups: {', '.join(sorted({a.group for a in ACTIONS}))}; ids: see docs/validate.md",
        )
    marks = {"contained": "ok", "escaped": "ESCAPED", "control-failed": "no-control", "error": "ERROR"}
    marks["not-judged"] = "NOT-JUDGED"
    marks["vm-boundary"] = "ok-vm"  # a kernel-attack action that met the guest's kernel
    safe = termsafe.for_stream(sys.stdout)  # what a hostile action printed is the bot's text
    report: dict[str, Any] = {}
    ok = True
    policies = _policies(ns)
    if ns.exec_path and any(p.vm is not None for p in policies):  # refused before any bot runs
        vm_bot = next(p.name for p in policies if p.vm is not None)
        raise UsageError(
            f"--exec cannot enter vm bot {vm_bot!r}: a running guest runs nothing but its bot "
            "(no guest agent)",
            where="clawpen validate --hostile --exec",
            hint="drop --exec (each action then runs in a throwaway guest of the bot's policy), "
            "or name another bot",
        )
    for given in policies:
        policy, notes = given, []
        if policy.egress:
            notes.append(
                "this bot has egress: its throwaway sandboxes ran without a gateway link (loopback only)"
            )
            policy = policy._replace(egress=(), allow_private=())

        def show(o: Outcome, bot: str = policy.name) -> None:
            if not ns.json:
                inside, control = safe(o.inside[:60]), safe(o.control[:50])
                print(f"{bot:<14} {marks[o.verdict]:<10} {o.id:<24} {inside}   [{control}]")

        if not ns.json:
            print(f"{'BOT':<14} {'RESULT':<10} {'ACTION':<24} INSIDE   [CONTROL OUTSIDE]")
        outcomes = run_hostile(
            policy, state_dir(), only=set(ns.only) or None, progress=show, entered=ns.exec_path
        )
        counts = {v: sum(o.verdict == v for o in outcomes) for v in marks}
        notes += run_notes(policy, outcomes, entered=ns.exec_path)
        report[policy.name] = {"counts": counts, "actions": [o.to_dict() for o in outcomes], "notes": notes}
        ok = ok and all_contained(outcomes)
        if not ns.json:
            print(
                f"{policy.name}: {counts['contained'] + counts['vm-boundary']} of {len(outcomes)} contained"
                + (f" ({counts['vm-boundary']} by the VM boundary)" if counts["vm-boundary"] else "")
                + f", {counts['escaped']} "
                f"escaped, {counts['control-failed']} without a working control, {counts['error']} errors"
                + (f", {counts['not-judged']} not judged" if counts["not-judged"] else "")
            )
            for note in notes:
                print(f"note: {note}")
    if ns.json:
        print(json.dumps({"ok": ok, "bots": report}, indent=2))
    return 0 if ok else 1


def cmd_validate(ns: argparse.Namespace) -> int:
    if ns.hostile:
        return _hostile(ns)
    if ns.only or ns.exec_path:
        flag = "--only" if ns.only else "--exec"
        raise UsageError(f"{flag} goes with --hostile", where="clawpen validate", hint="add --hostile")
    from clawpen.validate.report import render, validate_release

    if ns.live and ns.empty_workspace:
        raise UsageError("--empty-workspace is for the copy", where="clawpen validate", hint="drop --live")
    workspace = "empty" if ns.empty_workspace else "copy"
    result = validate_release(state_dir(), ns.bot, quick=ns.quick, live=ns.live, workspace=workspace)
    if ns.json:
        print(json.dumps(result, indent=2))
    else:
        render(termsafe.clean_for(sys.stdout, result))  # probes' output: shown, not obeyed
    return 0 if result["ok"] else 1


COMMANDS = {"init": cmd_init, "validate": cmd_validate}
