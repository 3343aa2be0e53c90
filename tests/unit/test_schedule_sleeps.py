"""The audit and snapshot schedules sleep until their next due run (issue 22: an idle daemon is
not woken every minute); a run that is due but was skipped is looked at again in a minute."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from clawpen.daemon import audit_schedule as aus
from clawpen.daemon import snapshot_schedule as sns
from clawpen.snapshots.restic import Keep
from clawpen.spec.auditing import AuditSettings

DAY = 86400.0


def _daemon(state: Path, now: float) -> Any:
    return SimpleNamespace(services=SimpleNamespace(clock=lambda: now, state_dir=state))


def test_the_audit_schedule_sleeps_until_the_next_due_run(tmp_path: Path) -> None:
    now = 1_000_000.0
    sched = aus.AuditScheduler(_daemon(tmp_path, now), clock=lambda: now)
    settings = AuditSettings(host="daily", vulnerabilities="off", dependencies="off", logins="off")
    # never ran: first run FIRST_DELAY (10 min) after the start
    assert sched.wait(settings, now) == aus.FIRST_DELAY
    # ran 23 h ago: due in an hour (the longest sleep)
    (tmp_path / "audit").mkdir()
    (tmp_path / aus.STATE_FILE).write_text(json.dumps({"host": now - 23 * 3600}))
    assert sched.wait(settings, now) == aus.MAX_WAIT
    # ran 23 h 50 min ago: due in 10 min, not looked at every minute before then
    (tmp_path / aus.STATE_FILE).write_text(json.dumps({"host": now - DAY + 600}))
    assert sched.wait(settings, now) == 600.0
    # overdue (it runs at the tick): the next look is no sooner than a minute
    (tmp_path / aus.STATE_FILE).write_text(json.dumps({"host": now - 2 * DAY}))
    assert sched.wait(settings, now) == aus.INTERVAL
    # nothing scheduled: one look an hour
    off = AuditSettings(host="off", vulnerabilities="off", dependencies="off", logins="off")
    assert sched.wait(off, now) == aus.MAX_WAIT


def test_the_snapshot_schedule_sleeps_until_the_next_due_run(tmp_path: Path) -> None:
    now = 2_000_000.0
    sched = sns.Scheduler(_daemon(tmp_path, now), clock=lambda: now, repo=lambda: None)  # type: ignore[arg-type,return-value]
    assert sched.wait() == sns.MAX_WAIT  # nothing scheduled
    sched._plan = {"bot": (6 * 3600.0, Keep())}
    sched._last["bot"] = now - 6 * 3600.0 + 900  # due in 15 min
    assert sched.wait() == 900.0
    sched._retry["bot"] = now + 1800  # it failed: not before its retry time
    assert sched.wait() == 1800.0
    sched._retry.clear()
    sched._last["bot"] = now - 7 * 3600.0  # due now, but skipped (its bot was busy): in a minute
    assert sched.wait() == sns.INTERVAL
