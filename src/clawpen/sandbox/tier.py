"""What every isolation tier offers, and the result of one run.

Tiers (the bubblewrap namespace sandbox now; Docker and QEMU later) sit behind :class:`Tier`,
so the supervisor and the CLI never care which one runs a bot.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

from clawpen.plan.model import Plan

# Exit codes of `clawpen run` that are not the bot's own (documented in docs/cli.md).
EXIT_DISK = 121
EXIT_OOM = 122
EXIT_TIMEOUT = 124
EXIT_SETUP = 125
EXIT_NOT_FOUND = 127

Reason = Literal["exited", "signaled", "oom", "timeout", "disk", "setup-failed"]


class RunResult(NamedTuple):
    """How a sandboxed run ended. ``exit_code`` is what ``clawpen run`` exits with."""

    exit_code: int
    reason: Reason
    signal: int | None
    duration_s: float
    cpu_s: float | None = None
    memory_peak: int | None = None
    message: str = ""


class Stdio(NamedTuple):
    """File descriptors for the bot's standard streams; ``None`` inherits clawpen's own."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


class Tier(Protocol):
    """An isolation tier: runs a plan in the foreground and reports how it ended."""

    name: str

    def run(self, plan: Plan, *, timeout: float | None = None) -> RunResult: ...
