"""``[audit]``: the audits the daemon runs on a schedule (the deployment practice: a vulnerability
scan monthly, dependency updates weekly, unusual logins in real time), and where the findings go::

    [audit]
    vulnerabilities = "monthly"   # known vulnerabilities in the bots' and host's packages (OSV)
    dependencies    = "weekly"    # outdated packages
    logins          = "realtime"  # failed-login bursts, root logins, new source addresses
    host            = "weekly"    # the host and spec checks of `clawpen audit`
    osv             = "/var/lib/clawpen/osv/all.zip"   # an offline OSV export (optional)
    online          = true        # ask OSV's API and the package registries when reachable
    notify          = "high"      # findings at or above this severity are notified

A run's new findings become ``audit`` events; those at or above ``notify`` reach the notifiers.
None of this is part of a bot's policy hash: changing it restarts nothing.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from clawpen.spec import rules

Every = Literal["off", "daily", "weekly", "monthly"]
PERIODS: dict[str, float | None] = {
    "off": None,
    "daily": 86400.0,
    "weekly": 7 * 86400.0,
    "monthly": 30 * 86400.0,
}


class AuditSettings(BaseModel):
    """``[audit]``: scheduled audits and their notifications."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vulnerabilities: Every = Field(
        "monthly", description="known-vulnerability scan (OSV): off|daily|weekly|monthly"
    )
    dependencies: Every = Field("weekly", description="outdated-dependency check: off|daily|weekly|monthly")
    logins: Literal["off", "daily", "realtime"] = Field(
        "realtime", description="login audit: followed as they happen (realtime), daily, or off"
    )
    host: Every = Field(
        "weekly", description="the host, spec and configuration checks: off|daily|weekly|monthly"
    )
    osv: str | None = Field(
        None, description="an offline OSV export: a zip of OSV JSON files, a folder, or a JSON file"
    )
    online: bool = Field(True, description="ask OSV's API and the package registries when they answer")
    notify: Literal["critical", "high", "medium", "low", "info"] = Field(
        "high", description="notify findings at or above this severity"
    )
    keep_reports: int = Field(
        60, ge=1, le=10_000, description="how many audit reports stay in the state folder"
    )

    @field_validator("osv")
    @classmethod
    def _osv(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        ctx = info.context if isinstance(info.context, dict) else {}
        base = str(ctx.get("base_dir", os.getcwd()))
        path = os.path.normpath(os.path.join(base, os.path.expanduser(v)))
        if "\0" in path or len(path.encode()) > 4096:
            raise rules.RuleViolation(
                "osv is not a usable path", "give the path of an OSV export file or folder"
            )
        return path


def period(every: str) -> float | None:
    """Seconds between two runs of a schedule word (None: off; 0: real time)."""
    return 0.0 if every == "realtime" else PERIODS[every]
