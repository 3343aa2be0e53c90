"""A bot's ``build`` steps: commands run once per release, in the bot's sandbox.

``[bots.NAME.build]`` lists argv steps run one after the other inside a sandbox with the bot's
policy (its uid, limits, read-only mounts) but the build's own egress allowlist. They write
into ``/opt/bot`` (``mount``), a folder of the daemon's state that the running bot then sees
read-only at the same path. The result is cached by a hash of the steps, env, egress and the
content of the files listed in ``inputs``; ``/build-cache`` is a persistent writable folder for
package-manager caches (npm, pip) shared by the bot's builds.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from clawpen.spec import bounds, rules, units

DEFAULT_MOUNT = "/opt/bot"
CACHE_MOUNT = "/build-cache"
MAX_STEPS = 100
RESERVED = ("/workspace", "/tmp", "/run", "/proc", "/dev", "/usr", "/etc", CACHE_MOUNT)


def _base_dir(info: ValidationInfo) -> str:
    ctx = info.context if isinstance(info.context, dict) else {}
    return str(ctx.get("base_dir", os.getcwd()))


STALL_DEFAULT = 120.0
STALL_MIN = 10.0
STALL_MAX = 3600.0


def _stall(v: object) -> float:
    """``stall``: 0 (off) or 10 s to 1 h."""
    seconds = units.parse_duration(v)
    if seconds != 0 and not STALL_MIN <= seconds <= STALL_MAX:
        raise rules.RuleViolation(
            f"build stall {v!r} is out of range",
            'give a duration from "10s" to "1h", or "0" to turn the stall detector off',
        )
    return seconds


def _memory(v: object) -> int | None:
    if v is None:
        return None
    from clawpen.spec.policy import check_memory

    return check_memory(units.parse_size(v))


class BuildSpec(BaseModel):
    """What a bot builds before it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[list[str]] = Field(
        min_length=1, description='argv lists, e.g. [["npm", "install", "openclaw"]]'
    )
    egress: list[str] = Field(
        default_factory=list, description='what the build may reach, e.g. ["registry.npmjs.org:443"]'
    )
    allow_private: list[str] = Field(
        default_factory=list, description="CIDRs the build's egress may reach although private or reserved"
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the steps")
    timeout: Annotated[float, BeforeValidator(units.parse_positive_duration)] = Field(
        1800.0, description='kill the build after this long, e.g. "20m"'
    )
    stall: Annotated[float, BeforeValidator(_stall)] = Field(
        STALL_DEFAULT,
        description="kill a step (its whole process group) that printed nothing and received no network "
        'bytes for this long, e.g. "120s" (10 s to 1 h; "0": off); not part of the cache key',
    )
    inputs: list[str] = Field(
        default_factory=list, description="host files or folders whose content is part of the cache key"
    )
    memory: Annotated[int | None, BeforeValidator(_memory)] = Field(
        None, description="memory limit of the build (default: the bot's)"
    )
    mount: str = Field(DEFAULT_MOUNT, description="where the output is, for the build (rw) and the bot (ro)")
    cache: str | None = Field(
        None, description="host folder for /build-cache (default: one per bot in clawpen's state)"
    )
    keep: int = Field(
        3,
        ge=1,
        le=50,
        description="how many build outputs of this bot are kept (the one it runs is never removed); "
        "not part of the cache key",
    )
    cache_adopt: bool = Field(
        False,
        description="hand an existing cache folder with files of other owners to the build's uid "
        "(no symlink followed, no mount crossed)",
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[list[str]]) -> list[list[str]]:
        if len(v) > MAX_STEPS:
            raise rules.RuleViolation(
                f"the build has {len(v)} steps; at most {MAX_STEPS} are allowed",
                "join steps into a script in the build's inputs",
            )
        for i, step in enumerate(v):
            bounds.check_argv(step, f"build step {i + 1}")
        return v

    @field_validator("egress")
    @classmethod
    def _egress(cls, v: list[str]) -> list[str]:
        if v:
            from clawpen.spec.egress import parse_rules

            parse_rules(list(v))
        return v

    @field_validator("allow_private")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for raw in v:
            rules.check_cidr(raw, field="allow_private")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return bounds.check_env(v)

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: list[str], info: ValidationInfo) -> list[str]:
        base = _base_dir(info)
        for raw in v:
            bounds.check_source(raw, base, "build input")
            path = os.path.join(base, os.path.expanduser(raw))
            if not os.path.exists(path):
                raise rules.RuleViolation(
                    f"build input {raw!r} does not exist (looked at {path})",
                    'list files or folders next to clawpen.toml, e.g. inputs = ["./bot/requirements.txt"]',
                )
        return v

    @field_validator("mount")
    @classmethod
    def _mount(cls, v: str) -> str:
        bounds.check_path_text(v, "build mount")
        norm = os.path.normpath(v)
        if (
            not v.startswith("/")
            or norm == "/"
            or any(norm == r or norm.startswith(r + "/") for r in RESERVED)
        ):
            raise rules.RuleViolation(
                f"build mount {v!r} is not allowed",
                f"use an absolute path of its own, e.g. {DEFAULT_MOUNT!r} (not under {', '.join(RESERVED)})",
            )
        return norm

    @field_validator("cache")
    @classmethod
    def _cache(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            bounds.check_source(v, _base_dir(info), "build cache")
            rules.check_host_path(v, writable=True, base_dir=_base_dir(info))
        return v
