"""The one place that builds and wires the daemon: store, tiers, services, server, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from clawpen.container.tier import ContainerTier
from clawpen.daemon import ops_storage
from clawpen.daemon.ops_validate import sweep_copies
from clawpen.daemon.runtime import Services
from clawpen.daemon.server import Daemon
from clawpen.daemon.store import RESERVE_BYTES, Store
from clawpen.daemon.warm import SparePool
from clawpen.errors import ClawpenError, HostError
from clawpen.ha.registry import HaRegistry
from clawpen.logs.upkeep import Compressor, retention_sweep
from clawpen.net.instance import sweep_orphan_relays
from clawpen.paths import cache_dir
from clawpen.plan.build import HostFacts
from clawpen.sandbox import spawnmark
from clawpen.sandbox.favor import favor_dynmods
from clawpen.sandbox.namespace import NamespaceTier
from clawpen.sandbox.seccomp import bpf_for, default_policy
from clawpen.vault.store import Vault
from clawpen.vm.tier import VmTier

SWEEP_INTERVAL = 3600.0
FLUSH_INTERVAL = 5.0  # how often changes kept in memory (a full disk) are written again


class Component(Protocol):
    """A long-lived part of the daemon (gateway, metrics collector, HTTP API...): started after
    the bots are restored (or before, with ``before_bots = True``), stopped before they are."""

    name: str

    async def start(self, daemon: Daemon) -> None: ...

    async def stop(self) -> None: ...


def components(state: Path) -> list[Component]:
    """Every component, in start order (each module adds its own line here)."""
    found: list[Component] = []
    found.append(__import__("clawpen.logs.component", fromlist=["_"]).LogSpaceComponent(state))
    found.append(__import__("clawpen.logs.ship.component", fromlist=["_"]).ShipComponent(state))
    found.append(__import__("clawpen.ha.component", fromlist=["_"]).HaComponent(state))
    found.append(__import__("clawpen.metrics.component", fromlist=["_"]).MetricsComponent(state))
    found.append(__import__("clawpen.api.component", fromlist=["ApiComponent"]).ApiComponent(state))
    found.append(__import__("clawpen.net.component", fromlist=["GatewayComponent"]).GatewayComponent(state))
    found.append(__import__("clawpen.daemon.snapshot_schedule", fromlist=["_"]).ScheduleComponent(state))
    found.append(__import__("clawpen.daemon.audit_schedule", fromlist=["_"]).AuditComponent(state))
    found.append(__import__("clawpen.daemon.audit_logins", fromlist=["_"]).AuditLoginsComponent(state))
    return found


def socket_path(state: Path) -> Path:
    return state / "clawpen.sock"


def build(state: Path, *, clock: Callable[[], float] = time.time) -> Daemon:
    """Create every object the daemon needs, once. Tests pass their own ``clock``."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state, 0o700)
    # the bots' JSON records are written by a thread of their own (daemon/records.py)
    store = Store(state / "clawpen.db", records=state / "run", background_records=True)
    sandbox = NamespaceTier(state)  # the only place tiers are named
    container = ContainerTier(state)  # its engine is reached on first use: none here fails only its bots
    vm = VmTier(state, sandbox)  # QEMU in the bot's namespace sandbox; KVM probed on first use
    policy = default_policy()
    compressor = Compressor()
    spares = SparePool()  # warm restarts: one thread builds the bots' next sandboxes
    ha = HaRegistry()  # filled by the failover component (clawpen.ha.component)

    def services(daemon: Daemon) -> Services:
        return Services(
            tiers={sandbox.name: sandbox, container.name: container, vm.name: vm},
            cgroups=sandbox.cgroup_host,
            store=store,
            state_dir=state,
            logs_dir=state / "logs",
            run_dir=state / "run",
            host=HostFacts.probe(),
            seccomp=policy,
            clock=clock,
            record=daemon.record,
            bpf=lambda: bpf_for(policy, cache_dir(state)),
            compressor=compressor,
            secrets=lambda names: Vault(state).values_for(names) if names else {},
            note=daemon.note,
            network=__import__("clawpen.net.links", fromlist=["for_daemon"]).for_daemon(state, daemon),
            ha=ha,
            spares=spares,
        )

    daemon = Daemon(store, services)
    store.warn = lambda text: daemon.note("store", text)  # a full disk: an event, kept in memory
    return daemon


def _running_daemon(state: Path) -> int | None:
    """The pid of a daemon already serving ``state``, if there is one."""
    try:
        pid = int((state / "daemon.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and b"clawpen" in cmdline and b"daemon" in cmdline else None


async def serve(state: Path) -> None:
    other = _running_daemon(state)
    if other is not None:
        raise HostError(
            f"a clawpen daemon (pid {other}) already serves {state}",
            where=str(state / "daemon.pid"),
            hint=f"stop it first (kill -TERM {other}), or use another CLAWPEN_HOME",
        )
    daemon = build(state)
    pid_file = state / "daemon.pid"
    _write_pid(daemon, pid_file)
    daemon.note("daemon", f"daemon started (pid {os.getpid()})")
    with contextlib.suppress(ClawpenError):  # no cgroups here: every bot start fails and says why
        host = daemon.services.cgroups()
        if host is not None:  # before the first start: joining a cgroup waits for no grace period
            daemon.note("daemon", favor_dynmods(host.version))
    if daemon.store.recovered:
        print(f"clawpen daemon: {daemon.store.recovered}", file=sys.stderr, flush=True)
        daemon.note("state-db", daemon.store.recovered)
    # The gateway first (it must listen before a bot with egress starts), then the bots, then the
    # other components (the monitor must see the restored bots on its first pass), then the
    # socket: no request is served by a half-started daemon.
    started: list[Component] = []
    parts = components(state)
    early = [p for p in parts if getattr(p, "before_bots", False)]

    async def start(group: list[Component]) -> None:
        for part in group:
            await part.start(daemon)
            started.append(part)
            daemon.components[part.name] = part

    await start(early)
    for line in spawnmark.sweep(state):  # sandboxes a killed daemon left before their cgroup
        daemon.note("daemon", f"removed a held sandbox: {line}")
    daemon.restore()
    sweep_copies(daemon)  # validate copies an interrupted validate left
    sweep_orphan_relays(daemon)  # relays a killed daemon was stopping
    await start([p for p in parts if p not in early])
    path = socket_path(state)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(daemon.handle, path=str(path), limit=1 << 20)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"clawpen daemon: listening on {path}", file=sys.stderr, flush=True)
    store_wake = asyncio.Event()
    store_wake.set()  # a first pass sets the reserve aside
    warn = daemon.store.warn

    def store_warned(text: str) -> None:  # the store fell behind (or used its reserve): flush later
        warn(text)
        loop.call_soon_threadsafe(store_wake.set)

    daemon.store.warn = store_warned
    sweeper = loop.create_task(_sweep_logs(daemon))
    ager = loop.create_task(ops_storage.periodic(daemon))  # [storage] tiers, hourly
    flusher = loop.create_task(_flush_store(daemon.store, store_wake))
    async with server:
        await stop.wait()
        sweeper.cancel()
        ager.cancel()
        flusher.cancel()
        server.close()
        for part in reversed(started):
            try:
                await part.stop()
            except Exception as err:  # one component must not keep the others up
                daemon.note("daemon", f"{part.name} did not stop cleanly: {err}")
        daemon.note("daemon", "daemon stopping: stopping every bot")
        await daemon.shutdown()
        if daemon.services.network is not None:  # every bot has stopped: drop the gateway namespace
            daemon.services.network.shutdown()
    for leftover in (path, pid_file):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    daemon.store.close()
    daemon.services.compressor.close(timeout=30)
    if daemon.services.spares is not None:
        daemon.services.spares.shutdown()


def _write_pid(daemon: Daemon, pid_file: Path) -> None:
    """Write our pid over the old file's bytes (a full disk has no block for a new file); a
    daemon that cannot write it still serves (the socket needs no space)."""
    data = f"{os.getpid()}\n".encode()
    try:
        fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
    except OSError as err:
        daemon.note("daemon", f"cannot write {pid_file}: {err}")


async def _flush_store(store: Store, wake: asyncio.Event) -> None:
    """Write what the store keeps in memory once the disk has room again (a full disk), and set
    its reserve aside again; between a full disk's warnings (``wake``) no timer runs."""
    while True:
        await wake.wait()
        wake.clear()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if not store.behind or store.flush():
                store.keep_reserve()
                if not store.behind and _reserve_kept(store):
                    break


def _reserve_kept(store: Store) -> bool:
    try:
        return store.reserve.stat().st_size >= RESERVE_BYTES
    except OSError:
        return False


async def _sweep_logs(daemon: Daemon) -> None:
    """Log retention (age and size caps) now and then every hour; rotation itself happens on write."""
    svc = daemon.services
    loop = asyncio.get_running_loop()
    while True:
        report = await loop.run_in_executor(
            None, lambda: retention_sweep(svc.logs_dir, svc.clock(), compressor=svc.compressor)
        )
        if report.deleted:
            daemon.note("logs", f"retention removed {len(report.deleted)} old log files")
        await asyncio.sleep(SWEEP_INTERVAL)


M_ARENA_MAX = -8  # glibc's mallopt(3) parameter
ARENAS = 2


def _limit_arenas() -> None:
    """At most ARENAS malloc arenas (glibc makes up to 8 per core, one per thread that allocates,
    each keeping its own freed pages): the daemon's few threads are mostly idle, and their
    arenas were 1.5 MB of its RSS with 50 bots (issue 22). Nothing on a libc without mallopt."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, ARENAS)


def run_daemon(state: Path) -> int:
    if os.geteuid() != 0:
        raise HostError(
            "the daemon needs root: it starts each bot as its own host uid and creates its cgroups",
            where="clawpen daemon",
            hint="run it as root (sudo clawpen daemon), or let `clawpen up` start it",
        )
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: stacks to the log
    _limit_arenas()  # before the first thread
    raise_nofile()
    asyncio.run(serve(state))
    return 0


NOFILE = 65_536  # what the systemd unit gives the daemon (LimitNOFILE=65536:524288)


def raise_nofile(want: int = NOFILE) -> tuple[int, int]:
    """Raise the soft limit on open files to ``want`` (or the hard limit, if lower), as the
    systemd unit does: the daemon holds about 27 descriptors per bot (its FIFOs, pidfds, log
    file, the sandbox's memfds, the metrics' cgroup files), so a daemon started from a shell
    with the usual soft limit of 1024 ran out at about 40 bots (``Too many open files``).
    Returns the (soft, hard) limits now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    got = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(got[0]), int(got[1])
