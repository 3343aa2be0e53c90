"""``clawpen release show N``, ``clawpen diff A [B]`` and ``clawpen rollback [N]``: inspect the
releases ``up`` recorded, compare two, and re-apply an earlier one (see docs/rollback.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from clawpen import termsafe
from clawpen.cli_daemon import _client, apply_flags, render_up, show_progress


def _number(raw: str) -> int:
    """A release number: a whole number from 1 (argparse turns the error into a usage error)."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a release number (1, 2, ...; see `clawpen releases`)"
        )
    return value


def add_commands(sub: Any) -> None:
    release = sub.add_parser("release", help="one release in detail: `clawpen release show N`")
    release.add_argument("action", choices=["show"])
    release.add_argument(
        "release", type=_number, metavar="N", help="the release's number (`clawpen releases`)"
    )
    release.add_argument("--json", action="store_true", help="machine-readable output")
    diff = sub.add_parser("diff", help="what changed between two releases: spec text and per bot")
    diff.add_argument("a", type=_number, metavar="A", help="the older release")
    diff.add_argument(
        "b", type=_number, nargs="?", metavar="B", help="the newer release (default: the latest)"
    )
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    rb = sub.add_parser(
        "rollback",
        help="re-apply an earlier release's spec (default: the one before the latest) as a new release",
    )
    rb.add_argument("release", type=_number, nargs="?", metavar="N", help="the release to go back to")
    apply_flags(rb, empty="go back to a release with no bots")
    rb.add_argument("--with-data", action="store_true", help="restore each bot's workspace as it was too")


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def cmd_release(ns: argparse.Namespace) -> int:
    data = _client().call("release_show", release=ns.release)
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    d = termsafe.clean_for(sys.stdout, data)
    print(f"release  {d['id']}")
    print(f"when     {_when(d['created'])}")
    print(f"who      {d['who']}")
    print(f"spec     {d['spec_path']} (sha256 {d['spec_hash']})")
    print(f"summary  {d['summary']}")
    if d.get("rollback_of") is not None:
        print(f"from     rollback of release {d['rollback_of']}")
    if d.get("bots") is None:
        print(f"bots     cannot be read by this clawpen: {d.get('problem')}")
    else:
        print("bots     (policy hash; * = what the daemon runs now)")
        for b in d["bots"]:
            print(f"  {b['bot']:<20} {b['policy_hash']}{' *' if b['running'] else ''}")
            _print_contents(b)
    print("spec text")
    for line in str(d["spec_text"]).splitlines():
        print(f"  {line}")
    return 0


def _print_contents(b: dict[str, Any]) -> None:
    """A bot's recorded code folders and build (nothing for a release of an older clawpen)."""
    for f in b.get("folders") or []:
        what = f["hash"] if f.get("state") == "ok" else f.get("state")
        print(f"    folder {f['source']} -> {f['target']}: {what}")
    build = b.get("build")
    if build:
        kept = "kept" if build.get("kept") else "not kept (a rollback rebuilds it)"
        print(f"    build  {build.get('key')}: output {build.get('output_hash') or 'unknown'}, {kept}")


def cmd_diff(ns: argparse.Namespace) -> int:
    data = _client().call("release_diff", a=ns.a, b=ns.b)
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    d = termsafe.clean_for(sys.stdout, data)
    print(f"release {d['a']} -> release {d['b']}")
    if d.get("bots") is None:
        print(f"per bot: cannot compare ({d.get('problem')})")
    else:
        for c in d["bots"]:
            if c["change"] == "unchanged":
                continue
            fields = f": {', '.join(c['fields'])}" if c["fields"] else ""
            print(f"  {c['change']:<8} {c['bot']}{fields}")
        if all(c["change"] == "unchanged" for c in d["bots"]):
            print("  no bot changed")
    print(d["spec_diff"] or "(the spec texts are identical)", end="" if d["spec_diff"] else "\n")
    return 0


def cmd_rollback(ns: argparse.Namespace) -> int:
    """Exit codes as `up`'s: 0 applied and up, 1 a changed bot did not come up, 2 refused (an
    unknown release, a check that fails: nothing changed)."""
    from clawpen.audit import caller

    result = _client().call_with_progress(
        "rollback",
        show_progress,
        release=ns.release,
        dry_run=ns.dry_run,
        who=caller(),
        progress=not ns.json,
        wait=not ns.detach,
        wait_timeout=ns.wait_timeout,
        allow_empty=ns.allow_empty,
        **({"no_snapshot": True} if ns.no_snapshot else {}),
        **({"with_data": True} if ns.with_data else {}),
    )
    if not ns.json:
        target = result.get("rollback_of")
        if ns.dry_run:
            print(f"a rollback to release {target}:")
        else:
            print(f"release {result.get('release')}: rollback of release {target}")
        for warning in result.get("warnings") or []:
            print(f"warning: {termsafe.clean_for(sys.stderr, warning)}", file=sys.stderr)
        for d in termsafe.clean_for(sys.stdout, result.get("data") or []):
            aside = f"; its data was {d['previous']}, snapshot {d['saved']}" if d.get("previous") else ""
            gets = "would get" if ns.dry_run else "got"
            snap = f"snapshot {d['snapshot'][:8]} (before release {d['from_release']})"
            print(f"  {d['bot']}: {gets} {snap}{aside}")
    return render_up(result, json_out=ns.json, dry_run=ns.dry_run)


COMMANDS = {"release": cmd_release, "diff": cmd_diff, "rollback": cmd_rollback}
