"""Alert rules as the engine sees them: the spec's ``[[monitoring.alerts]]``, the built-in bot
rules, the default host thresholds, and log rules (a per-bot match count compared to ``count``)."""

from __future__ import annotations

from typing import NamedTuple

from clawpen.spec import metricnames as names
from clawpen.spec.alerts import MonitoringConfig, split_metric

MiB = 1 << 20


class Rule(NamedTuple):
    name: str
    scope: names.Scope
    metric: str  # series name: "cpu_percent", "disk_iops{sda}" (one label) or "disk_iops" (every label)
    op: str
    threshold: float
    for_s: float
    severity: str
    bots: tuple[str, ...] = ()
    kind: str = "threshold"  # threshold | builtin | log
    summary: str = ""
    pattern: str = ""  # log rules
    window: float = 0.0  # log rules

    def matches_series(self, series: str) -> bool:
        if self.metric == series:
            return True
        return names.label_value(self.metric) is None and names.base_name(series) == self.metric

    def matches_target(self, target: str) -> bool:
        if self.scope == "host":
            return target == "host"
        return target != "host" and (not self.bots or bot_of(target) in self.bots)

    def holds(self, value: float) -> bool:
        return compare(value, self.op, self.threshold)


def bot_of(target: str) -> str:
    """``"scraper[2]"`` -> ``"scraper"``."""
    return target.split("[", 1)[0]


def compare(value: float, op: str, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    if op == "<=":
        return value <= threshold
    if op == "==":
        return value == threshold
    return value != threshold


def log_metric(rule: str) -> str:
    """The per-bot series that counts matches of log rule ``rule`` within its window."""
    return f"log_matches{{{rule}}}"


def host_defaults() -> list[Rule]:
    """The deployment practice's thresholds (docs/monitoring.md)."""
    return [
        Rule(
            "host_cpu_high", "host", "cpu_percent", ">", 85.0, 300.0, "warning", summary="host CPU above 85%"
        ),
        Rule(
            "host_memory_low",
            "host",
            "memory_available_bytes",
            "<",
            500.0 * MiB,
            60.0,
            "critical",
            summary="host memory available under 500 MB",
        ),
        Rule(
            "host_disk_iops_high",
            "host",
            "disk_iops",
            ">",
            1000.0,
            300.0,
            "warning",
            summary="disk IOPS above 1000/s",
        ),
        Rule(
            "host_packet_loss",
            "host",
            "probe_loss_percent",
            ">",
            1.0,
            300.0,
            "warning",
            summary="packet loss to a probe target above 1%",
        ),
    ]


def state_disk_rule() -> Rule:
    """Built-in: the state dir's filesystem is below the low-space watermark (bot logs paused)."""
    return Rule(
        "host_state_disk_low",
        "host",
        "state_disk_low",
        ">",
        0.0,
        0.0,
        "critical",
        kind="builtin",
        summary="free space of clawpen's state dir is below min(5%, 1 GiB): bot logs are paused",
    )


def audit_rule() -> Rule:
    """Built-in: the last audit has a critical finding (``clawpen audit`` says which and the fix)."""
    return Rule(
        "host_audit_critical",
        "host",
        "audit_critical",
        ">",
        0.0,
        0.0,
        "critical",
        kind="builtin",
        summary="the last audit found a critical risk: see `clawpen audit --since last`",
    )


def ship_lag_rule() -> Rule:
    """Built-in: a log target (``[logs.ship]``) has been more than 5 minutes behind for 5 minutes."""
    return Rule(
        "host_log_ship_lag",
        "host",
        "ship_lag_seconds",
        ">",
        300.0,
        300.0,
        "warning",
        kind="builtin",
        summary="a log target is more than 5 minutes behind: see `clawpen logs ship status`",
    )


def builtin_bot_rules(cfg: MonitoringConfig) -> list[Rule]:
    b = cfg.builtin
    return [
        Rule("bot_down", "bot", "up", "<", 1.0, b.down_for, "critical", kind="builtin",
             summary="bot is down"),
        Rule("bot_crashloop", "bot", "crashloop", ">", 0.0, 0.0, "critical", kind="builtin",
             summary="bot is in crashloop (restarts given up)"),
        Rule("bot_unhealthy", "bot", "healthy", "<", 1.0, 0.0, "warning", kind="builtin",
             summary="bot's health check fails"),
        Rule("bot_oom_killed", "bot", "oom_kills_recent", ">", 0.0, 0.0, "warning", kind="builtin",
             summary="the kernel OOM-killed a process of the bot"),
        Rule("bot_restarts", "bot", "restarts_per_hour", ">", float(b.restarts_per_hour), 0.0, "warning",
             kind="builtin", summary=f"bot restarted more than {b.restarts_per_hour} times in an hour"),
        Rule("bot_egress_denied", "bot", "egress_denied_per_min", ">", float(b.egress_denied_per_min), 0.0,
             "warning", kind="builtin",
             summary=f"gateway denied more than {b.egress_denied_per_min} connections a minute"),
    ]  # fmt: skip


def rules_from(cfg: MonitoringConfig) -> list[Rule]:
    """Every rule of a spec's ``[monitoring]`` section, built-ins first; names are unique."""
    found: list[Rule] = []
    if cfg.builtin.enabled:
        found += [*builtin_bot_rules(cfg), state_disk_rule(), audit_rule(), ship_lag_rule()]
    if cfg.builtin.host_defaults:
        found += host_defaults()
    for spec in cfg.alerts:
        scope, series = split_metric(spec.metric)
        summary = f"{spec.metric} {spec.op} {spec.threshold:g}"
        found.append(
            Rule(spec.rule_name, scope, series, spec.op, spec.threshold, spec.for_, spec.severity,
                 tuple(spec.bots), summary=summary)
        )  # fmt: skip
    for i, log in enumerate(cfg.log_alerts):
        name = log.name or f"log_{i + 1}"
        found.append(
            Rule(name, "bot", log_metric(name), ">", float(log.count), 0.0, log.severity, tuple(log.bots),
                 kind="log", summary=f"output matched /{log.pattern}/ more than {log.count} times in "
                 f"{log.window:g}s", pattern=log.pattern, window=log.window)
        )  # fmt: skip
    by_name: dict[str, Rule] = {}
    for rule in found:  # a spec rule named like a built-in replaces it
        by_name[rule.name] = rule
    return list(by_name.values())
