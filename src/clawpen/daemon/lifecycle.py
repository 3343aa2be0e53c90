"""Pieces of an instance's life that need no instance: its plan, its pipes, ending its sandbox,
wording.

Split out of :mod:`clawpen.daemon.runtime` (which re-exports :func:`instance_plan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from clawpen.errors import ClawpenError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Plan, SeccompPolicy
from clawpen.sandbox.tier import RunningSandbox, RunResult, Stdio
from clawpen.sandbox.users import identity_for
from clawpen.spec.models import Bot

if TYPE_CHECKING:
    from clawpen.net.links import Link

PIPE_SIZE = 1 << 20
T = TypeVar("T")


def open_fifos(fifos: list[tuple[str, Path]], bot_ends: dict[str, int], pipes: dict[str, int]) -> None:
    """Make (or reuse) each named pipe and open both its ends: the bot's read-write end (its
    writes never fail for want of a reader) into ``bot_ends``, the daemon's non-blocking read
    end into ``pipes`` (filled as they open, so the caller closes what a failure left)."""
    for stream, path in fifos:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(path.lstat().st_mode):
                path.unlink()
        if not path.exists():
            os.mkfifo(path, 0o600)
        bot_ends[stream] = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(bot_ends[stream], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        pipes[stream] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


class BotEnds(NamedTuple):
    """The bot's ends of a slot's pipes and its status file, handed to the tier's start."""

    out: int
    err: int
    status: int

    @property
    def stdio(self) -> Stdio:
        return Stdio(stdin=None, stdout=self.out, stderr=self.err)

    def close(self) -> None:
        for fd in self:
            os.close(fd)

    def run(self, start: Callable[[], T]) -> T:
        """Run ``start`` (in an executor thread), then close these ends: whoever started the
        sandbox has its own copies by then. The thread closes them, never the event loop, so a
        cancelled await cannot close them under a start still using them."""
        try:
            return start()
        finally:
            self.close()


def open_slot(paths: Mapping[str, Path]) -> tuple[BotEnds, dict[str, int]]:
    """Open a slot's pipes (``out``, ``err``) and status file (``status``): the bot's ends, and
    the daemon's read ends by stream. Nothing stays open when it fails."""
    bot_ends: dict[str, int] = {}
    pipes: dict[str, int] = {}
    try:
        open_fifos([("out", paths["out"]), ("err", paths["err"])], bot_ends, pipes)
        status = os.open(paths["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except BaseException:
        for fd in (*bot_ends.values(), *pipes.values()):
            os.close(fd)
        raise
    return BotEnds(bot_ends["out"], bot_ends["err"], status), pipes


async def terminate(sandbox: RunningSandbox, grace: float, note: Callable[[str, str], None]) -> None:
    """SIGTERM every process of the bot, then SIGKILL them after ``grace`` seconds."""
    with contextlib.suppress(ClawpenError, ProcessLookupError):
        sandbox.signal(signal.SIGTERM)
    pidfd = sandbox.exit_fd()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, settle, done)
    try:  # asyncio.wait, unlike wait_for, leaves the future alone on a timeout
        if not (await asyncio.wait({done}, timeout=grace))[0]:
            note("kill", f"no exit {grace:g}s after SIGTERM: SIGKILL")
            with contextlib.suppress(ClawpenError):
                sandbox.kill()
            if not (await asyncio.wait({done}, timeout=5.0))[0]:
                # the tier's own monitor (bubblewrap) is stuck (stopped?): end it too
                with contextlib.suppress(ClawpenError):
                    sandbox.kill(monitor=True)
                await asyncio.wait({done}, timeout=5.0)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def instance_plan(
    bot: Bot,
    name: str,
    replica: int,
    base_dir: str,
    *,
    state_dir: Path,
    host: HostFacts,
    seccomp: SeccompPolicy,
    link: Link | None = None,
    extra_env: tuple[tuple[str, str], ...] = (),
    extra_secrets: tuple[str, ...] = (),
) -> Plan:
    """The plan of one replica of a daemon-managed bot (also what `clawpen exec` enters);
    ``extra_env``/``extra_secrets``: the daemon's own (an HA term's fencing token)."""
    policy = bot.to_policy(name, base_dir)
    policy = policy._replace(
        env=(*policy.env, ("CLAWPEN_REPLICA", str(replica)), *extra_env),
        secrets=(*policy.secrets, *extra_secrets),
    )
    ident = identity_for(name, state_dir)
    net = None if link is None else link.for_plan(policy.egress)
    return build_plan(policy, ident, host, seccomp, die_with_parent=False, link=net)


def settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def describe(result: RunResult) -> str:
    if result.reason == "signaled":
        return f"killed by signal {result.signal} (exit {result.exit_code})"
    if result.reason == "exited":
        return f"exited with code {result.exit_code}"
    return f"{result.message or result.reason} (exit {result.exit_code})"
