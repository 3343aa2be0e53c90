"""Alert evaluation with Prometheus semantics, plus what Alertmanager adds: dedupe, repeat, ack,
silence. Pure logic over an injected time (``now`` is passed in), so tests drive the clock.

Per (rule, target, series) an alert goes **inactive -> pending -> firing -> resolved**:

* the condition holds at an evaluation: inactive becomes *pending* (``active_at = now``);
* still holding at an evaluation with ``now - active_at >= for``: *firing* (``for = 0`` fires at
  once, as in Prometheus);
* not holding (or no value at all): a pending alert is dropped, a firing one is *resolved*.

Notices (what the notifier should send) come out of :meth:`Engine.evaluate`: ``firing`` once per
episode, ``repeat`` every ``repeat_interval`` while it fires unacknowledged, ``resolved`` once.
A silenced rule sends nothing (its state is still tracked and shown).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from clawpen.alerts.rules import Rule


@dataclass
class Alert:
    id: int
    rule: str
    target: str
    series: str
    severity: str
    summary: str
    state: str  # pending | firing | resolved
    active_at: float
    value: float
    threshold: float
    op: str
    fired_at: float | None = None
    resolved_at: float | None = None
    last_sent: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    notified: bool = False  # a firing notice went out for this episode

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.target, self.series)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class Notice(NamedTuple):
    kind: str  # firing | repeat | resolved
    alert: Alert


class Change(NamedTuple):
    kind: str  # pending | firing | resolved | dropped
    alert: Alert


@dataclass
class Engine:
    rules: list[Rule]
    repeat_interval: float = 4 * 3600.0
    send_resolved: bool = True
    next_id: int = 1
    active: dict[tuple[str, str, str], Alert] = field(default_factory=dict)
    silences: dict[str, float] = field(default_factory=dict)  # rule -> until

    def set_rules(self, rules: list[Rule]) -> list[Alert]:
        """Replace the rules; alerts of rules that are gone are resolved (returned)."""
        self.rules = list(rules)
        names = {r.name for r in rules}
        gone = [a for k, a in self.active.items() if k[0] not in names]
        for alert in gone:
            del self.active[alert.key]
        return gone

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Take back firing alerts saved by an earlier daemon (so they are not sent twice)."""
        for alert in alerts:
            if alert.state == "firing":
                self.active[alert.key] = alert
            self.next_id = max(self.next_id, alert.id + 1)

    def silenced(self, rule: str, now: float) -> bool:
        until = self.silences.get(rule)
        return until is not None and now < until

    def silence(self, rule: str, until: float) -> None:
        self.silences[rule] = until

    def ack(self, alert_id: int, who: str, now: float) -> Alert | None:
        for alert in self.active.values():
            if alert.id == alert_id:
                alert.acked_by, alert.acked_at = who, now
                return alert
        return None

    def evaluate(
        self, now: float, values: Mapping[str, Mapping[str, float]], hold: Collection[str] = ()
    ) -> tuple[list[Change], list[Notice]]:
        """One evaluation of every rule over ``values`` (target -> series -> value). Alerts of
        the targets in ``hold`` (whose values are not all known yet, e.g. the first pass after a
        restart has no rates) keep their state when their series is missing."""
        changes: list[Change] = []
        seen: set[tuple[str, str, str]] = set()
        for target, series_values in values.items():
            labelled: dict[str, list[str]] | None = None
            for rule in self.rules:
                if not rule.matches_target(target):
                    continue
                if rule.metric in series_values:
                    candidates = [rule.metric]
                elif "{" in rule.metric:
                    continue
                else:  # every labelled series of this metric (disk_iops{sda}, disk_iops{sdb}...)
                    if labelled is None:
                        labelled = {}
                        for series in series_values:
                            if "{" in series:
                                labelled.setdefault(series.split("{", 1)[0], []).append(series)
                    candidates = labelled.get(rule.metric, [])
                for series in candidates:
                    value = series_values[series]
                    if not rule.holds(value):
                        continue
                    key = (rule.name, target, series)
                    seen.add(key)
                    alert = self.active.get(key)
                    if alert is None:
                        alert = self._new(rule, target, series, value, now)
                        self.active[key] = alert
                        changes.append(Change("pending", alert))
                    alert.value = value
                    if alert.state == "pending" and now - alert.active_at >= rule.for_s:
                        alert.state, alert.fired_at = "firing", now
                        changes.append(Change("firing", alert))
        for key in [k for k in self.active if k not in seen]:
            if key[1] in hold and key[2] not in values.get(key[1], {}):
                continue
            alert = self.active.pop(key)
            if alert.state == "firing":
                alert.state, alert.resolved_at = "resolved", now
                changes.append(Change("resolved", alert))
            else:
                changes.append(Change("dropped", alert))
        return changes, self._notices(now, changes)

    def _new(self, rule: Rule, target: str, series: str, value: float, now: float) -> Alert:
        alert = Alert(
            self.next_id, rule.name, target, series, rule.severity, rule.summary, "pending", now, value,
            rule.threshold, rule.op,
        )  # fmt: skip
        self.next_id += 1
        return alert

    def _notices(self, now: float, changes: list[Change]) -> list[Notice]:
        out: list[Notice] = []
        for change in changes:
            alert = change.alert
            quiet = self.silenced(alert.rule, now)
            if change.kind == "resolved" and alert.notified and self.send_resolved and not quiet:
                out.append(Notice("resolved", alert))
        for alert in self.active.values():
            if alert.state != "firing" or self.silenced(alert.rule, now):
                continue
            if not alert.notified:
                alert.notified, alert.last_sent = True, now
                out.append(Notice("firing", alert))
                continue
            last = now if alert.last_sent is None else alert.last_sent
            if alert.notified and alert.acked_by is None and now - last >= self.repeat_interval:
                alert.last_sent = now
                out.append(Notice("repeat", alert))
        return out
