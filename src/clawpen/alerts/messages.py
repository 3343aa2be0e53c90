"""The text of alert notifications: what, where, since when, the current value."""

from __future__ import annotations

import socket
import time

from clawpen.alerts.engine import Alert
from clawpen.notify.base import Message
from clawpen.spec import metricnames as names


def fmt_value(scope: names.Scope, series: str, value: float) -> str:
    meta = names.lookup(scope, series)
    unit = meta.unit if meta else ""
    if unit == "bytes":
        return human_bytes(value)
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "ms":
        return f"{value:.0f} ms"
    return f"{value:g}"


def human_bytes(value: float) -> str:
    """``314572800`` -> ``"300.0 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def where(alert: Alert) -> str:
    if alert.target == "host":
        label = names.label_value(alert.series)
        return f"host {socket.gethostname()}" + (f" ({label})" if label else "")
    return f"bot {alert.target} on {socket.gethostname()}"


def message(kind: str, alert: Alert) -> Message:
    scope: names.Scope = "host" if alert.target == "host" else "bot"
    value = fmt_value(scope, alert.series, alert.value)
    limit = fmt_value(scope, alert.series, alert.threshold)
    head = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[kind]
    title = (
        f"[{head}] {alert.rule} on {alert.target if alert.target != 'host' else 'host'} ({alert.severity})"
    )
    lines = [
        alert.summary or alert.rule,
        f"where: {where(alert)}",
        f"since: {_when(alert.active_at)}"
        + (f", firing since {_when(alert.fired_at)}" if alert.fired_at else ""),
    ]
    if kind == "resolved":
        lines.append(f"resolved: {_when(alert.resolved_at)}; last value {value} (rule: {alert.op} {limit})")
    else:
        lines.append(f"value: {value} (rule: {alert.series} {alert.op} {limit})")
        lines.append(f"alert id {alert.id}: `clawpen alerts ack {alert.id}` stops the reminders")
    severity = "info" if kind == "resolved" else alert.severity
    return Message(title, "\n".join(lines), severity, kind, alert.id)


def test_message() -> Message:
    host = socket.gethostname()
    return Message(
        f"[TEST] clawpen on {host}",
        f"A test message from clawpen on {host} at {_when(time.time())}: notifications work.",
        "info",
        "test",
    )


def _daemon_event(kind: str, title: str, reason: str, at: float, see: str) -> Message:
    """A daemon event of ``kind`` that every notifier gets (critical)."""
    host = socket.gethostname()
    return Message(
        title.format(host=host, reason=reason),
        f"clawpen on {host} at {_when(at)}: {reason}. See {see}.",
        "critical",
        kind,
    )


def rollback_message(reason: str, at: float) -> Message:
    """An automatic rollback (the daemon's ``auto-rollback`` event), for every notifier."""
    return _daemon_event(
        "auto-rollback", "[ROLLBACK] clawpen on {host}: {reason}", reason, at,
        "`clawpen releases` and `clawpen diff`",
    )  # fmt: skip


def failover_message(bot: str, reason: str, at: float) -> Message:
    """A failover step of an HA bot (the daemon's ``failover`` event), for every notifier."""
    return _daemon_event(
        "failover", f"[FAILOVER] {bot} on {{host}}", reason, at,
        "`clawpen cluster status` and `clawpen events`",
    )  # fmt: skip


def log_shipping_message(reason: str, at: float) -> Message:
    """Log records not shipped (the daemon's ``ship-dropped`` event: a backlog over its cap, a
    file removed before it was shipped), for every notifier."""
    return _daemon_event(
        "ship-dropped", "[LOG SHIPPING] clawpen on {host}: records not shipped", reason, at,
        "`clawpen logs ship status` and `clawpen events`",
    )  # fmt: skip


def audit_message(reason: str, at: float, bot: str | None = None) -> Message:
    """A new audit finding at or above ``[audit] notify`` (the daemon's ``audit-finding`` event)."""
    host = socket.gethostname()
    title = reason.split(". Fix:", maxsplit=1)[0]
    return Message(
        f"[AUDIT] {bot + ' on ' if bot else ''}{host}: {title}",
        f"clawpen on {host} at {_when(at)}: {reason}. See `clawpen audit --since last`.",
        "critical",
        "audit-finding",
    )


def snapshot_failed_message(reason: str, at: float) -> Message:
    """A failed scheduled snapshot (the daemon's ``snapshot-failed`` event), for every notifier."""
    return _daemon_event(
        "snapshot-failed", "[SNAPSHOT FAILED] clawpen on {host}", reason, at,
        "`clawpen events` and `clawpen snapshot ls`",
    )  # fmt: skip
