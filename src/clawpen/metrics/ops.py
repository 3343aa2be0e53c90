"""The contracts of the monitor's operations (metrics and alerts; see :mod:`clawpen.ops`); the
handlers are ``Monitor.op_<name>`` in metrics/service.py."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from clawpen.ops import Contract, Empty, Reply, Request


class MetricsRequest(Request):
    target: str = Field(max_length=200, description='a bot (`demo`, a replica `demo[1]`) or "host"')
    since: float | str = Field(default=3600, description='how far back: seconds, or "1h", "30m"')


class AckRequest(Request):
    id: str | int = Field(description="the alert's id")
    who: str | None = Field(default=None, max_length=200)


class SilenceRequest(Request):
    rule: str = Field(max_length=200, description="the rule's name")
    for_: float | str = Field(default="2h", alias="for", description='e.g. "1h"')
    who: str | None = Field(default=None, max_length=200)


class Series(Reply):
    target: str
    since: float
    step: int
    series: dict[str, list[list[float]]]


class Latest(Reply):
    at: float | None
    host: dict[str, float]
    bots: dict[str, dict[str, float]]
    interval: float
    states: dict[str, str]
    alerts: int


class AlertRow(Reply):
    id: int
    rule: str
    target: str
    series: str
    severity: str
    summary: str
    state: str
    active_at: float
    value: float
    threshold: float
    op: str
    fired_at: float | None = None
    resolved_at: float | None = None
    last_sent: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    notified: bool = False


class DeliveryRow(Reply):
    at: float
    notifier: str
    kind: str
    alert_id: int | None
    ok: bool
    attempts: int
    error: str


class Silence(Reply):
    until: float
    by: str | None = None
    at: float | None = None


class Alerts(Reply):
    alerts: list[AlertRow]
    resolved: list[AlertRow]
    silences: dict[str, Silence]
    rules: list[dict[str, Any]]
    deliveries: list[DeliveryRow]
    notifiers: list[str]
    prometheus: dict[str, Any]


class Silenced(Reply):
    rule: str
    until: float


class Deliveries(Reply):
    deliveries: list[DeliveryRow]


METRICS = Contract("metrics", "viewer", MetricsRequest, Series, 'series of a bot or of "host"')
METRICS_LATEST = Contract("metrics_latest", "viewer", Empty, Latest, "the newest sample of every series")
ALERTS = Contract("alerts", "viewer", Empty, Alerts, "firing and recent alerts, silences, rules")
ALERTS_ACK = Contract("alerts_ack", "operator", AckRequest, AlertRow, "acknowledge an alert")
ALERTS_SILENCE = Contract(
    "alerts_silence", "operator", SilenceRequest, Silenced, "silence an alert rule for a while"
)
ALERTS_TEST = Contract("alerts_test", "operator", Empty, Deliveries, "send a test notification")

CONTRACTS: tuple[Contract[Any], ...] = (
    METRICS,
    METRICS_LATEST,
    ALERTS,
    ALERTS_ACK,
    ALERTS_SILENCE,
    ALERTS_TEST,
)
