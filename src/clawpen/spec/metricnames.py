"""The catalogue of every metric clawpen collects: name, scope (bot or host), unit, help text.

Alert rules, ``clawpen metrics``, the Prometheus exposition and the exported rules all use these
names, so a rule's ``metric`` is checked against this table when the spec loads. A metric with a
``label`` (``disk_iops`` per ``device``) is stored once per label value as ``name{value}``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Scope = Literal["bot", "host"]


class Metric(NamedTuple):
    name: str
    scope: Scope
    unit: str
    help: str
    label: str | None = None  # the label that splits this metric into several series


_BOT = (
    Metric("cpu_percent", "bot", "%", "CPU use in % of one core"),
    Metric("cpu_throttled_percent", "bot", "%", "share of wall time the bot was throttled by its CPU limit"),
    Metric("memory_bytes", "bot", "bytes", "memory in use (cgroup)"),
    Metric("memory_peak_bytes", "bot", "bytes", "highest memory use since the sandbox started"),
    Metric("memory_limit_bytes", "bot", "bytes", "memory limit"),
    Metric("memory_percent", "bot", "%", "memory in use in % of the limit"),
    Metric("oom_kills", "bot", "count", "OOM kills in the sandbox's current cgroup"),
    Metric("oom_kills_recent", "bot", "count", "OOM kills seen in the last 10 minutes (restarts included)"),
    Metric("memory_failcnt", "bot", "count", "times the memory limit was hit (v1 failcnt, v2 events max)"),
    Metric("pids", "bot", "count", "processes and threads"),
    Metric("io_read_bytes_per_s", "bot", "bytes/s", "disk read rate"),
    Metric("io_write_bytes_per_s", "bot", "bytes/s", "disk write rate"),
    Metric("iops", "bot", "ops/s", "disk operations per second"),
    Metric("net_rx_bytes_per_s", "bot", "bytes/s", "received bytes per second (the bot's interfaces)"),
    Metric("net_tx_bytes_per_s", "bot", "bytes/s", "sent bytes per second"),
    Metric("net_rx_packets_per_s", "bot", "packets/s", "received packets per second"),
    Metric("net_tx_packets_per_s", "bot", "packets/s", "sent packets per second"),
    Metric("net_drops_per_s", "bot", "packets/s", "dropped packets per second (rx + tx)"),
    Metric("health_latency_ms", "bot", "ms", "latency of the last health check"),
    Metric("healthy", "bot", "bool", "1 when the last health check passed, 0 when it failed"),
    Metric("up", "bot", "bool", "1 when the bot runs, 0 when it should run but does not"),
    Metric("crashloop", "bot", "bool", "1 while the bot is held in crashloop"),
    Metric("restarts", "bot", "count", "restarts since the daemon started supervising it"),
    Metric("restarts_per_hour", "bot", "count", "restarts in the last hour"),
    Metric("egress_denied_per_min", "bot", "count", "egress connections the gateway denied, per minute"),
    Metric("ha_primary", "bot", "bool", "HA bots: 1 while this host is the bot's primary, 0 as a backup"),
    Metric(
        "ha_copy_age_seconds", "bot", "s", "HA bots: age of the last workspace copy shipped to the backups"
    ),
)
_HOST = (
    Metric("cpu_percent", "host", "%", "CPU use of the whole host in % (100 = every core busy)"),
    Metric("load1", "host", "", "1-minute load average"),
    Metric("load5", "host", "", "5-minute load average"),
    Metric("load15", "host", "", "15-minute load average"),
    Metric("memory_available_bytes", "host", "bytes", "memory available for new work"),
    Metric("memory_percent", "host", "%", "memory in use in %"),
    Metric("disk_used_percent", "host", "%", "filesystem use", "mount"),
    Metric("disk_iops", "host", "ops/s", "disk operations per second", "device"),
    Metric("disk_read_bytes_per_s", "host", "bytes/s", "disk read rate", "device"),
    Metric("disk_write_bytes_per_s", "host", "bytes/s", "disk write rate", "device"),
    Metric("net_rx_bytes_per_s", "host", "bytes/s", "received bytes per second (all but loopback)"),
    Metric("net_tx_bytes_per_s", "host", "bytes/s", "sent bytes per second (all but loopback)"),
    Metric("net_errors_per_s", "host", "count/s", "network errors per second (rx + tx)"),
    Metric("net_drops_per_s", "host", "packets/s", "dropped packets per second (rx + tx)"),
    Metric("probe_loss_percent", "host", "%", "failed TCP connect probes in the last 20 tries", "target"),
    Metric("probe_latency_ms", "host", "ms", "TCP connect time of the last probe", "target"),
    Metric("state_disk_free_bytes", "host", "bytes", "free space on the filesystem of clawpen's state dir"),
    Metric("state_disk_watermark_bytes", "host", "bytes", "below this much free space bot logs pause"),
    Metric("state_disk_low", "host", "bool", "1 while the state dir's free space is below the watermark"),
    Metric("audit_score", "host", "points", "risk points of the last audit (clawpen audit; lower is better)"),
    Metric("audit_critical", "host", "count", "critical findings of the last audit"),
    Metric("audit_high", "host", "count", "high findings of the last audit"),
    Metric("audit_age_seconds", "host", "s", "time since the last audit"),
    Metric(
        "ship_lag_seconds",
        "host",
        "s",
        "age of the oldest log record not yet shipped to a target (0: none)",
        "target",
    ),
)
BOT_METRICS: dict[str, Metric] = {m.name: m for m in _BOT}
HOST_METRICS: dict[str, Metric] = {m.name: m for m in _HOST}


def base_name(series: str) -> str:
    """``disk_iops{sda}`` -> ``disk_iops``."""
    return series.split("{", 1)[0]


def label_value(series: str) -> str | None:
    """``disk_iops{sda}`` -> ``sda``; None without a label."""
    if "{" not in series or not series.endswith("}"):
        return None
    return series[series.index("{") + 1 : -1]


def series_name(name: str, label: str | None) -> str:
    return name if label is None else f"{name}{{{label}}}"


def lookup(scope: Scope, series: str) -> Metric | None:
    return (BOT_METRICS if scope == "bot" else HOST_METRICS).get(base_name(series))


def describe_all() -> str:
    """One line per metric, for error hints and docs."""
    return ", ".join(f"{m.scope}.{m.name}" for m in (*_BOT, *_HOST))
