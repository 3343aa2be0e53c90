"""``clawpen validate [BOT]``: check a deployed release, save a pass/fail report with it.

Four groups of checks per bot, through the daemon (and the host's ``/proc`` as root):

* **functional**: every replica is running; healthy when the bot has a health check; every
  published port answers on the host (a TCP connect, timed);
* **failure** (skipped with ``--quick``; on a throwaway copy of the bot unless ``--live``, see
  :mod:`.scenarios`): the sandbox is killed (SIGKILL to its pid 1) and must be running again
  within its restart policy; then it is frozen (SIGSTOP to every process of its sandbox) and,
  with a health check, must be restarted by it;
* **performance**: start latency (kill -> healthy again, or running without a health check),
  published-port latency, resource headroom (memory sampled at steady state, process count);
* **compatibility**: ``clawpen doctor``'s checks of the host and tier.

The report goes to ``<state>/validate/<release>.json`` (written atomically).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from clawpen.errors import ClawpenError, UsageError
from clawpen.fsutil import write_atomic
from clawpen.validate.scenarios import (
    Check,
    Daemon,
    check,
    failure,
    on_copy,
    restart_deadline,
    steady_memory,
)

_check = check


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


def _functional(d: Daemon, bot: str, status: dict[str, Any]) -> list[Check]:
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


def _resources(d: Daemon, bot: str, spec: dict[str, Any]) -> list[Check]:
    from clawpen.spec.policy import DEFAULT_MEMORY, DEFAULT_PIDS
    from clawpen.spec.units import format_size, parse_size

    res = spec.get("resources") or {}
    memory = parse_size(res.get("memory") or DEFAULT_MEMORY)
    pids_max = int(res.get("pids") or DEFAULT_PIDS)
    try:
        rss_bytes, processes, how = steady_memory(d, bot, spec)
    except ClawpenError as err:
        return [_check("performance", "resource headroom", False, f"not running: {err}")]
    share = rss_bytes / memory if memory else 0.0
    return [
        _check(
            "performance",
            "resource headroom",
            share < 0.9 and processes < pids_max,
            f"memory {format_size(rss_bytes)} of {format_size(memory)} ({share:.0%}); "
            f"{processes} of {pids_max} processes; {how}",
            memory_bytes=rss_bytes,
            memory_limit=memory,
            processes=processes,
            sampled=how,
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


def validate_release(
    state: Path, bot: str | None, *, quick: bool = False, live: bool = False, workspace: str = "copy"
) -> dict[str, Any]:
    """Run the checks for ``bot`` (or every bot) and save the report with the release. The
    failure scenarios run on a throwaway copy of each bot (``live``: on the bot itself)."""
    d = Daemon(state)
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
            if live:
                checks += failure(d, name, status["spec"], "on the live bot")
                d.wait(name, lambda i: i["state"] == "running", restart_deadline(status["spec"]))
            else:
                checks += on_copy(d, name, status["spec"], workspace)
        checks += _resources(d, name, status["spec"])
        bots[name] = checks
    checks_all = [c for cs in bots.values() for c in cs] + _compatibility(state)
    result = {
        "ok": all(c["ok"] for c in checks_all),
        "release": release,
        "started": started,
        "seconds": round(time.time() - started, 1),
        "quick": quick,
        "live": live,
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
