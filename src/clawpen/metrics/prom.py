"""Prometheus: the ``/metrics`` exposition of the newest samples, a tiny asyncio HTTP server
for it, and the alert rules written as a Prometheus rules file.

Series are ``clawpen_bot_<metric>{bot, replica}`` and ``clawpen_host_<metric>`` (with
``device``, ``mount`` or ``target`` for split metrics); log rules add
``clawpen_log_matches_total{rule, bot, replica}``; ``clawpen_alerts{rule, severity, state}``
counts pending and firing alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from clawpen.alerts.rules import Rule, bot_of
from clawpen.spec import metricnames as names

if TYPE_CHECKING:  # prometheus_client (about 4 MB) is imported when /metrics is first served
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def replica_of(target: str) -> str:
    return target[:-1].split("[", 1)[1] if target.endswith("]") else "0"


class Snapshot:
    """What the exposition reads: newest values, log-rule totals, alert counts."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, float]] = {}
        self.log_totals: dict[tuple[str, str], int] = {}
        self.alerts: list[tuple[str, str, str]] = []  # (rule, severity, state)


class _Exposition:
    """A prometheus_client collector (registered with ``auto_describe=False``: no ``describe``)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._snapshot()
        families: dict[str, GaugeMetricFamily] = {}
        for target, values in sorted(snap.values.items()):
            scope: names.Scope = "host" if target == "host" else "bot"
            for series, value in sorted(values.items()):
                meta = names.lookup(scope, series)
                if meta is None or "|" in series:
                    continue
                fam_name = f"clawpen_{scope}_{meta.name}"
                fam = families.get(fam_name)
                if fam is None:
                    labels = ["bot", "replica"] if scope == "bot" else []
                    if meta.label:
                        labels.append(meta.label)
                    fam = families[fam_name] = GaugeMetricFamily(
                        fam_name, f"{meta.help} ({meta.unit})" if meta.unit else meta.help, labels=labels
                    )
                label_values = [bot_of(target), replica_of(target)] if scope == "bot" else []
                if meta.label:
                    label_values.append(names.label_value(series) or "")
                fam.add_metric(label_values, value)
        yield from families.values()
        logs = CounterMetricFamily(
            "clawpen_log_matches", "output lines that matched a log rule", labels=["rule", "bot", "replica"]
        )
        for (rule, target), total in sorted(snap.log_totals.items()):
            logs.add_metric([rule, bot_of(target), replica_of(target)], total)
        yield logs
        alerts = GaugeMetricFamily(
            "clawpen_alerts", "alerts by rule and state", labels=["rule", "severity", "state"]
        )
        counts: dict[tuple[str, str, str], int] = {}
        for key in snap.alerts:
            counts[key] = counts.get(key, 0) + 1
        for (rule, severity, state), n in sorted(counts.items()):
            alerts.add_metric([rule, severity, state], n)
        yield alerts


def registry_for(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exposition(snapshot))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)


class MetricsServer:
    """``GET /metrics`` on ``host:port`` (plain HTTP/1.0 answers, one request per connection);
    ``registry`` is called at each scrape (the first one imports prometheus_client)."""

    def __init__(self, registry: Callable[[], CollectorRegistry], host: str, port: int) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=16384)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.split()
            path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
            if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and path == b"/metrics":
                body = render(self.registry())
                head = (
                    f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + (body if parts[0] == b"GET" else b""))
            else:
                writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n")
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


# ---------------------------------------------------------------- rules file
_PROM_OP = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "==": "==", "!=": "!="}


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def _duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _selector(rule: Rule) -> str:
    matchers = []
    if rule.scope == "bot" and rule.bots:
        matchers.append(f'bot=~"{"|".join(rule.bots)}"')
    label = names.label_value(rule.metric)
    meta = names.lookup(rule.scope, rule.metric)
    if label is not None and meta is not None and meta.label:
        matchers.append(f"{meta.label}={json.dumps(label)}")
    return "{" + ",".join(matchers) + "}" if matchers else ""


def expr_for(rule: Rule) -> str:
    """The PromQL expression of a rule (the same condition the daemon evaluates)."""
    if rule.kind == "log":
        bots = f',bot=~"{"|".join(rule.bots)}"' if rule.bots else ""
        return (
            f'increase(clawpen_log_matches_total{{rule="{rule.name}"{bots}}}[{_duration(rule.window)}])'
            f" > {_num(rule.threshold)}"
        )
    metric = names.base_name(rule.metric)
    return f"clawpen_{rule.scope}_{metric}{_selector(rule)} {_PROM_OP[rule.op]} {_num(rule.threshold)}"


def rules_yaml(rules: list[Rule], group: str = "clawpen") -> str:
    """A Prometheus rules file (YAML; strings are JSON-quoted, which YAML reads as they are)."""
    q = json.dumps
    lines = ["groups:", f"  - name: {q(group)}", "    rules:"]
    for rule in rules:
        where = "{{ $labels.bot }}" if rule.scope == "bot" else "the host"
        lines += [
            f"      - alert: {q(rule.name)}",
            f"        expr: {q(expr_for(rule))}",
        ]
        if rule.for_s > 0:
            lines.append(f"        for: {_duration(rule.for_s)}")
        lines += [
            "        labels:",
            f"          severity: {q(rule.severity)}",
            "        annotations:",
            f"          summary: {q(rule.summary or rule.name)}",
            f"          description: {q(f'{rule.summary or rule.name} on {where} (value {{{{ $value }}}})')}",
        ]
    return "\n".join(lines) + "\n"


def latest_json(values: Mapping[str, Mapping[str, float]], at: float | None) -> dict[str, Any]:
    """The ``metrics_latest`` answer: host and every bot, newest sample each."""
    host = dict(values.get("host", {}))
    bots = {t: {k: v for k, v in vals.items()} for t, vals in values.items() if t != "host"}
    return {"at": at, "host": host, "bots": bots}
