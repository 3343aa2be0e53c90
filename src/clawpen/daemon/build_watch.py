"""One build step under watch: its output pumped to the build log and the client, a progress
item every :data:`TICK` seconds, the overall ``timeout`` and the stall detector.

A step *stalls* when it printed nothing and its network link received no bytes for ``stall``
seconds (npm waiting on a download that stopped, say): its whole sandbox (every process of its
cgroup, however it was started: npm ignores SIGTERM) is SIGKILLed and the step fails naming how
long it was silent, its last output line and the last URL its output named.

The bytes received are the counters of the step's network namespace (``/proc/PID/net/dev`` of
the sandbox's pid 1, all interfaces but ``lo``): the build's own link to the gateway.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clawpen.metrics.probes import parse_net_dev

if TYPE_CHECKING:
    from clawpen.sandbox.tier import RunningSandbox, Tier
    from clawpen.spec.policy import BotPolicy

TAIL_LINES = 20
TICK = 5.0  # seconds between progress items
POLL = 0.5  # seconds between looks at the step (end, output, bytes)
_URL = re.compile(r"https?://[^\s\"'<>]+")

Lines = Callable[[str], None]
Ticks = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class StepRun:
    """What a step did; ``stalled`` is the silence in seconds when the stall detector ended it."""

    code: int = 0
    reason: str = ""
    stalled: float = 0.0
    lines: int = 0
    last_line: str = ""
    last_url: str = ""
    last_output: float = dataclasses.field(default_factory=time.monotonic)
    tail: deque[str] = dataclasses.field(default_factory=lambda: deque(maxlen=TAIL_LINES))


def rx_bytes(sandbox: RunningSandbox, linked: bool = True) -> int | None:
    """Bytes received by the sandbox's network namespace so far (None: not readable, or no link)."""
    pid = sandbox.sandbox_pid
    if not pid or not linked:
        return None
    try:
        with open(f"/proc/{pid}/net/dev", "rb") as f:
            return parse_net_dev(f.read())[0]
    except (OSError, ValueError):
        return None


def step_label(argv: list[str]) -> str:
    """argv[0..1], e.g. ``npm install``."""
    return " ".join(argv[:2])


def stall_message(run: StepRun) -> str:
    """The reason of a stall-killed step."""
    text = f"stalled: no output and no network bytes for {run.stalled:.0f} s, killed"
    if run.last_line:
        text += f"; last output: {run.last_line[:200]!r}"
    if run.last_url:
        text += f"; last URL: {run.last_url[:300]}"
    return text


def _pump(fd: int, log: Any, lines: Lines, run: StepRun) -> None:
    with os.fdopen(fd, "rb") as out:
        for raw in out:
            line = raw.decode(errors="replace").rstrip("\n")
            log.write(line + "\n")
            log.flush()
            run.tail.append(line)
            run.lines += 1
            run.last_output = time.monotonic()
            if line.strip():
                run.last_line = line
            urls = _URL.findall(line)
            if urls:
                run.last_url = urls[-1]
            lines(line)


def _watch(  # noqa: PLR0917
    sandbox: RunningSandbox,
    run: StepRun,
    ticks: Ticks,
    info: dict[str, Any],
    timeout: float,
    stall: float,
    linked: bool,
) -> None:
    """Block until the step ends, timing it out or killing it when it stalls."""
    from clawpen.sandbox.tier import ended_within

    started = time.monotonic()
    last_tick = started
    rx = rx_bytes(sandbox, linked)
    rx_start = rx or 0
    rx_moved = started
    while True:
        now = time.monotonic()
        left = started + timeout - now
        if left <= 0:
            sandbox.kill()
            ended_within(sandbox, None)
            run.reason = f"timed out after {timeout:g} s"
            return
        if ended_within(sandbox, min(POLL, left)):
            return
        now = time.monotonic()
        seen = rx_bytes(sandbox, linked)
        if seen is not None and seen != rx:
            rx, rx_moved = seen, now
        quiet = now - max(run.last_output, rx_moved)
        if stall > 0 and quiet >= stall:
            sandbox.kill()
            ended_within(sandbox, None)
            run.stalled = quiet
            run.reason = stall_message(run)
            return
        if now - last_tick >= TICK:
            last_tick = now
            ticks(
                {
                    **info,
                    "elapsed": round(now - started, 1),
                    "rx_bytes": None if rx is None else rx - rx_start,
                    "lines": run.lines,
                    "last": run.last_line[-200:],
                    "quiet": round(quiet, 1),
                }
            )


def run_step(  # noqa: PLR0917
    svc: Any,
    tier: Tier,
    policy: BotPolicy,
    argv: list[str],
    log: Any,
    lines: Lines,
    ticks: Ticks,
    info: dict[str, Any],
    timeout: float,
    stall: float,
    link: Any,
) -> StepRun:
    """One step in its own sandbox of ``tier`` (blocking: run it in a worker thread)."""
    from clawpen.plan.build import build_plan
    from clawpen.sandbox.tier import Stdio
    from clawpen.sandbox.users import identity_for

    ident = identity_for(policy.name, svc.state_dir)
    net = None if link is None else link.for_plan(policy.egress)
    plan = build_plan(
        policy._replace(command=tuple(argv)), ident, svc.host, svc.seccomp, die_with_parent=False, link=net
    )
    r, w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    run = StepRun()
    reader = threading.Thread(
        target=_pump, args=(r, log, lines, run), daemon=True, name=f"build-{policy.name}"
    )
    try:
        sandbox = tier.start(
            plan, cgroup_name=f"{policy.name}-build{os.getpid()}", stdio=Stdio(null, w, w), secrets={}
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
        os.close(null)
    reader.start()
    try:
        _watch(sandbox, run, ticks, info, timeout, stall, link is not None)
        result = sandbox.collect()
    finally:
        sandbox.teardown()
        reader.join(5)
    run.code = result.exit_code
    if not run.reason and result.exit_code != 0:
        run.reason = result.message or f"{result.reason}, exit {result.exit_code}"
    return run
