"""Running an audit: every group's checks into one :class:`Report`, kept, compared, shown.

A group whose checks fail with an unexpected error gives one ``audit.failed`` finding (INFO) and
the other groups still run: a report is never lost to one unreadable file. Reports are kept as
JSON in ``<state>/audit/reports/`` (the newest ``keep``), so ``clawpen audit --since last`` shows
what is new and what was fixed since the previous one.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpen.assess.model import (
    GROUPS,
    AuditContext,
    AuditFinding,
    CheckInfo,
    Severity,
    counts,
    finding,
    score,
)
from clawpen.errors import ClawpenError
from clawpen.fsutil import write_atomic

log = logging.getLogger(__name__)

# the module of each group's checks: CHECKS and run(ctx)
MODULES: dict[str, tuple[str, ...]] = {
    "host": ("clawpen.assess.host",),
    "spec": ("clawpen.assess.botspec",),
    "dependencies": ("clawpen.assess.depaudit",),
    "logins": ("clawpen.assess.logins",),
    "configuration": ("clawpen.assess.config",),
}
# a part of a group a schedule runs alone: (group, module:function)
PARTS: dict[str, tuple[str, str]] = {
    "vulnerabilities": ("dependencies", "clawpen.assess.depaudit:run_vulnerable"),
    "outdated": ("dependencies", "clawpen.assess.depaudit:run_outdated"),
}
FAILED = CheckInfo("audit.failed", "configuration", "a group of checks could not run", "clawpen")
REPORTS = "audit/reports"
FORMAT = 1


@dataclass
class Report:
    """One audit's result. ``files`` are the watched files' hashes (the next audit compares)."""

    started: float
    took: float
    root: str
    spec: str | None
    groups: tuple[str, ...]
    findings: list[AuditFinding]
    files: dict[str, str] = field(default_factory=dict)
    part: str = ""  # a part of PARTS run alone (a scheduled run); "" for whole groups
    exposures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> int:
        return score(self.findings)

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.findings)

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "started": self.started,
            "took": round(self.took, 3),
            "root": self.root,
            "spec": self.spec,
            "groups": list(self.groups),
            "part": self.part,
            "score": self.score,
            "counts": self.counts,
            "exposures": self.exposures,
            "findings": [f.to_json() for f in self.findings],
            "files": self.files,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Report:
        return cls(
            started=float(raw["started"]),
            took=float(raw.get("took", 0.0)),
            root=str(raw.get("root", "/")),
            spec=raw.get("spec"),
            groups=tuple(raw.get("groups", GROUPS)),
            findings=[AuditFinding.from_json(f) for f in raw.get("findings", [])],
            files=dict(raw.get("files", {})),
            exposures=list(raw.get("exposures", [])),
            part=str(raw.get("part", "")),
        )


def check_groups(names: Iterable[str]) -> tuple[str, ...]:
    out = []
    for name in names:
        if name not in GROUPS:
            raise ValueError(f"{name!r} is not a group of checks: use {', '.join(GROUPS)}")
        out.append(name)
    return tuple(dict.fromkeys(out))


def catalogue() -> list[CheckInfo]:
    """Every check of every group (docs/audit.md lists them)."""
    out: list[CheckInfo] = []
    for group in GROUPS:
        for name in MODULES[group]:
            out.extend(importlib.import_module(name).CHECKS)
    return out


def _entry(name: str) -> Any:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function or "run")


def run(ctx: AuditContext, groups: Sequence[str] = GROUPS, part: str = "") -> Report:
    """Run ``groups`` on ``ctx`` (or just ``part``, a key of :data:`PARTS`). A
    :class:`ClawpenError` (a spec that does not load) stops it."""
    started = time.monotonic()
    findings: list[AuditFinding] = []
    if part:
        groups = (PARTS[part][0],)
    for group in groups:
        for name in (PARTS[part][1],) if part else MODULES[group]:
            try:
                found = _entry(name)(ctx)
            except ClawpenError:
                raise
            except Exception as err:  # one group's bug must not lose the report
                log.info(
                    "audit group %s failed", group, exc_info=True
                )  # the daemon's log; no traceback on a terminal
                what = f"the {group} checks could not run: {type(err).__name__}: {err}"
                why = "a check that did not run hides what it would have found"
                fix = "run `clawpen --debug audit` and report the traceback"
                found = [
                    dataclasses.replace(
                        finding(FAILED, Severity.INFO, what, why, fix, subject=group), group=group
                    )
                ]
            findings.extend(found)
    findings.sort(
        key=lambda f: (GROUPS.index(f.group) if f.group in GROUPS else 99, -f.severity, f.check, f.subject)
    )
    from clawpen.assess import botspec, config

    exposures = []
    if "spec" in groups and ctx.spec_path is not None:
        from clawpen.spec.loader import load_spec

        for bot in load_spec(ctx.spec_path).spec.bots:
            e = botspec.exposure(bot, [f for f in findings if f.group == "spec"])
            exposures.append({"bot": bot, "exposure": e.value, "label": e.label, "failed": list(e.failed)})
    return Report(
        started=ctx.now,
        took=time.monotonic() - started,
        root=str(ctx.root),
        spec=str(ctx.spec_path) if ctx.spec_path else None,
        groups=tuple(groups),
        findings=findings,
        files=config.fingerprints(ctx) if "configuration" in groups else {},
        exposures=exposures,
        part=part,
    )


# ------------------------------------------------------------------------- kept reports
def reports_dir(state: Path) -> Path:
    return state / REPORTS


def save(state: Path, report: Report, keep: int = 60) -> Path:
    """Keep ``report`` (atomic, 0600) and drop all but the newest ``keep``."""
    folder = reports_dir(state)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report.started)) + f"{report.started % 1:.6f}"[1:]
    path = folder / f"{stamp}Z.json"
    write_atomic(path, json.dumps(report.to_json(), indent=1).encode(), mode=0o600)
    for old in kept(state)[keep:]:
        old.unlink(missing_ok=True)
    return path


def kept(state: Path) -> list[Path]:
    """The kept reports, newest first."""
    try:
        return sorted(reports_dir(state).glob("*Z.json"), reverse=True)
    except OSError:
        return []


def load(path: Path) -> Report | None:
    """A kept report, or None when it is unreadable or not a report (never an exception)."""
    try:
        raw = json.loads(path.read_text())
        return Report.from_json(raw) if isinstance(raw, dict) and raw.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def last(state: Path, groups: Sequence[str] | None = None, part: str | None = None) -> Report | None:
    """The newest kept report that parses (and covered ``groups``, and was of ``part``, when given)."""
    for path in kept(state):
        report = load(path)
        if report is None or (groups is not None and not set(groups) <= set(report.groups)):
            continue
        if part is None or report.part == part:
            return report
    return None


@dataclass(frozen=True)
class Diff:
    new: list[AuditFinding]
    fixed: list[AuditFinding]
    same: int
    score_before: int
    score_after: int


def diff(before: Report, after: Report) -> Diff:
    """Findings of ``after`` that ``before`` lacked (new) and the reverse (fixed), by (check, subject),
    over the groups both covered."""
    both = set(before.groups) & set(after.groups)
    old = {f.key: f for f in before.findings if f.group in both}
    now = {f.key: f for f in after.findings if f.group in both}
    return Diff(
        new=[f for k, f in now.items() if k not in old],
        fixed=[f for k, f in old.items() if k not in now],
        same=len(set(old) & set(now)),
        score_before=score(old.values()),
        score_after=score(now.values()),
    )


def previous_files(state: Path | None) -> dict[str, str]:
    """The watched files' hashes of the newest kept report with the configuration group."""
    if state is None:
        return {}
    report = last(state, ("configuration",), "")
    return report.files if report else {}


def at_least(report: Report, level: Severity) -> list[AuditFinding]:
    return [f for f in report.findings if f.severity >= level]
