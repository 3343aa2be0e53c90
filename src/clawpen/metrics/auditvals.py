"""Host metrics from the kept audit reports (``clawpen audit`` and the daemon's scheduled runs):
the risk score, the critical and high findings, and the age of the audit. Each group counts
from the newest report that covered it, so ``clawpen audit --only spec`` does not hide the host's
findings of the last full audit. Read again only when a new report is kept."""

from __future__ import annotations

from pathlib import Path

from clawpen.assess import report
from clawpen.assess.model import GROUPS, Severity

LOOK_BACK = 30  # kept reports read, newest first, to cover every group


class AuditValues:
    def __init__(self, state: Path) -> None:
        self.state = state
        self._key: int | None = None  # the reports folder's mtime when it was last read
        self._values: dict[str, float] = {}
        self._at = 0.0

    def _load(self, paths: list[Path]) -> None:
        findings = []
        covered: set[str] = set()
        newest = 0.0
        for path in paths[:LOOK_BACK]:
            rep = report.load(path)
            if rep is None or rep.part:  # a part of a group does not stand for the whole group
                continue
            newest = max(newest, rep.started)
            fresh = [g for g in rep.groups if g not in covered]
            findings += [f for f in rep.findings if f.group in fresh]
            covered |= set(fresh)
            if covered >= set(GROUPS):
                break
        self._at = newest
        self._values = {
            "audit_score": float(sum(f.points for f in findings)),
            "audit_critical": float(sum(f.severity == Severity.CRITICAL for f in findings)),
            "audit_high": float(sum(f.severity == Severity.HIGH for f in findings)),
        }

    def values(self, now: float) -> dict[str, float]:
        """The metrics now; empty when no report was kept. The monitor asks every interval: the
        folder is listed and read again only when a report was kept (or removed) since."""
        try:
            key = report.reports_dir(self.state).stat().st_mtime_ns
        except OSError:
            return {}
        if key != self._key:
            self._key = key
            paths = report.kept(self.state)
            if paths:
                self._load(paths)
            else:
                self._values = {}
        if not self._values:
            return {}
        return {**self._values, "audit_age_seconds": max(0.0, now - self._at)}
