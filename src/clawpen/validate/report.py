"""``clawpen validate [BOT]``: check a deployed release, save a pass/fail report with it.

Four groups of checks per bot, through the daemon (and the host's ``/proc`` as root):

* **functional**: every replica is running; healthy when the bot has a health check; every
  published port answers on the host (a TCP connect, timed);
* **failure** (skipped with ``--quick``): the bot's sandbox is killed (SIGKILL to its pid 1)
  and must be running again within its restart policy; then the bot is frozen (SIGSTOP to
  every process of its sandbox) and, with a health check, must be restarted by it;
* **performance**: start latency (kill -> running again), published-port
  latency, resource headroom (memory and process count against the limits);
* **compatibility**: ``clawpen doctor``'s checks of the host and tier.

The report goes to ``<state>/validate/<release>.json`` (written atomically).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawpen.errors import ClawpenError, UsageError
from clawpen.fsutil import write_atomic

Check = dict[str, Any]


def _check(group: str, name: str, ok: bool, detail: str, **extra: Any) -> Check:
    return {"group": group, "name": name, "ok": ok, "detail": detail, **extra}


def _ns_pids(sandbox_pid: int) -> list[int]:
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


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _publish_targets(spec: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for raw in (spec.get("network") or {}).get("publish") or []:
        parts = str(raw).split(":")
        host = parts[0] if len(parts) == 3 else "127.0.0.1"
        out.append((host, int(parts[-2])))
    return out


def _connect_ms(host: str, port: int) -> float | None:
    """Connect latency, or None when nothing answers. A relay that accepts and then closes at
    once (nothing listening behind it) does not count as answering."""
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            took = (time.monotonic() - t0) * 1000
            conn.settimeout(0.5)
            try:
                if conn.recv(1) == b"":
                    return None
            except TimeoutError:
                pass  # open and waiting for a request: a live service
            return took
    except OSError:
        return None


class _Daemon:
    def __init__(self, state: Path) -> None:
        from clawpen.daemon.client import Client

        self.client = Client(state)

    def call(self, op: str, **args: Any) -> Any:
        return self.client.call(op, **args)

    def instance(self, bot: str, replica: int = 0) -> dict[str, Any]:
        status = self.call("status", bots=[bot])
        insts = status["instances"]
        return dict(insts[replica]) if replica < len(insts) else {}

    def wait(self, bot: str, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inst = self.instance(bot)
            if inst and pred(inst):
                return inst
            time.sleep(0.25)
        return None


def _functional(d: _Daemon, bot: str, status: dict[str, Any]) -> list[Check]:
    spec = status["spec"]
    checks = []
    insts = status["instances"]
    running = [i for i in insts if i["state"] == "running"]
    checks.append(
        _check(
            "functional",
            "running",
            bool(insts) and len(running) == len(insts),
            f"{len(running)} of {len(insts)} replicas running"
            + "".join(f"; replica {i['replica']}: {i['state']}" for i in insts if i["state"] != "running"),
        )
    )
    if spec.get("health"):
        health = spec["health"]
        # not checked yet, or failing while it may still be starting: wait for it (bounded)
        grace = float(health.get("start_period", 0)) + float(health.get("interval", 30)) + 10
        young = [i for i in insts if time.time() - float(i.get("started_at") or 0) < grace]
        if any(i.get("health") is None for i in insts) or any(i.get("health") != "healthy" for i in young):
            d.wait(bot, lambda i: i.get("health") == "healthy", min(grace, 600.0))
            insts = d.call("status", bots=[bot])["instances"]
        healthy = [i for i in insts if i.get("health") == "healthy"]
        detail = "; ".join(f"replica {i['replica']}: {i.get('health') or 'not checked yet'}" for i in insts)
        checks.append(_check("functional", "healthy", bool(insts) and len(healthy) == len(insts), detail))
    for host, port in _publish_targets(spec):
        ms = _connect_ms(host, port)
        ok = ms is not None
        detail = (
            f"{host}:{port} answers ({ms:.1f} ms)" if ms is not None else f"{host}:{port} does not answer"
        )
        checks.append(_check("functional", f"published {host}:{port}", ok, detail, latency_ms=ms))
    return checks


def _restart_deadline(spec: dict[str, Any]) -> float:
    restart = spec.get("restart") or {}
    health = spec.get("health") or {}
    return float(restart.get("backoff_initial", 1.0)) + float(health.get("start_period", 0.0)) + 60.0


def _failure(d: _Daemon, bot: str, status: dict[str, Any]) -> list[Check]:
    spec = status["spec"]
    policy = (spec.get("restart") or {}).get("policy", "on-failure")
    checks: list[Check] = []
    if policy == "no":
        return [
            _check("failure", "kill -> restart", True, "restart policy is `no`: not tried (it stays down)")
        ]
    target = d.call("exec_target", bot=bot, replica=0)
    before = d.instance(bot)
    t0 = time.monotonic()
    os.kill(int(target["sandbox_pid"]), signal.SIGKILL)
    back = d.wait(
        bot,
        lambda i: i["state"] == "running" and i.get("started_at") != before.get("started_at"),
        _restart_deadline(spec),
    )
    running_s = time.monotonic() - t0 if back else None
    checks.append(
        _check(
            "failure",
            "kill -> restart",
            back is not None,
            f"running again after {running_s:.1f} s"
            if running_s is not None
            else "did not come back in time",
            seconds=running_s,
        )
    )
    if back is not None:
        checks.append(
            _check(
                "performance",
                "start latency",
                True,
                f"kill -> running again: {running_s:.2f} s (restart backoff included)",
                seconds=running_s,
            )
        )
    if back is not None and spec.get("health"):
        checks.append(_frozen(d, bot, spec))
    return checks


def _frozen(d: _Daemon, bot: str, spec: dict[str, Any]) -> Check:
    """Freeze the bot: its health check must fail and the supervisor restart it."""
    health = spec["health"]
    if health.get("on_unhealthy", "restart") != "restart":
        return _check("failure", "failing health -> restart", True, "on_unhealthy = none: not tried")
    target = d.call("exec_target", bot=bot, replica=0)
    before = d.instance(bot)
    pids = _ns_pids(int(target["sandbox_pid"]))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    retries, interval = int(health.get("retries", 3)), float(health.get("interval", 30.0))
    deadline = (retries + 1) * (interval + float(health.get("timeout", 5.0))) + _restart_deadline(spec)
    back = d.wait(
        bot,
        lambda i: i["state"] == "running" and i.get("started_at") != before.get("started_at"),
        deadline,
    )
    for pid in pids:  # if it was not restarted, let it go on
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    took = time.monotonic() - t0
    return _check(
        "failure",
        "failing health -> restart",
        back is not None,
        f"frozen bot restarted after {took:.1f} s" if back else f"not restarted within {deadline:.0f} s",
        seconds=took if back else None,
    )


def _resources(d: _Daemon, bot: str, spec: dict[str, Any]) -> list[Check]:
    from clawpen.spec.policy import DEFAULT_MEMORY, DEFAULT_PIDS
    from clawpen.spec.units import format_size, parse_size

    res = spec.get("resources") or {}
    memory = parse_size(res.get("memory") or DEFAULT_MEMORY)
    pids_max = int(res.get("pids") or DEFAULT_PIDS)
    try:
        target = d.call("exec_target", bot=bot, replica=0)
    except ClawpenError as err:
        return [_check("performance", "resource headroom", False, f"not running: {err}")]
    pids = _ns_pids(int(target["sandbox_pid"]))
    rss = _rss(pids)
    share = rss / memory if memory else 0.0
    return [
        _check(
            "performance",
            "resource headroom",
            share < 0.9 and len(pids) < pids_max,
            f"memory {format_size(rss)} of {format_size(memory)} ({share:.0%}); "
            f"{len(pids)} of {pids_max} processes",
            memory_bytes=rss,
            memory_limit=memory,
            processes=len(pids),
        )
    ]


def _compatibility(state: Path) -> list[Check]:
    from clawpen.doctor import run_checks

    found = run_checks(state_dir=state)
    bad = [c for c in found if not c.ok]
    detail = f"{len(found) - len(bad)} of {len(found)} doctor checks pass"
    if bad:
        detail += ": " + "; ".join(f"{c.name}: {c.detail}" for c in bad)
    return [_check("compatibility", "host and tier", not bad, detail)]


def validate_release(state: Path, bot: str | None, *, quick: bool = False) -> dict[str, Any]:
    """Run the checks for ``bot`` (or every bot) and save the report with the release."""
    d = _Daemon(state)
    rows = d.call("ps")
    names = sorted({r["bot"] for r in rows})
    if bot is not None and bot not in names:
        raise UsageError(
            f"no bot named {bot!r} is deployed",
            where="clawpen validate",
            hint=f"deployed: {', '.join(names) or 'none'} (clawpen up first)",
        )
    if not names:
        raise UsageError("no bot is deployed", where="clawpen validate", hint="clawpen up first")
    started = time.time()
    bots: dict[str, list[Check]] = {}
    release = None
    for name in [bot] if bot else names:
        status = d.call("status", bots=[name])
        release = status.get("release", release)
        checks = _functional(d, name, status)
        if not quick and all(c["ok"] for c in checks):
            checks += _failure(d, name, status)
            d.wait(name, lambda i: i["state"] == "running", _restart_deadline(status["spec"]))
        checks += _resources(d, name, status["spec"])
        bots[name] = checks
    checks_all = [c for cs in bots.values() for c in cs] + _compatibility(state)
    result = {
        "ok": all(c["ok"] for c in checks_all),
        "release": release,
        "started": started,
        "seconds": round(time.time() - started, 1),
        "quick": quick,
        "bots": bots,
        "compatibility": [c for c in checks_all if c["group"] == "compatibility"],
    }
    folder = state / "validate"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{release if release is not None else 'none'}.json"
    write_atomic(path, json.dumps(result, indent=2).encode() + b"\n", mode=0o600)
    result["saved"] = str(path)
    return result


def render(result: dict[str, Any]) -> None:
    for bot, checks in result["bots"].items():
        for c in checks:
            print(
                f"{bot:<14} {'ok' if c['ok'] else 'FAIL':<5} {c['group']:<13} {c['name']:<28} {c['detail']}"
            )
    for c in result["compatibility"]:
        print(f"{'host':<14} {'ok' if c['ok'] else 'FAIL':<5} {c['group']:<13} {c['name']:<28} {c['detail']}")
    verdict = "passed" if result["ok"] else "FAILED"
    print(
        f"release {result['release']}: validation {verdict} in {result['seconds']} s "
        f"(saved to {result['saved']})"
    )
