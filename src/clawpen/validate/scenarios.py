"""``clawpen validate``'s failure scenarios and steady-state memory (used by :mod:`.report`).

By default the scenarios run on a throwaway copy of the bot (``BOT_validate``, started by the
daemon's ``validate_copy_start``: same policy, its own uid, cgroup and link, no published ports,
a copy of the workspace), so the live bot keeps serving; ``--live`` runs them on the bot itself.

* **kill -> restart**: SIGKILL to the sandbox's pid 1; it must run again within its restart policy.
* **start latency**: from the kill to healthy again ("time to healthy") when the bot has a
  health check, else to running ("time to running"); the restart backoff is included.
* **failing health -> restart**: every process of the sandbox is frozen (SIGSTOP); the health
  check must get it restarted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawpen.daemon.copy_deadline import checks_time as _checks_time
from clawpen.daemon.copy_deadline import copy_deadline, freeze_deadline
from clawpen.daemon.copy_deadline import restart_deadline as restart_deadline  # noqa: PLC0414 (report's)

Check = dict[str, Any]
COPY_SUFFIX = "_validate"


def check(group: str, name: str, ok: bool, detail: str, **extra: Any) -> Check:
    return {"group": group, "name": name, "ok": ok, "detail": detail, **extra}


def ns_pids(sandbox_pid: int) -> list[int]:
    """Every host pid in the pid namespace whose init is ``sandbox_pid``."""
    try:
        target = os.readlink(f"/proc/{sandbox_pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    pids.append(int(entry))
    return pids


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class Daemon:
    """The daemon as validate sees it: a bot, or a validate copy (a name ending ``_validate``)."""

    def __init__(self, state: Path) -> None:
        from clawpen.daemon.client import Client

        self.client = Client(state)

    def call(self, op: str, **args: Any) -> Any:
        return self.client.call(op, **args)

    def instance(self, bot: str, replica: int = 0) -> dict[str, Any]:
        if bot.endswith(COPY_SUFFIX):
            insts = self.call("validate_copy_status", copy=bot)["instances"]
        else:
            insts = self.call("status", bots=[bot])["instances"]
        return dict(insts[replica]) if replica < len(insts) else {}

    def sandbox_pid(self, bot: str) -> int:
        if bot.endswith(COPY_SUFFIX):
            pid = self.call("validate_copy_status", copy=bot)["sandbox_pid"]
            if pid is None:
                from clawpen.errors import UsageError

                raise UsageError(f"the validate copy {bot} is not running", where="clawpen validate")
            return int(pid)
        return int(self.call("exec_target", bot=bot, replica=0)["sandbox_pid"])

    def wait(self, bot: str, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            inst = self.instance(bot)
            if inst and pred(inst):
                return inst
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)


def _new_start(before: dict[str, Any], state: str = "running") -> Callable[[dict[str, Any]], bool]:
    def pred(i: dict[str, Any]) -> bool:
        fresh = i.get("started_at") != before.get("started_at")
        if state == "healthy":
            return fresh and i["state"] == "running" and i.get("health") == "healthy"
        return fresh and i["state"] == "running"

    return pred


def failure(d: Daemon, target: str, spec: dict[str, Any], where: str) -> list[Check]:
    """Kill, start latency and freeze on ``target`` (the bot or its copy); ``where`` says which."""
    policy = (spec.get("restart") or {}).get("policy", "on-failure")
    if policy == "no":
        why = "restart policy is `no`: not tried (it stays down)"
        return [check("failure", "kill -> restart", True, why)]
    checks: list[Check] = []
    before = d.instance(target)
    pid = d.sandbox_pid(target)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    back = d.wait(target, _new_start(before), restart_deadline(spec))
    running_s = time.monotonic() - t0 if back else None
    checks.append(
        check(
            "failure",
            "kill -> restart",
            back is not None,
            f"running again after {running_s:.1f} s ({where})" if back else f"did not come back ({where})",
            seconds=running_s,
            target=target,
        )
    )
    if back is None:
        return checks
    health = spec.get("health")
    measure, took = "time to running", running_s
    if health:
        measure = "time to healthy"
        timeout = restart_deadline(spec) + _checks_time(health)
        ready = d.wait(target, _new_start(before, "healthy"), timeout)
        took = time.monotonic() - t0 if ready else None
    backoff = float((spec.get("restart") or {}).get("backoff_initial", 1.0))
    checks.append(
        check(
            "performance",
            "start latency",
            took is not None,
            f"{measure}: {took:.2f} s from the kill (restart backoff {backoff:g} s included; {where})"
            if took is not None
            else f"{measure}: not healthy again in time ({where})",
            seconds=took,
            measure=measure,
        )
    )
    if health:
        checks.append(frozen(d, target, spec, where))
    return checks


def frozen(d: Daemon, target: str, spec: dict[str, Any], where: str) -> Check:
    """Freeze the bot: its health check must fail and the supervisor restart it."""
    health = spec["health"]
    if health.get("on_unhealthy", "restart") != "restart":
        return check("failure", "failing health -> restart", True, "on_unhealthy = none: not tried")
    before = d.instance(target)
    pids = ns_pids(d.sandbox_pid(target))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    deadline = freeze_deadline(health, spec)
    back = d.wait(target, _new_start(before), deadline)
    for pid in pids:  # if it was not restarted, let it go on
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    took = time.monotonic() - t0
    return check(
        "failure",
        "failing health -> restart",
        back is not None,
        (f"frozen bot restarted after {took:.1f} s" if back else f"not restarted within {deadline:.0f} s")
        + f" ({where})",
        seconds=took if back else None,
    )


def on_copy(d: Daemon, bot: str, spec: dict[str, Any], workspace: str) -> list[Check]:
    """Start a throwaway copy of ``bot``, run the failure scenarios on it, remove it (always)."""
    # the daemon removes the copy after the scenarios' total + a margin if this process is killed
    started = d.call("validate_copy_start", bot=bot, workspace=workspace, deadline=copy_deadline(spec))
    copy = str(started["name"])
    try:
        ws = started.get("workspace_from")
        where = f"on a throwaway copy {copy}, " + (
            "no workspace"
            if ws is None
            else "empty workspace"
            if ws == "empty"
            else f"workspace copied from {ws}"
        )
        health = spec.get("health")
        first = restart_deadline(spec) + (_checks_time(health) if health else 0.0)
        want = (lambda i: i["state"] == "running" and i.get("health") == "healthy") if health else None
        t0 = time.monotonic()
        ended = ("failed", "crashloop", "stopped", "exited")
        up = d.wait(
            copy, lambda i: (want or (lambda j: j["state"] == "running"))(i) or i["state"] in ended, first
        )
        if up is None or up["state"] in ended:
            state = d.instance(copy)
            last = d.call("events", bot=copy, limit=20)
            where += "; events: " + " | ".join(f"{e['kind']}: {e['reason']}" for e in last)
            return [
                check(
                    "failure",
                    "kill -> restart",
                    False,
                    f"the copy did not become {'healthy' if health else 'running'} within {first:.0f} s "
                    f"(state {state.get('state')}, health {state.get('health')}; {where})",
                )
            ]
        checks = failure(d, copy, spec, where)
        for c in checks:
            if c["name"] == "start latency":
                c["first_start_seconds"] = round(time.monotonic() - t0, 2)
        return checks
    finally:
        d.call("validate_copy_remove", copy=copy)


def steady_memory(
    d: Daemon, bot: str, spec: dict[str, Any], *, bound: float = 300.0, every: float = 1.0
) -> tuple[int, int, str]:
    """(resident bytes, processes, how it was sampled) once the bot is steady: up for its
    health check's start period + one interval (5 s without one), then samples ``every`` seconds
    until two in a row differ by < 5 % (at most 10); all within ``bound`` seconds."""
    health = spec.get("health") or {}
    settle = float(health.get("start_period", 0.0)) + float(health.get("interval", 5.0)) if health else 5.0
    t_end = time.monotonic() + bound
    inst = d.instance(bot)
    up = time.time() - float(inst.get("started_at") or time.time())
    if up < settle:
        time.sleep(max(0.0, min(settle - up, t_end - time.monotonic())))
    samples: list[int] = []
    pids: list[int] = []
    while True:
        pids = ns_pids(d.sandbox_pid(bot))
        samples.append(rss(pids))
        if len(samples) >= 2 and abs(samples[-1] - samples[-2]) <= 0.05 * max(samples[-2], 1):
            break
        if len(samples) >= 10 or time.monotonic() + every > t_end:
            break
        time.sleep(every)
    up = time.time() - float(d.instance(bot).get("started_at") or time.time())
    steady = len(samples) >= 2 and abs(samples[-1] - samples[-2]) <= 0.05 * max(samples[-2], 1)
    how = f"sampled after {up:.0f} s up (settle {settle:g} s), {len(samples)} samples {every:g} s apart, " + (
        "last two within 5 %" if steady else "not steady yet"
    )
    return samples[-1], len(pids), how
