"""``[monitoring]``: collection interval, probes, alert rules, log rules, notifications.

```toml
[monitoring]
interval = "5s"                       # 1s .. 1h
probes = ["1.1.1.1:443"]              # TCP connect probes for host packet loss
prometheus_listen = "127.0.0.1:9464"  # or "off"; another address needs prometheus_expose = true

[[monitoring.alerts]]
metric = "bot.cpu_percent"            # host.NAME or bot.NAME; see clawpen.spec.metricnames
op = ">"
threshold = 85
for = "5m"
severity = "warning"
bots = ["scraper"]                    # bot rules only; empty = every bot

[[monitoring.log_alerts]]
pattern = "Traceback|ERROR"
count = 5                             # more than 5 matches ...
window = "1m"                         # ... within one minute

[monitoring.notify]
urls = ["ntfy://ntfy.sh/my-topic"]    # Apprise URLs; secret ones: url_secrets = ["VAULT_NAME"]
```
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from clawpen.spec import listen, units
from clawpen.spec import metricnames as names
from clawpen.spec.rules import RuleViolation

Seconds = Annotated[
    float,
    BeforeValidator(units.parse_duration),
    WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "number"}], "description": 'seconds, or "30s", "5m", "1h"'}
    ),
]
PositiveSeconds = Annotated[
    float,
    BeforeValidator(units.parse_positive_duration),
    WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "number"}], "description": 'seconds above 0, or "30s", "5m"'}
    ),
]
Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_METRIC = re.compile(r"(bot|host)\.([a-z0-9_]+)(\{([^{}]+)\})?")
_OP_WORD = {">": "gt", ">=": "ge", "<": "lt", "<=": "le", "==": "eq", "!=": "ne"}


def _threshold(value: object) -> float:
    hint = 'write a finite number, or a size such as "500M"'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RuleViolation(f"{value!r} is not a threshold", hint)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    except ValueError:
        number = float(units.parse_size(value))
    if not math.isfinite(number) or abs(number) > 1e18:
        raise RuleViolation(f"threshold {str(value)[:40]!r} is not a finite number up to 1e18", hint)
    return number


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RuleViolation(
            f"alert name {name!r} is not allowed",
            "use lower-case letters, digits, '_' and '-', starting with a letter (at most 63)",
        )
    return name


def split_metric(metric: str) -> tuple[names.Scope, str]:
    """``"host.disk_iops{sda}"`` -> ``("host", "disk_iops{sda}")``."""
    match = _METRIC.fullmatch(metric) if len(metric) <= 200 else None
    if not match:
        raise RuleViolation(
            f"metric {metric!r} is not host.NAME or bot.NAME",
            'write e.g. "bot.cpu_percent" or "host.memory_available_bytes"',
        )
    scope: names.Scope = "bot" if match.group(1) == "bot" else "host"
    return scope, metric.split(".", 1)[1]


class AlertRule(BaseModel):
    """A threshold on a metric, held for ``for`` before it fires (Prometheus semantics)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = Field(None, description="unique rule name (default: made from metric, op, threshold)")
    metric: str = Field(description='"bot.NAME" or "host.NAME" (optionally "host.disk_iops{sda}")')
    op: Op = Field(">", description="comparison: value OP threshold means trouble")
    threshold: Annotated[
        float,
        BeforeValidator(_threshold),
        WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}]}),
    ] = Field(description='a number, or a size such as "500M"')
    for_: Seconds = Field(0.0, alias="for", description="how long the condition must hold before it fires")
    severity: Severity = "warning"
    bots: list[str] = Field(default_factory=list, description="bot rules: only these bots (default all)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        scope, series = split_metric(v)
        metric = names.lookup(scope, series)
        if metric is None:
            raise RuleViolation(
                f"there is no {scope} metric {names.base_name(series)!r}",
                f"known metrics: {names.describe_all()}",
            )
        if names.label_value(series) is not None and metric.label is None:
            raise RuleViolation(f"{scope}.{metric.name} has no label", f"write {scope}.{metric.name}")
        return v

    @property
    def rule_name(self) -> str:
        if self.name:
            return self.name
        slug = re.sub(r"[^a-z0-9]+", "_", self.metric.lower()).strip("_")
        t = self.threshold
        text = str(int(t)) if t == int(t) else f"{t:g}"
        value = text.replace(".", "_").replace("-", "m").replace("+", "")
        return f"{slug}_{_OP_WORD[self.op]}_{value}"[:63]


class LogAlert(BaseModel):
    """A regular expression matched more than ``count`` times within ``window`` in a bot's output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="unique rule name (default log_<n>)")
    pattern: str = Field(description="Python regular expression, searched in every output line")
    count: int = Field(
        0, ge=0, le=1_000_000, description="fires when matches within the window are more than this"
    )
    window: Seconds = Field(60.0, description="sliding window")
    severity: Severity = "warning"
    bots: list[str] = Field(default_factory=list, description="only these bots (default all)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as err:
            raise RuleViolation(
                f"pattern {v!r} is not a regular expression: {err}", "fix the pattern"
            ) from None
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: float) -> float:
        if not 1 <= v <= 86400:
            raise RuleViolation(f"window {v:g}s is out of range", "use 1s to 24h")
        return v


class NotifyConfig(BaseModel):
    """Where alert messages go (Apprise URLs) and how often a firing alert is repeated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str] = Field(
        default_factory=list, description="Apprise URLs (tgram://, slack://, mailto://...)"
    )
    url_secrets: list[str] = Field(
        default_factory=list, description="vault entries (clawpen secrets set) that hold Apprise URLs"
    )
    repeat_interval: PositiveSeconds = Field(
        4 * 3600.0, description="re-send a firing, unacknowledged alert this often"
    )
    send_resolved: bool = Field(True, description="also tell when an alert resolves")
    retries: int = Field(3, ge=0, le=10, description="more tries for a failed delivery (with backoff)")
    retry_backoff: PositiveSeconds = Field(2.0, description="wait before the first retry; doubles each time")

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if "://" not in url:
                raise RuleViolation(
                    f"notify URL {url.split(':', 1)[0]!r}... is not an Apprise URL",
                    'write SCHEME://..., e.g. "ntfy://ntfy.sh/topic" or "json://127.0.0.1:8080/hook"',
                )
        return v


class BuiltinRules(BaseModel):
    """Rules every bot gets (set ``enabled = false`` to drop them) and their thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host_defaults: bool = Field(True, description="CPU > 85% 5m, memory < 500M, IOPS > 1000, loss > 1%")
    down_for: Seconds = Field(30.0, description="bot_down fires after the bot is down this long")
    restarts_per_hour: int = Field(5, ge=1, le=1_000_000, description="bot_restarts fires above this")
    egress_denied_per_min: int = Field(
        30, ge=1, le=1_000_000_000, description="bot_egress_denied fires above this"
    )


class MonitoringConfig(BaseModel):
    """Collection interval, alert rules and where notifications go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="collect, alert and serve /metrics (false: the daemon does none of it)"
    )
    interval: Seconds = Field(5.0, description="collection interval, 1s to 1h")
    probes: list[str] = Field(default_factory=list, description="HOST:PORT targets of TCP connect probes")
    prometheus_listen: str = Field(
        "127.0.0.1:9464", description='ADDRESS:PORT of /metrics (loopback unless prometheus_expose), or "off"'
    )
    prometheus_expose: bool = Field(
        False, description="allow prometheus_listen on a non-loopback address (metrics name every bot)"
    )
    alerts: list[AlertRule] = Field(default_factory=list)
    log_alerts: list[LogAlert] = Field(default_factory=list)
    builtin: BuiltinRules = BuiltinRules()
    notify: NotifyConfig = NotifyConfig()

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if not 1 <= v <= 3600:
            raise RuleViolation(f"interval {v:g}s is out of range", 'use "1s" to "1h" (default "5s")')
        return v

    @field_validator("probes")
    @classmethod
    def _probes(cls, v: list[str]) -> list[str]:
        for target in v:
            split_hostport(target, "probe")
        return v

    @field_validator("prometheus_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v != "off":
            split_hostport(v, "prometheus_listen", any_port=True)
            listen.split_listen(v, "prometheus_listen", any_port=True)
        return v

    @model_validator(mode="after")
    def _exposure(self) -> MonitoringConfig:
        if self.prometheus_listen != "off":
            host, _ = listen.split_listen(self.prometheus_listen, "prometheus_listen", any_port=True)
            listen.check_listener(
                f"prometheus_listen {self.prometheus_listen!r}",
                host,
                opted_in=self.prometheus_expose,
                opt_in="set prometheus_expose = true in [monitoring] (and firewall the port)",
            )
        return self

    @field_validator("alerts")
    @classmethod
    def _unique(cls, v: list[AlertRule]) -> list[AlertRule]:
        seen: set[str] = set()
        for rule in v:
            if rule.rule_name in seen:
                raise RuleViolation(
                    f"two alert rules are named {rule.rule_name!r}", "give each a unique name"
                )
            seen.add(rule.rule_name)
        return v


def split_hostport(value: str, what: str, *, any_port: bool = False) -> tuple[str, int]:
    """``"1.1.1.1:443"`` -> ``("1.1.1.1", 443)``; port 0 (any free port) only with ``any_port``."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if (
        not sep
        or not host
        or len(value) > 300
        or not (port.isascii() and port.isdigit())
        or len(port) > 5
        or not (0 if any_port else 1) <= int(port) < 65536
    ):
        raise RuleViolation(f"{what} {value!r} is not HOST:PORT", 'write e.g. "1.1.1.1:443" or "[::1]:9464"')
    return host, int(port)
