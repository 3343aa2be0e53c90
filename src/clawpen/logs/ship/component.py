"""The daemon component that ships the bots' logs (``[logs.ship]`` of the applied spec).

One :class:`~clawpen.logs.ship.shipper.Shipper` thread per target, started when the applied spec
names the target and stopped (and started again) when it no longer does or its settings change.
The operation ``logs_ship_status`` (``clawpen logs ship status``) returns each target's
:class:`~clawpen.logs.ship.shipper.Status`; every few seconds the statuses are also written to
``<state>/ship/status.json``, where the metrics monitor reads the lag (:func:`ship_values`:
``ship_lag_seconds{target}``, the built-in alert ``host_log_ship_lag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.fsutil import write_atomic
from clawpen.host import Notes, Operations, SpecFeed
from clawpen.logs.ship.model import ShipMeta
from clawpen.ops import Call, Contract, Reply, Request

if TYPE_CHECKING:
    from clawpen.logs.ship.shipper import Shipper
    from clawpen.spec.logship import ShipSettings, ShipTarget
    from clawpen.spec.models import Spec

_log = logging.getLogger(__name__)
STATUS_FILE = "ship/status.json"
STATUS_EVERY = 5.0
STALE = 60.0  # a status file older than this is not the running daemon's (no lag values)
JOIN_TIMEOUT = 45.0


class ShipStatusRequest(Request):
    pass


class ShipStatusReply(Reply):
    host: str
    targets: list[dict[str, Any]]


SHIP_STATUS = Contract(
    "logs_ship_status", "viewer", ShipStatusRequest, ShipStatusReply,
    "per log target: connected, last acknowledgement, lag, sent/acked/dropped/duplicate counts, last error",
)  # fmt: skip
CONTRACTS = (SHIP_STATUS,)


class _Services(Protocol):
    @property
    def logs_dir(self) -> Path: ...


class _Releases(Protocol):
    def releases(self, limit: int = 50) -> list[dict[str, Any]]: ...


class ShipHost(Notes, SpecFeed, Operations, Protocol):
    """What this component uses of the daemon."""

    @property
    def services(self) -> _Services: ...

    @property
    def store(self) -> _Releases: ...


class _Running:
    """A shipper's thread; it waits for the thread of the target's previous settings to end
    (so two never write one cursor file)."""

    def __init__(self, shipper: Shipper, key: tuple[ShipTarget, int], after: threading.Thread | None) -> None:
        self.shipper = shipper
        self.key = key

        def body() -> None:
            if after is not None:
                after.join()
            shipper.run()

        self.thread = threading.Thread(target=body, name=f"ship-{shipper.target.name}", daemon=True)
        self.thread.start()


class ShipComponent:
    name = "log-ship"

    def __init__(self, state: Path, *, make_transport: Callable[..., Any] | None = None) -> None:
        self.state = state
        self.make_transport = make_transport
        self.host = socket.gethostname()
        self.running: dict[str, _Running] = {}
        self._daemon: ShipHost | None = None
        self._release: int | None = None
        self._bots: frozenset[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shipping = asyncio.Event()  # set while a target runs: the status is written every few s

    async def start(self, daemon: ShipHost) -> None:
        self._daemon = daemon
        self._loop = asyncio.get_running_loop()

        async def op_status(_req: ShipStatusRequest, _call: Call) -> dict[str, Any]:
            return self.status()

        daemon.add_ops([SHIP_STATUS.bind(op_status)])
        self.apply(daemon.current_spec())
        daemon.on_spec(self.apply)
        self._task = self._loop.create_task(self._write_status(), name="log-ship")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        running = list(self.running.values())
        self.running.clear()
        for run in running:
            run.shipper.stop_event.set()
        for run in running:
            await asyncio.to_thread(run.thread.join, JOIN_TIMEOUT)
        with contextlib.suppress(OSError):
            (self.state / STATUS_FILE).unlink()

    # ---------------------------------------------------------------- the spec
    def apply(self, spec: Spec | None) -> None:
        """Start, keep or stop each target's shipper as ``spec``'s ``[logs.ship]`` says."""
        from clawpen.spec.logship import ShipSettings

        settings = spec.logs.ship if spec is not None else ShipSettings()
        self._bots = frozenset(spec.bots) if spec is not None else None
        self._release = self._latest_release()
        wanted = {t.name: t for t in settings.targets}
        ending: dict[str, threading.Thread] = {}
        for name in list(self.running):
            run = self.running[name]
            target = wanted.get(name)
            if target is None or run.key != (target, settings.backlog * 1_000_000 + settings.batch):
                run.shipper.stop_event.set()  # it ends on its own (a blocked send: its timeout)
                ending[name] = run.thread
                del self.running[name]
        for name, target in wanted.items():
            if name not in self.running:
                self._start(target, settings, ending.get(name))
        if self.running:
            self._shipping.set()
        else:
            self._shipping.clear()

    def _latest_release(self) -> int | None:
        if self._daemon is None:
            return None
        try:
            rows = self._daemon.store.releases(1)
        except Exception:
            return None
        return int(rows[0]["id"]) if rows else None

    def _start(self, target: ShipTarget, settings: ShipSettings, after: threading.Thread | None) -> None:
        from clawpen.logs.ship.shipper import Shipper, build_transport

        assert self._daemon is not None
        shipper = Shipper(
            target,
            settings,
            logs_dir=self._daemon.services.logs_dir,
            state=self.state,
            meta=lambda: ShipMeta(self.host, self._release),
            note=self._note,
            bots=lambda: self._bots,
            transport=self.make_transport or build_transport,
        )
        key = (target, settings.backlog * 1_000_000 + settings.batch)
        self.running[target.name] = _Running(shipper, key, after)

    def _note(self, kind: str, text: str) -> None:
        """From a shipper's thread: an event, recorded in the daemon's loop."""
        if self._loop is None or self._daemon is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._daemon.note, kind, text)

    # ---------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        return {"host": self.host, "targets": [run.shipper.snapshot() for run in self.running.values()]}

    async def _write_status(self) -> None:
        path = self.state / STATUS_FILE
        while True:
            try:
                data = dict(self.status(), at=time.time())
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                await asyncio.to_thread(write_atomic, path, json.dumps(data).encode(), 0o600)
            except Exception:
                _log.exception("log shipping status")
            if self.running:
                await asyncio.sleep(STATUS_EVERY)
            else:  # nothing ships: the file says so once, and no timer runs until a target does
                await self._shipping.wait()


def ship_values(state: Path, now: float) -> dict[str, float]:
    """``ship_lag_seconds{target}`` per target of the running daemon (its status file)."""
    try:
        doc = json.loads((state / STATUS_FILE).read_bytes())
        if now - float(doc["at"]) > STALE:
            return {}
        return {f"ship_lag_seconds{{{t['target']}}}": float(t["lag_seconds"]) for t in doc["targets"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
