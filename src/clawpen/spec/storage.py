"""``[storage]``: the snapshot tiers (hot, warm, cold) and where aged bot logs go (spec-wide; no
bot's policy, so no bot's hash).

``hot`` is the local repository (``<state>/snapshots/repo``); ``warm`` and ``cold`` name any restic
repository (an absolute local path on another disk, ``sftp:``, ``rest:``, ``s3:``...). A snapshot
older than ``hot.age`` moves to warm, older than ``warm.age`` to cold (or is forgotten when there
is no cold tier); see :mod:`clawpen.snapshots.tiers`.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from clawpen.spec import bounds, rules
from clawpen.spec.fieldtypes import PositiveDuration
from clawpen.spec.snapshots import KeepCounts

HOT_AGE = 7 * 86400.0
WARM_AGE = 30 * 86400.0
_BACKENDS = ("sftp:", "rest:", "s3:", "b2:", "azure:", "gs:", "swift:", "rclone:")
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _state_dir(info: ValidationInfo) -> str:
    ctx = info.context if isinstance(info.context, dict) else {}
    if ctx.get("state_dir"):
        return str(ctx["state_dir"])
    from clawpen.paths import state_dir

    return str(state_dir())


def check_local(path: str, *, what: str, state_dir: str) -> str:
    """An absolute local folder outside the state folder and the system folders."""
    if "\0" in path or not os.path.isabs(path):
        raise rules.RuleViolation(
            f"{what} {path!r} is not an absolute path",
            'give an absolute folder on another disk, e.g. "/mnt/disk2/clawpen-warm"',
        )
    real = bounds.check_source(path, "/", what)  # no /proc, /sys, /dev; resolvable (else realpath raises)
    rules.check_location(
        real,
        shown=path if path == real else f"{path} (= {real})",
        what=what,
        writable=True,
        state_dir=state_dir,
        spec_dir=None,
    )
    return path


def check_repository(v: str, info: ValidationInfo) -> str:
    """A restic repository: a backend URL (``sftp:``, ``rest:``, ``s3:``...) on one line, or an
    absolute local folder (:func:`check_local`). Also ``ha.sync.repository``'s rule."""
    if v.startswith(_BACKENDS):
        if any(c in v for c in "\0\n\r"):
            raise rules.RuleViolation(f"repository {v!r} holds a control character", "one line")
        return v
    return check_local(v, what="the repository", state_dir=_state_dir(info))


def check_env_secrets(v: list[str]) -> list[str]:
    """The vault secrets handed to restic's environment for a backend (``env_secrets``)."""
    for name in v:
        if not _SECRET_NAME.match(name):
            raise rules.RuleViolation(
                f"{name!r} is not a secret name", "a vault secret name such as AWS_SECRET_ACCESS_KEY"
            )
    return v


class HotTier(BaseModel):
    """``hot``: the local repository; snapshots older than ``age`` leave it (for warm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    age: PositiveDuration = Field(HOT_AGE, description='how long snapshots stay in hot (default "7d")')


class Tier(BaseModel):
    """``warm`` / ``cold``: a restic repository, with the vault secrets its backend needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(
        description="a restic repository: an absolute local path, sftp:, rest:, s3:, ...",
        min_length=1,
        max_length=4096,
    )
    age: PositiveDuration | None = Field(
        None, description='warm: how old a snapshot gets before cold (default "30d"); cold: unused'
    )
    env_secrets: list[str] = Field(
        default_factory=list,
        description="vault secrets handed to restic's environment for this backend (e.g. AWS_ACCESS_KEY_ID)",
    )
    keep: KeepCounts | None = Field(
        None, description="cold: per bot (and for clawpen's state), the snapshots that stay; default all"
    )

    @field_validator("repository")
    @classmethod
    def _repo(cls, v: str, info: ValidationInfo) -> str:
        return check_repository(v, info)

    @field_validator("env_secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        return check_env_secrets(v)


class StorageSettings(BaseModel):
    """``[storage]``: snapshot tiers and where aged bot logs go (not part of any bot's policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hot: HotTier = HotTier()
    warm: Tier | None = Field(None, description="the warm repository; without it nothing moves")
    cold: Tier | None = Field(None, description="the cold (archive) repository")
    logs_warm: str | None = Field(
        None, description="an absolute folder where rotated logs older than hot.age go, gzipped"
    )

    @field_validator("logs_warm")
    @classmethod
    def _logs_warm(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_local(v, what="logs_warm", state_dir=_state_dir(info))

    @model_validator(mode="after")
    def _tiers(self) -> StorageSettings:
        if self.cold is not None and self.warm is None:
            raise rules.RuleViolation(
                "[storage] cold needs a warm tier",
                "add warm = { repository = ... } (snapshots pass warm first)",
            )
        if self.cold is not None and self.cold.age is not None:
            raise rules.RuleViolation(
                "[storage] cold.age is not used",
                "cold keeps everything, or what its keep = { daily = ..., monthly = ... } says; remove age",
            )
        if self.warm is not None and self.warm.keep is not None:
            raise rules.RuleViolation(
                "[storage] warm.keep is not used", "warm keeps by age (warm.age); put keep on cold"
            )
        if self.warm is not None and self.cold is not None and self.warm.repository == self.cold.repository:
            raise rules.RuleViolation("warm and cold name the same repository", "give cold its own")
        if self.warm_age <= self.hot.age:
            raise rules.RuleViolation(
                f"warm.age ({self.warm_age:g}s) must be longer than hot.age ({self.hot.age:g}s)",
                'e.g. hot = { age = "7d" }, warm = { ..., age = "30d" }',
            )
        return self

    @property
    def warm_age(self) -> float:
        """How old a snapshot (or a log file) gets before it leaves warm."""
        return WARM_AGE if self.warm is None or self.warm.age is None else self.warm.age
