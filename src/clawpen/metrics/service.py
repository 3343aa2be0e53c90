"""The daemon component that runs monitoring: collects every ``interval``, stores, evaluates the
alert rules, notifies, and serves ``/metrics``. Its operations (``metrics``, ``metrics_latest``,
``alerts``, ``alerts_ack``, ``alerts_silence``, ``alerts_test``) are registered on the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.alerts.engine import Alert, Change, Engine, Notice
from clawpen.alerts.messages import (
    audit_message,
    failover_message,
    fmt_value,
    log_shipping_message,
    message,
    rollback_message,
    snapshot_failed_message,
    test_message,
)
from clawpen.alerts.rules import Rule, bot_of, rules_from
from clawpen.errors import ClawpenError, UsageError
from clawpen.host import Event, EventFeed, Notes, Operations, SpecFeed
from clawpen.logs.ship.component import ship_values
from clawpen.logs.space import state_disk_values
from clawpen.metrics import ops
from clawpen.metrics.auditvals import AuditValues
from clawpen.metrics.collector import Collector, InstanceView
from clawpen.metrics.logwatch import LogWatch
from clawpen.metrics.probes import Prober
from clawpen.metrics.prom import MetricsServer, Snapshot, latest_json, registry_for
from clawpen.metrics.storage import Storage
from clawpen.notify.apprise_notifier import notifiers_for
from clawpen.notify.base import Delivery, Dispatcher, Notifier
from clawpen.ops import Call, Empty
from clawpen.spec.alerts import MonitoringConfig, split_hostport
from clawpen.spec.units import UnitError, parse_duration

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from clawpen.ha.registry import HaRegistry
    from clawpen.sandbox.cgroups import CgroupHost
    from clawpen.sandbox.tier import RunningSandbox
    from clawpen.spec.models import Bot, Spec
    from clawpen.supervisor.states import BotStateMachine


class _Services(Protocol):
    @property
    def cgroups(self) -> Callable[[], CgroupHost | None]: ...

    @property
    def logs_dir(self) -> Path: ...

    @property
    def ha(self) -> HaRegistry | None: ...


class _Replica(Protocol):
    """What a pass reads of a supervised bot replica."""

    @property
    def label(self) -> str: ...
    @property
    def sandbox(self) -> RunningSandbox | None: ...
    @property
    def machine(self) -> BotStateMachine: ...
    @property
    def restarts(self) -> int: ...
    @property
    def health(self) -> str | None: ...
    @property
    def health_latency_s(self) -> float | None: ...
    @property
    def bot(self) -> Bot: ...


class _Bots(Protocol):
    def bots(self) -> Mapping[str, object]: ...


class MonitorHost(Notes, Operations, SpecFeed, EventFeed, Protocol):
    """What the monitor uses of the daemon: events (new ones too), operations, the spec, the
    supervised replicas, the stored bots' names, and where cgroups and logs are."""

    @property
    def services(self) -> _Services: ...
    @property
    def instances(self) -> Mapping[str, Sequence[_Replica]]: ...
    @property
    def store(self) -> _Bots: ...


FLUSH_EVERY = 60.0
PRUNE_EVERY = 3600.0
MAX_POINTS = 1500
DRAIN_ON_STOP = 5.0  # seconds a stopping daemon gives notifications still being sent


def _seconds(value: Any, what: str) -> float:
    try:
        return parse_duration(value)
    except (UnitError, TypeError) as err:
        raise UsageError(
            f"{what} {value!r} is not a duration", where="clawpen", hint='e.g. "1h", "30m"'
        ) from err


class Monitor:
    name = "metrics"

    def __init__(self, state: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.audit_values = AuditValues(state)
        self.clock = clock
        self.cfg = MonitoringConfig()
        self.rules: list[Rule] = []
        self.engine = Engine([])
        self.snapshot = Snapshot()
        self.latest_at: float | None = None
        self.server: MetricsServer | None = None
        self.listen_error: str | None = None
        self._listen = ""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_flush = self._last_prune = 0.0
        self._notifiers: list[Notifier] = []
        self._last_error = ""
        # Apprise logs URLs (with their tokens) on failures: keep that out of the daemon's stderr.
        apprise_log = logging.getLogger("apprise")
        apprise_log.addHandler(logging.NullHandler())
        apprise_log.propagate = False

    # ---------------------------------------------------------------- component
    async def start(self, daemon: MonitorHost, *, wire: bool = True) -> None:
        """Start monitoring; ``wire=False``: the operations and the spec feed are the caller's
        (:class:`clawpen.metrics.component.MetricsComponent`, which forwards them)."""
        self.daemon = daemon
        self.storage = Storage(self.state / "metrics.db", clock=self.clock)
        self.collector = Collector(daemon.services.cgroups)
        self.logwatch = LogWatch(daemon.services.logs_dir, [])
        self.prober = Prober([])
        self.engine.restore(Alert.from_dict(a) for a in self.storage.alerts(("firing",)))
        self.engine.next_id = max(self.engine.next_id, self.storage.max_alert_id() + 1)
        for rule, silence in self.storage.silences().items():
            self.engine.silence(rule, silence["until"])
        self.dispatcher = Dispatcher([], self._record_delivery, clock=self.clock)
        self.registry: Any = None  # the Prometheus registry, made when /metrics is first served
        if wire:
            self._wire(daemon)
        # state changes (an OOM kill between two passes is seen here even if no pass saw it)
        self._events: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        daemon.subscribers.add(self._events)
        self.apply(daemon.current_spec())
        await self._serve_prometheus()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="metrics")

    def _wire(self, daemon: MonitorHost) -> None:
        daemon.on_spec(self.apply)
        daemon.add_ops(
            [
                ops.METRICS.bind(self.op_metrics),
                ops.METRICS_LATEST.bind(self.op_metrics_latest),
                ops.ALERTS.bind(self.op_alerts),
                ops.ALERTS_ACK.bind(self.op_alerts_ack),
                ops.ALERTS_SILENCE.bind(self.op_alerts_silence),
                ops.ALERTS_TEST.bind(self.op_alerts_test),
            ]
        )

    async def stop(self) -> None:
        self.daemon.subscribers.discard(self._events)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.server is not None:
            await self.server.stop()
        await self.dispatcher.drain(DRAIN_ON_STOP)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.storage.close)
        self.collector.close()

    def apply(self, spec: Spec | None) -> None:
        """Take the ``[monitoring]`` section of a newly applied spec."""
        cfg = spec.monitoring if spec is not None else MonitoringConfig()
        self.cfg = cfg
        self.rules = rules_from(cfg)
        gone = self.engine.set_rules(self.rules)
        if gone:
            self.storage.delete_alerts(a.id for a in gone)
        self.engine.repeat_interval = cfg.notify.repeat_interval
        self.engine.send_resolved = cfg.notify.send_resolved
        self.logwatch = LogWatch(self.daemon.services.logs_dir, self.rules)
        self.prober = Prober([split_hostport(p, "probe") for p in cfg.probes])
        urls = list(cfg.notify.urls)
        if cfg.notify.url_secrets:
            from clawpen.vault.store import Vault

            try:
                urls += [v.decode() for v in Vault(self.state).values_for(cfg.notify.url_secrets).values()]
            except ClawpenError as err:
                self.daemon.note("alert", f"notify: {err.what} ({err.hint})")
        notifiers, bad = notifiers_for(urls)
        for problem in bad:
            self.daemon.note("alert", f"notify: {problem}")
        self._notifiers = list(notifiers)
        self.dispatcher.notifiers = self._notifiers
        self.dispatcher.retries = cfg.notify.retries
        self.dispatcher.backoff = cfg.notify.retry_backoff
        listen = cfg.prometheus_listen if cfg.enabled else "off"
        if self._task is not None and listen != self._listen:
            asyncio.get_running_loop().create_task(self._serve_prometheus())
        self._wake.set()

    def prometheus_registry(self) -> Any:
        """The registry /metrics renders, made at the first scrape (prometheus_client: ~4 MB)."""
        if self.registry is None:
            self.registry = registry_for(lambda: self.snapshot)
        return self.registry

    async def _serve_prometheus(self) -> None:
        listen = self.cfg.prometheus_listen if self.cfg.enabled else "off"
        if listen == self._listen:
            return
        if self.server is not None:
            await self.server.stop()
            self.server = None
        self._listen = listen
        self.listen_error = None
        if listen == "off":
            return
        host, port = split_hostport(listen, "prometheus_listen", any_port=True)
        server = MetricsServer(self.prometheus_registry, host, port)
        try:
            await server.start()
        except OSError as err:
            self.listen_error = f"cannot listen on {listen}: {err.strerror or err}"
            self.daemon.note("metrics", f"/metrics not served: {self.listen_error}")
            return
        self.server = server

    # ---------------------------------------------------------------- the loop
    async def _loop(self) -> None:
        """Passes on a fixed grid of wall-clock times (multiples of the interval), each stamped
        with its scheduled time, so that ``for`` is counted in whole intervals as Prometheus
        does (a pass started a few ms late does not push a firing alert to the next pass)."""
        interval = self.cfg.interval
        slot = math.floor(self.clock() / interval) * interval + interval
        while True:
            self._wake.clear()
            if not self.cfg.enabled:  # [monitoring] enabled = false: no timer until a spec changes it
                await self._wake.wait()
                interval = self.cfg.interval
                slot = math.floor(self.clock() / interval) * interval + interval
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, slot - self.clock()))
                if self.cfg.interval != interval:  # a new spec changed the interval
                    interval = self.cfg.interval
                    slot = math.floor(self.clock() / interval) * interval + interval
                continue
            try:
                await self.tick(slot)
                self._last_error = ""
            except Exception as err:  # one bad pass must not end monitoring
                if repr(err) != self._last_error:  # said once, not every interval
                    self._last_error = repr(err)
                    self.daemon.note("metrics", f"collection pass failed: {err!r}")
            slot += interval
            if slot < self.clock():  # the host stalled: skip the passes that were missed
                slot = math.floor(self.clock() / interval) * interval + interval

    def _views(self) -> list[InstanceView]:
        views = []
        for name, insts in self.daemon.instances.items():
            for inst in insts:
                sb = inst.sandbox
                latency = inst.health_latency_s
                views.append(
                    InstanceView(
                        inst.label, name, sb.cgroup_name if sb is not None else None,
                        sb.sandbox_pid if sb is not None else None, str(inst.machine.state), inst.restarts,
                        inst.health, latency if isinstance(latency, float) else None,
                        inst.bot.health is not None,
                    )
                )  # fmt: skip
        return views

    async def _denied(self) -> dict[str, int] | None:
        """Egress denials per bot so far, from the gateway component's ``net_stats`` operation
        (None when there is no gateway)."""
        op = self.daemon.ops.get("net_stats")
        if op is None:
            return None
        try:  # any failure but our own is logged with its traceback by the registry
            stats = await self.daemon.ops.run(op, Empty(), Call("metrics"))
        except ClawpenError:
            return None
        return {str(bot): int(s.get("denied", 0)) for bot, s in stats.items()}

    async def tick(self, now: float | None = None) -> None:
        """One pass stamped ``now`` (default: the clock): collect, store, evaluate, notify."""
        loop = asyncio.get_running_loop()
        now = self.clock() if now is None else now
        views = self._views()
        denied = await self._denied()
        probes = loop.create_task(self.prober.run_once()) if self.prober.targets else None
        while not self._events.empty():
            event = self._events.get_nowait()
            if event.to_state == "oom" and event.bot:
                target = event.bot if not event.replica else f"{event.bot}[{event.replica}]"
                self.collector.note_oom(target, event.at)
            elif event.kind == "auto-rollback":  # clawpen.daemon.auto_rollback.KIND
                self.dispatcher.submit(rollback_message(event.reason, event.at))
            elif event.kind == "snapshot-failed":  # clawpen.daemon.snapshot_schedule.FAILED
                self.dispatcher.submit(snapshot_failed_message(event.reason, event.at))
            elif event.kind == "failover":  # clawpen.ha.agent: a term won, lost or handed over
                self.dispatcher.submit(failover_message(event.bot or "?", event.reason, event.at))
            elif event.kind == "ship-dropped":  # clawpen.logs.ship.shipper.DROPPED
                self.dispatcher.submit(log_shipping_message(event.reason, event.at))
            elif event.kind == "audit-finding":  # clawpen.daemon.audit_schedule.FINDING
                self.dispatcher.submit(audit_message(event.reason, event.at, event.bot))
        values = await loop.run_in_executor(None, self.collector.collect, now, views, denied)
        values.setdefault("host", {}).update(state_disk_values(self.state))  # the low-space alert
        values["host"].update(self.audit_values.values(now))  # the kept audit reports
        values["host"].update(ship_values(self.state, now))  # log shipping lag per target
        if probes is not None:
            try:
                await asyncio.wait_for(probes, self.cfg.interval)
            except TimeoutError:
                pass  # slow probes: their values are the last ones they had
            except Exception:
                _log.exception("host probes failed")
            values.setdefault("host", {}).update(self.prober.values())
        for target, counts in self.logwatch.scan([v.target for v in views], now).items():
            values.setdefault(target, {}).update(counts)
        for target, ha in ha_values(self.daemon.services.ha, now).items():
            values.setdefault(target, {}).update(ha)
        self.storage.add(now, values)
        changes, notices = self.engine.evaluate(now, values, hold=self.collector.fresh)
        self._after_evaluation(changes, notices)
        snap = Snapshot()
        snap.values = values
        snap.log_totals = dict(self.logwatch.totals)
        snap.alerts = [(a.rule, a.severity, a.state) for a in self.engine.active.values()]
        self.snapshot, self.latest_at = snap, now
        if now - self._last_flush >= FLUSH_EVERY:
            self._last_flush = now
            await loop.run_in_executor(None, self.storage.flush)
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            await loop.run_in_executor(None, self.storage.prune)

    def _after_evaluation(self, changes: list[Change], notices: list[Notice]) -> None:
        save: dict[int, Alert] = {}
        for change in changes:
            alert = change.alert
            if change.kind in ("firing", "resolved"):
                save[alert.id] = alert
                value = fmt_value("host" if alert.target == "host" else "bot", alert.series, alert.value)
                self.daemon.note(
                    "alert",
                    f"{alert.rule} {change.kind} on {alert.target}: {alert.summary} "
                    f"(value {value}, id {alert.id})",
                    bot=None if alert.target == "host" else bot_of(alert.target),
                )
        for notice in notices:
            save[notice.alert.id] = notice.alert
            if self._notifiers:
                self.dispatcher.submit(message(notice.kind, notice.alert))
        if save:
            self.storage.save_alerts(a.as_dict() for a in save.values())

    def _record_delivery(self, d: Delivery) -> None:
        self.storage.add_delivery(d)
        if not d.ok:
            what = f"alert {d.alert_id}" if d.alert_id else d.kind
            self.daemon.note(
                "alert", f"notify: {what} not delivered to {d.notifier} after {d.attempts} tries: {d.error}"
            )

    # ---------------------------------------------------------------- operations
    def _target(self, raw: Any) -> str:
        target = str(raw or "")
        known = set(self.daemon.store.bots()) | {v.target for v in self._views()}
        if target == "host" or target in known or target in self.storage.targets():
            return target
        raise UsageError(
            f"no bot named {target!r}",
            where="clawpen metrics",
            hint=f"name a bot ({', '.join(sorted(known)) or 'none yet'}) or host",
        )

    async def op_metrics(self, req: ops.MetricsRequest, _call: Call) -> dict[str, Any]:
        target = self._target(req.target)
        since = _seconds(req.since, "--since")
        now = self.clock()
        loop = asyncio.get_running_loop()
        points = await loop.run_in_executor(None, self.storage.query, target, now - since)
        series: dict[str, list[list[float]]] = {}
        for t, values in points.items():
            for name, value in values.items():
                series.setdefault(name, []).append([round(t, 3), value])
        step = 1
        longest = max((len(v) for v in series.values()), default=0)
        if longest > MAX_POINTS:
            step = -(-longest // MAX_POINTS)
            series = {k: _thin(v, step) for k, v in series.items()}
        return {"target": target, "since": since, "step": step, "series": series}

    async def op_metrics_latest(self, _req: Empty, _call: Call) -> dict[str, Any]:
        out = latest_json(self.snapshot.values, self.latest_at)
        out["interval"] = self.cfg.interval
        out["states"] = {v.target: v.state for v in self._views()}
        out["alerts"] = sum(1 for a in self.engine.active.values() if a.state == "firing")
        return out

    async def op_alerts(self, _req: Empty, _call: Call) -> dict[str, Any]:
        now = self.clock()
        active = sorted((a.as_dict() for a in self.engine.active.values()), key=lambda a: a["id"])
        recent = [
            a for a in self.storage.alerts(("resolved",), 50) if (a.get("resolved_at") or 0) > now - 86400
        ]
        silences = {r: s for r, s in self.storage.silences().items() if s["until"] > now}
        return {
            "alerts": active,
            "resolved": recent,
            "silences": silences,
            "rules": [r._asdict() for r in self.rules],
            "deliveries": self.storage.deliveries(20),
            "notifiers": [n.name for n in self._notifiers],
            "prometheus": {"listen": self._listen, "port": self.server.port if self.server else None,
                           "error": self.listen_error},
        }  # fmt: skip

    async def op_alerts_ack(self, req: ops.AckRequest, call: Call) -> dict[str, Any]:
        raw = str(req.id)
        if not raw.isdigit():
            raise UsageError(
                f"alert id {raw!r} is not a number", where="clawpen alerts ack", hint="see clawpen alerts"
            )
        who = req.who or call.who
        alert = self.engine.ack(int(raw), who, self.clock())
        if alert is None:
            raise UsageError(
                f"no active alert with id {raw}",
                where="clawpen alerts ack",
                hint="`clawpen alerts` lists them",
            )
        self.storage.save_alerts([alert.as_dict()])
        self.daemon.note("alert", f"alert {alert.id} ({alert.rule} on {alert.target}) acknowledged by {who}")
        return alert.as_dict()

    async def op_alerts_silence(self, req: ops.SilenceRequest, call: Call) -> dict[str, Any]:
        rule = req.rule
        names = {r.name for r in self.rules}
        if rule not in names:
            raise UsageError(
                f"no alert rule named {rule!r}",
                where="clawpen alerts silence",
                hint=f"rules: {', '.join(sorted(names)) or 'none'}",
            )
        seconds = _seconds(req.for_, "--for")
        until = self.clock() + seconds
        who = req.who or call.who
        self.engine.silence(rule, until)
        self.storage.set_silence(rule, until, who)
        self.daemon.note("alert", f"rule {rule} silenced for {seconds:g}s by {who}")
        return {"rule": rule, "until": until}

    async def op_alerts_test(self, _req: Empty, _call: Call) -> dict[str, Any]:
        if not self._notifiers:
            raise UsageError(
                "no notification URL is configured",
                where="clawpen alerts test",
                hint="add [monitoring.notify] urls = [...] to clawpen.toml and run clawpen up",
            )
        sent = await self.dispatcher.deliver(test_message())
        return {"deliveries": [d._asdict() for d in sent]}


def _thin(points: list[list[float]], step: int) -> list[list[float]]:
    """Average every ``step`` points into one (long ranges stay readable)."""
    out = []
    for i in range(0, len(points), step):
        chunk = points[i : i + step]
        out.append([chunk[0][0], round(sum(p[1] for p in chunk) / len(chunk), 4)])
    return out


def ha_values(registry: HaRegistry | None, now: float) -> dict[str, dict[str, float]]:
    """Per HA bot of this host: primary here or not, and the age of its last shipped copy."""
    out: dict[str, dict[str, float]] = {}
    for bot, agent in (registry.agents if registry is not None else {}).items():
        values = {"ha_primary": 1.0 if str(agent.role) == "primary" else 0.0}
        shipped = (agent.copy or {}).get("time")
        if isinstance(shipped, int | float):
            values["ha_copy_age_seconds"] = round(max(0.0, now - shipped), 1)
        out[bot] = values
    return out
