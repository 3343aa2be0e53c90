"""Scheduled audits (docs/audit.md): ``[audit]`` of the applied spec, run by the daemon.

Each schedule covers groups of ``clawpen audit``: ``host`` the host, spec and configuration
groups; ``vulnerabilities`` the known-vulnerability part of the dependencies group and
``dependencies`` its outdated-package part; ``logins = "daily"`` the logins group
(``"realtime"``: a follower of the host's login records, :mod:`clawpen.daemon.audit_logins`).
When each schedule last ran is kept in ``<state>/audit/schedule.json``, so a restarted daemon
does not audit again at once; a schedule that never ran first runs :data:`FIRST_DELAY` after the
daemon started (not during its start).

A run is an ``audit-run`` event (its score and what changed); each finding it newly found at or
above ``notify`` is an ``audit-finding`` event, which the monitor sends to the notifiers
(``[AUDIT]``). Reports are kept like those of ``clawpen audit`` (``--since last`` compares).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawpen.daemon.snapshot_schedule import LoopComponent
from clawpen.errors import UsageError
from clawpen.fsutil import write_atomic
from clawpen.ops import Call, Contract, Reply, Request

if TYPE_CHECKING:
    from clawpen.assess.model import AuditFinding
    from clawpen.daemon.server import Daemon
    from clawpen.spec.auditing import AuditSettings

log = logging.getLogger(__name__)
RUN = "audit-run"
FINDING = "audit-finding"
INTERVAL = 60.0  # the shortest sleep between two looks at the schedule
MAX_WAIT = 3600.0  # the longest (nothing scheduled, or due later): it sleeps until the next due run
FIRST_DELAY = 600.0  # a schedule that never ran first runs this long after the daemon started
STATE_FILE = "audit/schedule.json"
# schedule -> (groups, part of a group run alone: clawpen.assess.report.PARTS)
SCHEDULES: dict[str, tuple[tuple[str, ...], str]] = {
    "host": (("host", "spec", "configuration"), ""),
    "vulnerabilities": (("dependencies",), "vulnerabilities"),
    "dependencies": (("dependencies",), "outdated"),
    "logins": (("logins",), ""),
}


class AuditRunRequest(Request):
    schedule: str = "host"


class AuditRunReply(Reply):
    schedule: str
    score: int
    new: int
    notified: int


AUDIT_RUN = Contract(
    "audit_run", "admin", AuditRunRequest, AuditRunReply,
    "run a scheduled audit now (host, vulnerabilities, dependencies, logins); new findings are notified",
)  # fmt: skip
CONTRACTS = (AUDIT_RUN,)


def periods(settings: AuditSettings) -> dict[str, float]:
    """``{schedule: seconds}`` of the schedules that are on (real-time logins are not periodic)."""
    from clawpen.spec.auditing import period

    out: dict[str, float] = {}
    for name, every in (
        ("host", settings.host),
        ("vulnerabilities", settings.vulnerabilities),
        ("dependencies", settings.dependencies),
    ):
        if (p := period(every)) is not None:
            out[name] = p
    if settings.logins == "daily":
        out["logins"] = 86400.0
    return out


def finding_reason(f: AuditFinding) -> str:
    """The event text of a new finding: severity, title, where, and the fix."""
    where = f" ({f.where})" if f.where else ""
    return f"{f.severity.label}: {f.title}{where}. Fix: {f.fix}"


class AuditScheduler:
    """Runs the schedule; :meth:`tick` is one pass at ``now`` (tests call it with their clock)."""

    def __init__(self, daemon: Daemon, *, clock: Callable[[], float] | None = None) -> None:
        self.daemon = daemon
        self.clock = clock or daemon.services.clock
        self.state = daemon.services.state_dir
        self._lock = asyncio.Lock()
        self.started = self.clock()
        self.settings: AuditSettings | None = None  # what the last tick read of the spec

    def _last(self) -> dict[str, float]:
        try:
            raw = json.loads((self.state / STATE_FILE).read_text())
            return {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        except (OSError, ValueError, TypeError):
            return {}

    def _mark(self, name: str, at: float) -> None:
        last = self._last() | {name: at}
        path = self.state / STATE_FILE
        with contextlib.suppress(OSError):  # a full disk: it runs again next time, nothing worse
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, json.dumps(last).encode(), mode=0o600)

    def due(self, settings: AuditSettings, now: float) -> list[str]:
        last = self._last()
        out = []
        for name, every in periods(settings).items():
            at = last.get(name)
            if (now - at >= every) if at is not None else (now - self.started >= FIRST_DELAY):
                out.append(name)
        return out

    def wait(self, settings: AuditSettings, now: float) -> float:
        """Seconds from ``now`` to the next due schedule (between INTERVAL and MAX_WAIT)."""
        last = self._last()
        soonest = MAX_WAIT
        for name, every in periods(settings).items():
            at = last.get(name)
            soonest = min(
                soonest, (at + every - now) if at is not None else (self.started + FIRST_DELAY - now)
            )
        return min(MAX_WAIT, max(INTERVAL, soonest))

    async def tick(self, now: float | None = None) -> list[str]:
        """Run every due schedule; the names run."""
        from clawpen.spec.auditing import AuditSettings

        now = self.clock() if now is None else now
        spec = self.daemon.current_spec()
        settings = self.settings = spec.audit if spec is not None else AuditSettings()
        ran = []
        async with self._lock:
            for name in self.due(settings, now):
                await self.run(name, settings, now)
                ran.append(name)
        return ran

    async def run_now(self, name: str) -> AuditRunReply:
        """Run schedule ``name`` at once (the ``audit_run`` operation)."""
        from clawpen.spec.auditing import AuditSettings

        if name not in SCHEDULES:
            hint = f"use one of {', '.join(SCHEDULES)}"
            raise UsageError(f"{name!r} is not a scheduled audit", where="schedule", hint=hint)
        spec = self.daemon.current_spec()
        settings = spec.audit if spec is not None else AuditSettings()
        async with self._lock:
            return await self.run(name, settings, self.clock())

    async def run(self, name: str, settings: AuditSettings, now: float) -> AuditRunReply:
        from clawpen.assess import report
        from clawpen.assess.model import Severity

        groups, part = SCHEDULES[name]
        ctx = await asyncio.to_thread(self._context, settings, now)
        before = report.last(self.state, groups, part)
        try:
            result = await asyncio.to_thread(report.run, ctx, groups, part)
        except Exception as err:  # a spec that no longer loads, a bug: say so, try again next period
            log.exception("scheduled audit %s failed", name)
            self.daemon.note(RUN, f"the scheduled {name} audit failed: {err}")
            self._mark(name, now)
            return AuditRunReply(schedule=name, score=-1, new=0, notified=0)
        with contextlib.suppress(OSError):
            report.save(self.state, result, settings.keep_reports)
        self._mark(name, now)
        if before is None:
            new = result.findings
            what = f"{len(new)} findings (first run)"
        else:
            changes = report.diff(before, result)
            new = changes.new
            what = f"{len(changes.new)} new, {len(changes.fixed)} fixed"
        self.daemon.note(RUN, f"{name} audit ({', '.join(groups)}): risk score {result.score}, {what}")
        threshold = Severity.parse(settings.notify)
        notified = 0
        for f in new:
            if f.severity >= threshold:
                bot = f.subject.split(":")[0] if f.group == "spec" else None
                self.daemon.note(FINDING, finding_reason(f), bot=bot)
                notified += 1
        return AuditRunReply(schedule=name, score=result.score, new=len(new), notified=notified)

    def _context(self, settings: AuditSettings, now: float) -> Any:
        from clawpen.assess import report
        from clawpen.assess.model import AuditContext
        from clawpen.daemon import auditfacts

        latest = self.daemon.store.latest_spec()
        spec_path = Path(latest[0]) if latest is not None and Path(latest[0]).is_file() else None
        release, anchors = auditfacts.read(self.state)
        return AuditContext(
            root=Path("/"),
            live=True,
            spec_path=spec_path,
            state_dir=self.state,
            osv=Path(settings.osv) if settings.osv else None,
            online=settings.online,
            now=now,
            release=release,
            anchors=anchors,
            previous_files=report.previous_files(self.state),
        )

    async def forever(self, wake: asyncio.Event) -> None:
        """Tick, then sleep until the next schedule is due (:meth:`wait`: not every minute), or
        until ``wake`` (an applied ``up``)."""
        while True:
            pause = INTERVAL
            try:
                await self.tick()
                pause = self.wait(self.settings, self.clock()) if self.settings is not None else INTERVAL
            except Exception:  # never let the schedule die
                log.exception("audit schedule")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
            wake.clear()


class AuditComponent(LoopComponent[AuditScheduler]):
    """The daemon component (daemon/app.py) running an :class:`AuditScheduler` every ``INTERVAL``
    and serving ``audit_run``."""

    name = "audit-schedule"

    def make(self, daemon: Daemon) -> AuditScheduler:
        scheduler = AuditScheduler(daemon)

        async def op_run(req: AuditRunRequest, _call: Call) -> AuditRunReply:
            return await scheduler.run_now(req.schedule)

        daemon.add_ops([AUDIT_RUN.bind(op_run)])
        return scheduler
