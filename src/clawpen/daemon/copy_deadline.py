"""How long ``clawpen validate``'s failure scenarios may take on a throwaway copy, from the bot's
stored spec (a JSON dict, as ``status`` shows it). The validate client waits by these figures;
the daemon removes a copy still there after their total plus :data:`MARGIN` (its validate was
killed or is stuck: :mod:`clawpen.daemon.ops_validate`)."""

from __future__ import annotations

from typing import Any

MARGIN = 60.0  # seconds past the scenarios' total before the daemon removes a copy
RESTART_SLACK = 60.0  # seconds a restart may take past its backoff and start period


def restart_deadline(spec: dict[str, Any]) -> float:
    """Seconds a bot killed may take to run again (its backoff, start period and slack)."""
    restart = spec.get("restart") or {}
    health = spec.get("health") or {}
    return float(restart.get("backoff_initial", 1.0)) + float(health.get("start_period", 0.0)) + RESTART_SLACK


def checks_time(health: dict[str, Any]) -> float:
    """How long the health check may take to give a verdict: (retries + 1) intervals."""
    return float(health.get("interval", 30.0)) * (int(health.get("retries", 3)) + 1)


def freeze_deadline(health: dict[str, Any], spec: dict[str, Any]) -> float:
    """Seconds a frozen bot may take to be restarted by its failing health check."""
    retries, interval = int(health.get("retries", 3)), float(health.get("interval", 30.0))
    return (retries + 1) * (interval + float(health.get("timeout", 5.0))) + restart_deadline(spec)


def scenarios_total(spec: dict[str, Any]) -> float:
    """The longest the copy's scenarios take: its first start, kill -> running, time to healthy
    again and the freeze (the last two with a health check only)."""
    health = spec.get("health")
    total = restart_deadline(spec) * 2  # the first start, then kill -> running
    if health:
        total += checks_time(health)  # the first start, until healthy
        total += restart_deadline(spec) + checks_time(health)  # time to healthy after the kill
        total += freeze_deadline(health, spec)
    return total


def copy_deadline(spec: dict[str, Any]) -> float:
    """Seconds after its start when the daemon removes a copy its validate did not remove."""
    return scenarios_total(spec) + MARGIN
