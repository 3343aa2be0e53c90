"""Cheap readers of the raw numbers: a bot's cgroup files and its netns's /proc/PID/net/dev,
the host through psutil, and TCP connect probes.

Each bot keeps its files open and re-reads them with one ``pread(fd, n, 0)`` per file per pass
(cgroupfs and /proc seq files regenerate at offset 0), so a pass costs one system call per file.
Counters are turned into rates by :class:`Rates` (value change / time change).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque

from clawpen.sandbox.cgroups import CgroupHost

_RFLAGS = os.O_RDONLY | os.O_CLOEXEC
READ_SIZE = 8192


def _keyed(data: bytes) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int(data: bytes | None) -> int | None:
    if data is None:
        return None
    text = data.strip()
    if text == b"max":
        return None
    return int(text) if text.isdigit() else None


def parse_blkio(data: bytes) -> tuple[int, int]:
    """v1 ``blkio.throttle.io_service_bytes`` / ``io_serviced``: (read, write) summed over devices."""
    read = write = 0
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == b"Read":
                read += int(parts[2])
            elif parts[1] == b"Write":
                write += int(parts[2])
    return read, write


def parse_io_stat(data: bytes) -> tuple[int, int, int, int]:
    """v2 ``io.stat``: (rbytes, wbytes, rios, wios) summed over devices."""
    totals = [0, 0, 0, 0]
    keys = (b"rbytes", b"wbytes", b"rios", b"wios")
    for line in data.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition(b"=")
            if key in keys and value.isdigit():
                totals[keys.index(key)] += int(value)
    return totals[0], totals[1], totals[2], totals[3]


def parse_net_dev(data: bytes) -> tuple[int, int, int, int, int]:
    """``/proc/PID/net/dev`` without ``lo``: (rx bytes, rx packets, tx bytes, tx packets, drops)."""
    rxb = rxp = txb = txp = drops = 0
    for line in data.splitlines()[2:]:
        name, _, rest = line.partition(b":")
        if name.strip() == b"lo":
            continue
        f = rest.split()
        if len(f) < 12:
            continue
        rxb += int(f[0])
        rxp += int(f[1])
        drops += int(f[3]) + int(f[11])
        txb += int(f[8])
        txp += int(f[9])
    return rxb, rxp, txb, txp, drops


class Files:
    """Open-once files re-read with ``pread`` at offset 0; a file that vanished reads as None."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._missing: set[str] = set()

    def read(self, path: str) -> bytes | None:
        if path in self._missing:
            return None
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, _RFLAGS)
            except OSError:
                self._missing.add(path)
                return None
            self._fds[path] = fd
        try:
            return os.pread(fd, READ_SIZE, 0)
        except OSError:
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._missing.clear()


class Raw(dict[str, float]):
    """One reading: counters (cumulative) and gauges, by name."""


class BotReader:
    """Reads one sandbox (its cgroup, named ``<base>/<cgroup_name>``, and its netns)."""

    def __init__(self, host: CgroupHost, cgroup_name: str, sandbox_pid: int | None) -> None:
        self.v2 = host.version == 2
        self.sandbox_pid = sandbox_pid
        self.cgroup_name = cgroup_name
        self.files = Files()

        def at(controller: str, name: str) -> str:
            base = host.hierarchies.get(controller)
            return "" if base is None else f"{base}/{host.base}/{cgroup_name}/{name}"

        if self.v2:
            self.paths = {
                "mem": at("memory", "memory.current"),
                "peak": at("memory", "memory.peak"),
                "limit": at("memory", "memory.max"),
                "events": at("memory", "memory.events"),
                "cpu": at("cpu", "cpu.stat"),
                "pids": at("pids", "pids.current"),
                "io": at("io", "io.stat"),
            }
        else:
            self.paths = {
                "mem": at("memory", "memory.usage_in_bytes"),
                "peak": at("memory", "memory.max_usage_in_bytes"),
                "limit": at("memory", "memory.limit_in_bytes"),
                "failcnt": at("memory", "memory.failcnt"),
                "events": at("memory", "memory.oom_control"),
                "cpuacct": at("cpuacct", "cpuacct.usage"),
                "cpu": at("cpu", "cpu.stat"),
                "pids": at("pids", "pids.current"),
                "iobytes": at("blkio", "blkio.throttle.io_service_bytes"),
                "ios": at("blkio", "blkio.throttle.io_serviced"),
            }
        self.net = f"/proc/{sandbox_pid}/net/dev" if sandbox_pid else ""

    def _get(self, key: str) -> bytes | None:
        path = self.paths.get(key, "")
        return self.files.read(path) if path else None

    def read(self) -> Raw:
        raw = Raw()
        mem, peak, limit = _int(self._get("mem")), _int(self._get("peak")), _int(self._get("limit"))
        if mem is not None:
            raw["memory_bytes"] = mem
            if limit is not None and 0 < limit < (1 << 60):
                raw["memory_limit_bytes"] = limit
                raw["memory_percent"] = 100.0 * mem / limit
        if peak is not None:
            raw["memory_peak_bytes"] = peak
        events = _keyed(self._get("events") or b"")
        if b"oom_kill" in events:
            raw["oom_kills"] = events[b"oom_kill"]
        cpu = _keyed(self._get("cpu") or b"")
        if self.v2:
            if b"max" in events:
                raw["memory_failcnt"] = events[b"max"]
            if b"usage_usec" in cpu:
                raw["c_cpu_ns"] = cpu[b"usage_usec"] * 1000
            if b"throttled_usec" in cpu:
                raw["c_throttled_ns"] = cpu[b"throttled_usec"] * 1000
            io = self._get("io")
            if io is not None:
                rb, wb, ri, wi = parse_io_stat(io)
                raw.update(c_io_read=rb, c_io_write=wb, c_ios=ri + wi)
        else:
            fail = _int(self._get("failcnt"))
            if fail is not None:
                raw["memory_failcnt"] = fail
            usage = _int(self._get("cpuacct"))
            if usage is not None:
                raw["c_cpu_ns"] = usage
            if b"throttled_time" in cpu:
                raw["c_throttled_ns"] = cpu[b"throttled_time"]
            iob, ios = self._get("iobytes"), self._get("ios")
            if iob is not None:
                rb, wb = parse_blkio(iob)
                raw.update(c_io_read=rb, c_io_write=wb)
            if ios is not None:
                ri, wi = parse_blkio(ios)
                raw["c_ios"] = ri + wi
        pids = _int(self._get("pids"))
        if pids is not None:
            raw["pids"] = pids
        if self.net:
            data = self.files.read(self.net)
            if data is not None:
                rxb, rxp, txb, txp, drops = parse_net_dev(data)
                raw.update(c_rx_bytes=rxb, c_rx_packets=rxp, c_tx_bytes=txb, c_tx_packets=txp, c_drops=drops)
        return raw

    def close(self) -> None:
        self.files.close()


# counter name -> (rate name, factor applied to the per-second rate)
BOT_RATES = {
    "c_cpu_ns": ("cpu_percent", 100 / 1e9),
    "c_throttled_ns": ("cpu_throttled_percent", 100 / 1e9),
    "c_io_read": ("io_read_bytes_per_s", 1.0),
    "c_io_write": ("io_write_bytes_per_s", 1.0),
    "c_ios": ("iops", 1.0),
    "c_rx_bytes": ("net_rx_bytes_per_s", 1.0),
    "c_tx_bytes": ("net_tx_bytes_per_s", 1.0),
    "c_rx_packets": ("net_rx_packets_per_s", 1.0),
    "c_tx_packets": ("net_tx_packets_per_s", 1.0),
    "c_drops": ("net_drops_per_s", 1.0),
}


class Rates:
    """Per-second rates of counters between two readings (a counter that went down restarts)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def rate(self, key: str, value: float, now: float) -> float | None:
        prev = self._last.get(key)
        self._last[key] = (now, value)
        if prev is None or now <= prev[0] or value < prev[1]:
            return None
        return (value - prev[1]) / (now - prev[0])

    def forget(self, prefix: str) -> None:
        for key in [k for k in self._last if k.startswith(prefix)]:
            del self._last[key]


class HostReader:
    """Host numbers through psutil; disk partitions are listed again every 60 s."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        psutil.cpu_percent(None)  # primes the counter
        self._mounts: list[str] = []
        self._mounts_at = -1e9
        self._disks: set[str] = set()

    def _partitions(self) -> list[str]:
        now = time.monotonic()
        if now - self._mounts_at > 60:
            seen: set[str] = set()
            mounts = []
            for part in self.psutil.disk_partitions(all=False):
                if part.device in seen or part.mountpoint.startswith(("/proc", "/sys", "/dev", "/run")):
                    continue
                seen.add(part.device)
                mounts.append(part.mountpoint)
            self._mounts, self._mounts_at = mounts or ["/"], now
            try:
                self._disks = {
                    d for d in os.listdir("/sys/block") if not d.startswith(("loop", "ram", "zram"))
                }
            except OSError:
                self._disks = set()
        return self._mounts

    def read(self) -> Raw:
        ps = self.psutil
        raw = Raw(cpu_percent=ps.cpu_percent(None))
        raw["load1"], raw["load5"], raw["load15"] = os.getloadavg()
        vm = ps.virtual_memory()
        raw["memory_available_bytes"] = vm.available
        raw["memory_percent"] = vm.percent
        for mount in self._partitions():
            with contextlib.suppress(OSError):
                raw[f"disk_used_percent{{{mount}}}"] = ps.disk_usage(mount).percent
        for dev, io in (ps.disk_io_counters(perdisk=True, nowrap=True) or {}).items():
            if dev not in self._disks:
                continue  # whole disks only (partitions would count twice)
            raw[f"c_disk_ops{{{dev}}}"] = io.read_count + io.write_count
            raw[f"c_disk_read{{{dev}}}"] = io.read_bytes
            raw[f"c_disk_write{{{dev}}}"] = io.write_bytes
        rx = tx = errs = drops = 0
        for nic, n in ps.net_io_counters(pernic=True, nowrap=True).items():
            if nic == "lo":
                continue
            rx, tx = rx + n.bytes_recv, tx + n.bytes_sent
            errs += n.errin + n.errout
            drops += n.dropin + n.dropout
        raw.update(c_net_rx=rx, c_net_tx=tx, c_net_errs=errs, c_net_drops=drops)
        return raw


HOST_RATES = {
    "c_disk_ops": ("disk_iops", 1.0),
    "c_disk_read": ("disk_read_bytes_per_s", 1.0),
    "c_disk_write": ("disk_write_bytes_per_s", 1.0),
    "c_net_rx": ("net_rx_bytes_per_s", 1.0),
    "c_net_tx": ("net_tx_bytes_per_s", 1.0),
    "c_net_errs": ("net_errors_per_s", 1.0),
    "c_net_drops": ("net_drops_per_s", 1.0),
}


def to_rates(
    raw: Raw, table: dict[str, tuple[str, float]], rates: Rates, prefix: str, now: float
) -> dict[str, float]:
    """Gauges of ``raw`` as they are, counters (``c_*``, label kept) as per-second rates."""
    out: dict[str, float] = {}
    for key, value in raw.items():
        if not key.startswith("c_"):
            out[key] = value
            continue
        base, brace, label = key.partition("{")
        spec = table.get(base)
        if spec is None:
            continue
        per_s = rates.rate(prefix + key, value, now)
        if per_s is not None:
            out[spec[0] + brace + label] = round(per_s * spec[1], 3)
    return out


class Prober:
    """TCP connect probes: loss over the last ``window`` tries, latency of the last one."""

    def __init__(self, targets: list[tuple[str, int]], timeout: float = 2.0, window: int = 20) -> None:
        self.targets = targets
        self.timeout = timeout
        self._tries: dict[str, deque[bool]] = {f"{h}:{p}": deque(maxlen=window) for h, p in targets}
        self._latency: dict[str, float] = {}

    async def _one(self, host: str, port: int) -> None:
        key = f"{host}:{port}"
        start = time.monotonic()
        ok = False
        with contextlib.suppress(OSError, TimeoutError):
            _r, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
            ok = True
            writer.close()
        self._tries[key].append(ok)
        if ok:
            self._latency[key] = (time.monotonic() - start) * 1000
        else:
            self._latency.pop(key, None)

    async def run_once(self) -> None:
        await asyncio.gather(*(self._one(h, p) for h, p in self.targets))

    def values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, tries in self._tries.items():
            if tries:
                out[f"probe_loss_percent{{{key}}}"] = round(100.0 * tries.count(False) / len(tries), 2)
            if key in self._latency:
                out[f"probe_latency_ms{{{key}}}"] = round(self._latency[key], 2)
        return out
