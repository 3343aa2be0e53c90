"""The daemon component for monitoring (daemon/app.py): it starts the
:class:`~clawpen.metrics.service.Monitor` when the spec enables monitoring (``[monitoring]
enabled``, the default) and stops it when a spec turns it off. With ``enabled = false`` nothing of
monitoring is imported or run: no collector, alert engine, metrics database, notifiers, /metrics
listener or timer (the idle daemon's cost, issue 22). Its operations (``metrics``, ``alerts``...)
are registered either way and answer "monitoring is off" while it is."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawpen.errors import UsageError
from clawpen.metrics import ops
from clawpen.ops import Call

if TYPE_CHECKING:
    from clawpen.metrics.service import Monitor, MonitorHost
    from clawpen.spec.models import Spec


class MetricsComponent:
    name = "metrics"

    def __init__(self, state: Path) -> None:
        self.state = state
        self.monitor: Monitor | None = None
        self._daemon: MonitorHost | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, daemon: MonitorHost) -> None:
        self._daemon = daemon
        daemon.add_ops(
            [
                ops.METRICS.bind(self._forward("op_metrics")),
                ops.METRICS_LATEST.bind(self._forward("op_metrics_latest")),
                ops.ALERTS.bind(self._forward("op_alerts")),
                ops.ALERTS_ACK.bind(self._forward("op_alerts_ack")),
                ops.ALERTS_SILENCE.bind(self._forward("op_alerts_silence")),
                ops.ALERTS_TEST.bind(self._forward("op_alerts_test")),
            ]
        )
        daemon.on_spec(self._on_spec)
        await self.apply(daemon.current_spec())

    def _on_spec(self, spec: Spec) -> None:
        task = asyncio.get_running_loop().create_task(self.apply(spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apply(self, spec: Spec | None) -> None:
        """Start, reconfigure or stop the monitor as ``spec``'s ``[monitoring]`` says."""
        enabled = spec.monitoring.enabled if spec is not None else True
        async with self._lock:
            if enabled and self.monitor is None and self._daemon is not None:
                from clawpen.metrics.service import Monitor

                monitor = Monitor(self.state)
                await monitor.start(self._daemon, wire=False)  # it reads the newest spec itself
                self.monitor = monitor
            elif enabled and self.monitor is not None and spec is not None:
                self.monitor.apply(spec)
            elif not enabled and self.monitor is not None:
                monitor, self.monitor = self.monitor, None
                await monitor.stop()

    def _forward(self, name: str) -> Any:
        async def handler(req: Any, call: Call) -> Any:
            if self.monitor is None:
                raise UsageError(
                    "monitoring is off in the applied spec",
                    where="[monitoring] enabled = false",
                    hint="set [monitoring] enabled = true (the default) and run `clawpen up`",
                )
            return await getattr(self.monitor, name)(req, call)

        return handler

    async def stop(self) -> None:
        async with self._lock:
            if self.monitor is not None:
                monitor, self.monitor = self.monitor, None
                await monitor.stop()
