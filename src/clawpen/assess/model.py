"""The records of an audit: checks, findings, their severities and the report's score.

A check module exposes ``CHECKS`` (the :class:`CheckInfo` of every check it can report: its id,
title and source, listed in docs/audit.md) and ``run(ctx) -> list[AuditFinding]``. A finding is
only what is wrong (or worth knowing); a passed check reports nothing. Ids are stable
(``host.ssh.password_login``): ``--since last`` compares reports by ``(check, subject)``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GROUPS = ("host", "spec", "dependencies", "logins", "configuration")


class Severity(enum.IntEnum):
    """How bad a finding is; the value orders them. ``INFO`` is shown but scores nothing."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"{text!r} is not a severity: use critical, high, medium, low or info") from None


# Risk points per finding: the report's total is their sum (0 is a clean deployment).
POINTS = {Severity.INFO: 0, Severity.LOW: 1, Severity.MEDIUM: 3, Severity.HIGH: 7, Severity.CRITICAL: 15}


@dataclass(frozen=True)
class CheckInfo:
    """One check a module can report: ``source`` names where the rule comes from (a CIS Debian
    benchmark item, a Lynis test id, systemd-analyze, the deployment practice)."""

    id: str
    group: str
    title: str
    source: str


@dataclass(frozen=True)
class AuditFinding:
    """One finding. ``subject`` tells findings of one check apart (a bot, a package, an address,
    a port); ``where`` points at it (``clawpen.toml:12``, ``/etc/ssh/sshd_config:33``, a lockfile)."""

    check: str
    group: str
    severity: Severity
    title: str
    why: str
    fix: str
    where: str = ""
    subject: str = ""
    source: str = ""
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.check, self.subject)

    @property
    def points(self) -> int:
        return POINTS[self.severity]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["severity"] = self.severity.label
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AuditFinding:
        severity = Severity.parse(str(raw["severity"]))
        return cls(**{**raw, "severity": severity, "data": dict(raw.get("data") or {})})


def finding(info: CheckInfo, severity: Severity, title: str, why: str, fix: str, **rest: Any) -> AuditFinding:
    """A finding of the check ``info`` (its id, group and source filled in)."""
    return AuditFinding(info.id, info.group, severity, title, why, fix, source=info.source, **rest)


@dataclass(frozen=True)
class ReleaseFacts:
    """What the daemon's state says about the newest release (the caller reads it: the state
    database belongs to a layer above). ``code_changes`` maps a bot to how its code folders now
    differ from what the release ran (empty: unchanged)."""

    id: int
    created: float
    who: str
    spec_path: str
    spec_hash: str
    code_changes: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditContext:
    """What the checks read. ``root`` is the system's root folder (``/`` for this host); the
    live parts (listening sockets, processes, the kernel) are read only when ``live`` is true.
    ``spec_path`` is None when no spec is audited. ``osv`` is an offline OSV export (a zip of
    OSV JSON files, a folder of them, or one JSON file) or None; ``online`` allows asking
    OSV's API (api.osv.dev) and the package registries. ``state_dir`` is clawpen's state
    (audit log, kept reports, known login addresses)."""

    root: Path = Path("/")
    live: bool = True
    spec_path: Path | None = None
    state_dir: Path | None = None
    osv: Path | None = None
    online: bool = False
    now: float = field(default_factory=time.time)
    release: ReleaseFacts | None = None
    anchors: tuple[tuple[int, str], ...] = ()  # the audit log's heads kept in the state database
    previous_files: dict[str, str] = field(default_factory=dict)  # watched files' hashes last time

    def path(self, absolute: str) -> Path:
        """``absolute`` (``/etc/ssh/sshd_config``) inside :attr:`root`."""
        return self.root / absolute.lstrip("/")


def score(findings: Iterable[AuditFinding]) -> int:
    """The report's risk points: the sum over its findings (lower is better)."""
    return sum(f.points for f in findings)


def counts(findings: Iterable[AuditFinding]) -> dict[str, int]:
    """Findings per severity label, every severity present (0 when none)."""
    out = {s.label: 0 for s in sorted(Severity, reverse=True)}
    for f in findings:
        out[f.severity.label] += 1
    return out


def shown_path(ctx: AuditContext, path: Path) -> str:
    """``path`` as the audited system sees it (``/etc/passwd``, not ``/tmp/root/etc/passwd``)."""
    try:
        return "/" + str(path.relative_to(ctx.root)).lstrip("/") if ctx.root != Path("/") else str(path)
    except ValueError:
        return str(path)
