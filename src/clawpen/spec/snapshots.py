"""Scheduled snapshots: a bot's ``snapshots = { every = "24h", keep = {...} }`` and the retention
(``keep``) shared with ``[snapshots] state_keep``. Neither is part of a bot's policy hash: changing
them never restarts a bot (the daemon reads them from the applied spec)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clawpen.spec import bounds, rules
from clawpen.spec.fieldtypes import PositiveDuration

MIN_EVERY = 300.0  # 5m
MAX_EVERY = 30 * 86400.0  # 30d
MAX_KEEP = 10_000


def check_every(v: float) -> float:
    if not MIN_EVERY <= v <= MAX_EVERY:
        raise rules.RuleViolation(f"every {v:g}s is out of range", 'use "5m" to "30d" (say "24h")')
    return v


class KeepCounts(BaseModel):
    """How many scheduled snapshots stay (restic forget): the newest of each hour, day, week, month."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hourly: int = Field(0, ge=0, le=MAX_KEEP, description="keep the last N hourly snapshots")
    daily: int = Field(7, ge=0, le=MAX_KEEP, description="keep the last N daily snapshots")
    weekly: int = Field(4, ge=0, le=MAX_KEEP, description="keep the last N weekly snapshots")
    monthly: int = Field(6, ge=0, le=MAX_KEEP, description="keep the last N monthly snapshots")

    @model_validator(mode="after")
    def _some(self) -> KeepCounts:
        if not (self.hourly or self.daily or self.weekly or self.monthly):
            raise rules.RuleViolation(
                "keep keeps nothing (every count is 0)",
                "set at least one of hourly, daily, weekly, monthly above 0",
            )
        return self


class BotSnapshots(BaseModel):
    """A bot's ``snapshots``: a scheduled snapshot of its workspace ``every``, pruned to ``keep``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: PositiveDuration = Field(86400.0, description='how often, "5m" to "30d" (default "24h")')
    keep: KeepCounts = Field(default_factory=KeepCounts, description="retention of the scheduled snapshots")
    before: list[str] | None = Field(
        None,
        description="a command run inside the running bot before each of its snapshots (say an SQLite "
        "`.backup` into the workspace); it must exit 0, else the snapshot fails",
    )
    before_timeout: PositiveDuration = Field(60.0, description='how long `before` may take, "1s" to "1h"')
    freeze: bool = Field(True, description="freeze the running bot while restic reads its workspace")

    @field_validator("before")
    @classmethod
    def _before(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            bounds.check_argv(v, "snapshots.before")
        return v

    @field_validator("before_timeout")
    @classmethod
    def _before_timeout(cls, v: float) -> float:
        if not 1 <= v <= 3600:
            raise rules.RuleViolation(
                f"before_timeout {v:g}s is out of range", 'use "1s" to "1h" (default "60s")'
            )
        return v

    @field_validator("every")
    @classmethod
    def _every(cls, v: float) -> float:
        return check_every(v)
