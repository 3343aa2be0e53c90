"""``clawpen audit``: the deployment's risk picture in one report, with a fix for each finding.

Runs locally (root sees /etc/shadow and every process's sockets); the daemon runs the same checks
on the ``[audit]`` schedule. Exit codes: 0, 1 when ``--fail-on`` finds a finding at or above its
severity, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawpen import termsafe
from clawpen.errors import UsageError

if TYPE_CHECKING:
    from clawpen.assess.model import AuditFinding
    from clawpen.assess.report import Diff, Report

SEVERITIES = ("critical", "high", "medium", "low", "info")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("audit", help="audit the host, the spec, dependencies, logins and changes, with fixes")
    p.add_argument("-f", "--file", metavar="FILE", help="spec file (default clawpen.toml, when it exists)")
    p.add_argument("--root", metavar="DIR", default="/", help="audit the system in DIR (a mounted image)")
    p.add_argument(
        "--only", metavar="GROUPS", help="comma-separated: host,spec,dependencies,logins,configuration"
    )
    p.add_argument(
        "--fail-on", metavar="SEVERITY", choices=SEVERITIES, help="exit 1 on a finding this bad or worse"
    )
    p.add_argument(
        "--since", metavar="last|FILE", help="show what is new and what was fixed since a kept report"
    )
    p.add_argument(
        "--osv", metavar="FILE", help="an offline OSV export (zip, folder or JSON) for vulnerabilities"
    )
    p.add_argument("--offline", action="store_true", help="do not ask OSV's API or the package registries")
    p.add_argument("--no-save", action="store_true", help="do not keep this report in the state folder")
    p.add_argument(
        "--scheduled",
        metavar="NAME",
        choices=("host", "vulnerabilities", "dependencies", "logins"),
        help="run that scheduled audit in the daemon now; its new findings are notified",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _context(ns: argparse.Namespace, state: Path) -> tuple[Any, tuple[str, ...], Any]:
    """The audit's context, its groups, and the spec's ``[audit]`` settings (None without a spec)."""
    from clawpen.assess import report
    from clawpen.assess.model import GROUPS, AuditContext
    from clawpen.daemon import auditfacts
    from clawpen.spec.loader import load_spec

    try:
        groups = (
            report.check_groups(g.strip() for g in ns.only.split(",") if g.strip()) if ns.only else GROUPS
        )
    except ValueError as err:
        raise UsageError(str(err), where="--only", hint="e.g. --only host,spec") from None
    root = Path(ns.root).resolve()
    if not root.is_dir():
        raise UsageError(
            f"{ns.root} is not a folder", where="--root", hint="give the root folder of a system"
        )
    spec_path: Path | None = None
    if ns.file is not None or Path("clawpen.toml").exists():
        spec_path = Path(ns.file or "clawpen.toml").resolve()
        loaded = load_spec(spec_path)  # a spec that does not load: exit 2 here, before any check
        settings = loaded.spec.audit
    else:
        settings = None
    osv = Path(ns.osv).resolve() if ns.osv else (Path(settings.osv) if settings and settings.osv else None)
    if osv is not None and not osv.exists():
        raise UsageError(
            f"the OSV export {osv} does not exist", where="--osv", hint="give a zip, folder or JSON file"
        )
    live = root == Path("/")
    release, anchors = auditfacts.read(state) if live else (None, ())
    ctx = AuditContext(
        root=root,
        live=live,
        spec_path=spec_path,
        state_dir=state if live else None,
        osv=osv,
        online=not ns.offline and (settings.online if settings else True),
        release=release,
        anchors=anchors,
        previous_files=report.previous_files(state) if live else {},
    )
    return ctx, groups, settings


def cmd_audit(ns: argparse.Namespace) -> int:
    from clawpen.assess import report
    from clawpen.assess.model import Severity
    from clawpen.paths import state_dir

    if ns.scheduled is not None:
        return _scheduled(ns)
    state = state_dir()
    before = None
    if ns.since is not None:
        if ns.since == "last":
            before = report.last(state)
            if before is None:
                raise UsageError(
                    "no kept audit report to compare with",
                    where="--since last",
                    hint="run `clawpen audit` once first (reports are kept in the state folder)",
                )
        else:
            before = report.load(Path(ns.since))
            if before is None:
                raise UsageError(
                    f"{ns.since} is not a clawpen audit report",
                    where="--since",
                    hint="give `last` or a file from the state folder's audit/reports",
                )
    ctx, groups, settings = _context(ns, state)
    result = report.run(ctx, groups)
    if not ns.no_save and ctx.live:
        keep = settings.keep_reports if settings is not None else 60
        try:
            report.save(state, result, keep)
        except OSError as err:
            print(f"warning: the report could not be kept ({err.strerror or err})", file=sys.stderr)
    changes = report.diff(before, result) if before is not None else None
    if ns.json:
        out = result.to_json()
        if changes is not None:
            out["since"] = {
                "started": before.started if before else None,
                "new": [f.to_json() for f in changes.new],
                "fixed": [f.to_json() for f in changes.fixed],
                "unchanged": changes.same,
            }
        print(json.dumps(out, indent=2))
    else:
        _show(result, changes)
    if ns.fail_on is not None and report.at_least(result, Severity.parse(ns.fail_on)):
        return 1
    return 0


def _scheduled(ns: argparse.Namespace) -> int:
    from clawpen.daemon.client import Client
    from clawpen.paths import state_dir

    reply = Client(state_dir()).call("audit_run", schedule=ns.scheduled)
    if ns.json:
        print(json.dumps(reply, indent=2))
    else:
        print(
            f"{reply['schedule']} audit: risk score {reply['score']}, {reply['new']} new finding(s), "
            f"{reply['notified']} notified (see `clawpen events` and `clawpen audit --since last`)"
        )
    return 0


_MARK = {"critical": "CRIT", "high": "HIGH", "medium": "MED ", "low": "LOW ", "info": "INFO"}


def _line(f: AuditFinding, safe: Any, *, details: bool = True) -> list[str]:
    where = f"  ({safe(f.where)})" if f.where else ""
    out = [f"  {_MARK[f.severity.label]}  {safe(f.title)}{where}"]
    if details:
        out.append(f"        why: {safe(f.why)}")
        out.append(f"        fix: {safe(f.fix)}")
        if f.source:
            out.append(f"        see: {safe(f.source)}")
    return out


def _show(result: Report, changes: Diff | None) -> None:
    from clawpen.assess.model import GROUPS

    safe = termsafe.for_stream(sys.stdout)  # findings quote names and paths from files
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result.started))
    print(
        f"clawpen audit of {safe(result.root)}"
        + (f" and {safe(result.spec)}" if result.spec else "")
        + f", {when}"
    )
    c = result.counts
    summary = ", ".join(f"{n} {label}" for label, n in c.items() if n and label != "info") or "no findings"
    print(f"risk score {result.score} (lower is better): {summary}; {result.took:.1f}s")
    for group in GROUPS:
        if group not in result.groups:
            continue
        found = [f for f in result.findings if f.group == group]
        print(
            f"\n{group}: "
            + (f"{len(found)} finding{'s' if len(found) != 1 else ''}" if found else "nothing found")
        )
        for f in found:
            print("\n".join(_line(f, safe)))
        if group == "spec" and result.exposures:
            print("  exposure of each bot (0 = locked down, 10 = open), like systemd-analyze security:")
            for e in result.exposures:
                print(f"    {safe(e['bot']):<24} {e['exposure']:>4.1f}  {e['label']}")
    if changes is not None:
        print(
            f"\nsince the compared report: score {changes.score_before} -> {changes.score_after}, "
            f"{len(changes.new)} new, {len(changes.fixed)} fixed, {changes.same} unchanged"
        )
        for f in changes.new:
            print("  new  " + "\n".join(_line(f, safe, details=False)).strip())
        for f in changes.fixed:
            print("  fixed " + "\n".join(_line(f, safe, details=False)).strip())


COMMANDS = {"audit": cmd_audit}
