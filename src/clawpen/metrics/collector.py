"""One collection pass: every bot's cgroup and netns, the runtime's view of each instance,
the gateway's denial counters, and the host. Turns counters into rates and returns
``{target: {series: value}}`` (targets: ``host`` and each bot replica's label)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import NamedTuple

from clawpen.errors import SandboxError
from clawpen.metrics.probes import BOT_RATES, HOST_RATES, BotReader, HostReader, Rates, to_rates
from clawpen.sandbox.cgroups import CgroupHost

UP_STATES = {"running": 1.0, "unhealthy": 1.0, "starting": 1.0}
DOWN_STATES = {"exited", "oom", "backoff", "crashloop", "failed"}
OOM_WINDOW = 600.0


class InstanceView(NamedTuple):
    """What the collector needs of a runtime Instance (taken on the event loop, read in a thread)."""

    target: str  # "bot" or "bot[2]"
    bot: str
    cgroup: str | None  # "<bot>.<replica>" while a sandbox runs
    sandbox_pid: int | None
    state: str
    restarts: int
    health: str | None
    health_latency_s: float | None
    has_health: bool


class Collector:
    def __init__(self, cgroup_host: Callable[[], CgroupHost | None], *, with_host: bool = True) -> None:
        self._cgroup_host = cgroup_host
        self._readers: dict[str, BotReader] = {}
        self._rates = Rates()
        self._host = HostReader() if with_host else None
        self._restarts: dict[str, deque[float]] = {}
        self._restart_count: dict[str, int] = {}
        self._ooms: dict[str, deque[float]] = {}
        self._last_oom_count: dict[str, float] = {}
        self._first = True
        self.fresh: set[str] = set()  # targets read for the first time in the last pass (no rates yet)

    def _host_layout(self) -> CgroupHost | None:
        try:
            return self._cgroup_host()
        except (SandboxError, OSError):  # no cgroups here: bots are measured by what the runtime knows
            return None

    def _reader(self, view: InstanceView) -> BotReader | None:
        host = self._host_layout()
        if host is None or view.cgroup is None:
            self._drop(view.target)
            return None
        reader = self._readers.get(view.target)
        if reader is not None and (reader.cgroup_name, reader.sandbox_pid) != (view.cgroup, view.sandbox_pid):
            self._drop(view.target)
            reader = None
        if reader is None:
            reader = self._readers[view.target] = BotReader(host, view.cgroup, view.sandbox_pid)
            self.fresh.add(view.target)
        return reader

    def _drop(self, target: str) -> None:
        reader = self._readers.pop(target, None)
        if reader is not None:
            reader.close()
            self._rates.forget(f"{target}:")
            self._last_oom_count.pop(target, None)

    def collect(
        self, now: float, views: list[InstanceView], denied: Mapping[str, int] | None = None
    ) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        self.fresh = set()
        if self._first and self._host is not None:
            self.fresh.add("host")
        self._first = False
        live = {v.target for v in views}
        for target in [t for t in self._readers if t not in live]:
            self._drop(target)
        for view in views:
            values: dict[str, float] = {}
            reader = self._reader(view) if view.state not in DOWN_STATES else None
            if reader is None and view.state in DOWN_STATES:
                self._drop(view.target)
            if reader is not None:
                values = to_rates(reader.read(), BOT_RATES, self._rates, f"{view.target}:", now)
            values.update(self._runtime(view, values, now))
            if denied is not None and view.target == view.bot and view.bot in denied:
                per_s = self._rates.rate(f"egress:{view.bot}", denied[view.bot], now)
                if per_s is not None:
                    values["egress_denied_per_min"] = round(per_s * 60, 2)
            out[view.target] = values
        if self._host is not None:
            out["host"] = to_rates(self._host.read(), HOST_RATES, self._rates, "host:", now)
        return out

    def _runtime(self, view: InstanceView, values: Mapping[str, float], now: float) -> dict[str, float]:
        """Numbers the runtime knows: up, crashloop, health, restarts, OOM kills."""
        out: dict[str, float] = {"restarts": float(view.restarts)}
        if view.state in UP_STATES:
            out["up"] = 1.0
        elif view.state in DOWN_STATES:
            out["up"] = 0.0
        out["crashloop"] = 1.0 if view.state == "crashloop" else 0.0
        # Unhealthy is the supervisor's verdict (retries used up, start period over); a check
        # failing while the bot starts is not a sample of 0.
        if view.has_health and view.state == "unhealthy":
            out["healthy"] = 0.0
        elif view.has_health and view.health == "healthy":
            out["healthy"] = 1.0
        if view.health_latency_s is not None:
            out["health_latency_ms"] = round(view.health_latency_s * 1000, 2)
        hist = self._restarts.setdefault(view.target, deque())  # one entry per restart seen
        seen = self._restart_count.get(view.target)
        if seen is not None and view.restarts > seen:
            hist.extend([now] * min(view.restarts - seen, 10_000))
        self._restart_count[view.target] = view.restarts
        while hist and hist[0] < now - 3600:
            hist.popleft()
        out["restarts_per_hour"] = float(len(hist))
        ooms = self._ooms.setdefault(view.target, deque())
        count = values.get("oom_kills")
        if count is not None:
            before = self._last_oom_count.get(view.target, 0.0)
            if count > before:
                ooms.extend([now] * int(count - before))
            self._last_oom_count[view.target] = count
        while ooms and ooms[0] < now - OOM_WINDOW:
            ooms.popleft()
        out["oom_kills_recent"] = float(len(ooms))
        return out

    def note_oom(self, target: str, at: float) -> None:
        """The runtime saw ``target`` end by an OOM kill (its ``oom`` state). Counted unless the
        cgroup's own counter already showed a kill in the 5 s before."""
        ooms = self._ooms.setdefault(target, deque())
        if not ooms or ooms[-1] < at - 5.0:
            ooms.append(at)

    def close(self) -> None:
        for target in list(self._readers):
            self._drop(target)


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took (for the bench)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
