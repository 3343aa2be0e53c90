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


def result_from_status(
    status: int,
    *,
    oom: bool,
    duration_s: float,
    cpu_s: float | None = None,
    memory_peak: int | None = None,
) -> RunResult:
    """Classify an exit status (``subprocess`` style: negative for a signal, or 128+N as
    bubblewrap reports a signalled bot) into a :class:`RunResult`."""
    if oom:
        return RunResult(
            EXIT_OOM,
            "oom",
            None,
            duration_s,
            cpu_s,
            memory_peak,
            "killed by the OOM killer: memory limit reached",
        )
    if status < 0:
        return RunResult(128 - status, "signaled", -status, duration_s, cpu_s, memory_peak)
    if 128 < status < 128 + 65:
        return RunResult(status, "signaled", status - 128, duration_s, cpu_s, memory_peak)
    return RunResult(status, "exited", None, duration_s, cpu_s, memory_peak)


class Stdio(NamedTuple):
    """File descriptors for the bot's standard streams; ``None`` inherits clawpen's own."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


class Tier(Protocol):
    """An isolation tier: runs a plan in the foreground and reports how it ended."""

    name: str

    def run(self, plan: Plan, *, timeout: float | None = None) -> RunResult: ...
