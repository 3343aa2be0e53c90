"""Spec-wide settings of a deployment (no bot's policy, so no bot's hash): ``[deploy]``
(automatic rollback) and ``[snapshots]`` (a snapshot before each ``up``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clawpen.spec import rules
from clawpen.spec.fieldtypes import PositiveDuration
from clawpen.spec.snapshots import KeepCounts, check_every


class Deploy(BaseModel):
    """``[deploy]``: what the daemon does after an ``up`` (spec-wide; no bot's policy hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auto_rollback: bool = Field(
        False, description="roll back by itself when a changed bot is not up within health_window"
    )
    health_window: PositiveDuration = Field(
        120.0, description="how long changed bots have to run (and be healthy), 5s to 1h"
    )

    @field_validator("health_window")
    @classmethod
    def _window(cls, v: float) -> float:
        if not 5 <= v <= 3600:
            raise rules.RuleViolation(
                f"health_window {v:g}s is out of range", 'use "5s" to "1h" (default "2m")'
            )
        return v


class SnapshotSettings(BaseModel):
    """``[snapshots]``: the spec's own snapshot settings (not part of any bot's policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    before_up: bool = Field(
        default=False,
        description="snapshot the workspace of every bot an `up` or `rollback` changes or removes, "
        "first (tagged before-release:N); a failed snapshot stops the `up` unless --no-snapshot",
    )
    state_every: PositiveDuration | None = Field(
        default=None,
        description='snapshot clawpen\'s own state (database, vault, audit log) this often, "5m" to "30d"',
    )
    state_keep: KeepCounts = Field(
        default_factory=KeepCounts, description="retention of the scheduled state snapshots"
    )

    @field_validator("state_every")
    @classmethod
    def _state_every(cls, v: float | None) -> float | None:
        return None if v is None else check_every(v)
