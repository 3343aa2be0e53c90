"""Per-bot cgroups: detect the layout, create and limit, join, inspect, kill and remove.

The root-owned parent puts every sandbox process into ``<base>/<name>`` (``clawpen/<bot>``):

* **cgroup v2** (``cgroup.controllers`` at the root): one directory; ``+memory +cpu +pids +io``
  are enabled in the root's and ``clawpen``'s ``cgroup.subtree_control`` first.
* **cgroup v1 / hybrid**: one directory in each hierarchy holding a controller we use (memory,
  cpu, cpuacct, pids, blkio, freezer). Hierarchies are found in ``/proc/self/mounts``, so
  co-mounts such as ``cpu,cpuacct`` share one directory. A controller-less cgroup2 mount
  (``/sys/fs/cgroup/unified``) is ignored.

Limits (:class:`~clawpen.plan.model.CgroupLimits`) go to memory.max, memory.swap.max, cpu.max,
pids.max, io.weight (v2) or memory.limit_in_bytes then memory.memsw.limit_in_bytes (memsw may
never be below the limit), memory.swappiness, cpu.cfs_*, pids.max, blkio[.bfq].weight (v1).
``io_weight`` is on the io.weight scale (default 100), clamped to each file's range, and skipped
when the host has no such file.

:meth:`Cgroup.kill` is race-free against forks: ``cgroup.kill`` (v2, Linux >= 5.14), otherwise
freeze, SIGKILL every member, thaw, then wait (bounded) until the cgroup is empty.
Everything is plain ``os.open``/``os.write`` on cgroupfs; no subprocess, no module state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from signal import SIGKILL
from types import MappingProxyType, TracebackType
from typing import Literal, NamedTuple

from clawpen.errors import SandboxError
from clawpen.plan.model import CgroupLimits

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio", "freezer")
"""v1 controllers a bot's cgroup is created in (when mounted)."""
V2_CONTROLLERS = ("memory", "cpu", "pids", "io")
"""v2 controllers enabled for ``clawpen/`` (when the root offers them)."""
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_OCTAL_RE = re.compile(r"\\([0-7]{3})")
_WFLAGS = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
_RFLAGS = os.O_RDONLY | os.O_CLOEXEC
_HINTS = MappingProxyType(
    {
        errno.EACCES: "clawpen must run as root to manage cgroups",
        errno.EPERM: "clawpen must run as root to manage cgroups",
        errno.EROFS: "the cgroup filesystem is read-only (inside a container?); run on the host",
        errno.ENOENT: "is the controller mounted (v1) or enabled in cgroup.subtree_control (v2)?",
        errno.EBUSY: "the cgroup holds processes or child cgroups (v2: no processes in inner cgroups)",
        errno.EINVAL: "the kernel rejected the value; check the limit in the bot spec",
        errno.ESRCH: "the process exited before it could be moved",
    }
)


def _error(step: str, action: str, path: str, exc: OSError) -> SandboxError:
    return SandboxError(
        f"cannot {action} {path}: {exc.strerror or exc}",
        where=f"cgroups: {step}",
        hint=_HINTS.get(exc.errno or 0, "check the cgroup mounts and dmesg"),
    )


def _write(path: str, data: bytes, step: str, *, optional: bool = False) -> bool:
    """Write ``data`` to a cgroup file; ``False`` if ``optional`` and the file does not exist."""
    try:
        fd = os.open(path, _WFLAGS)
    except OSError as exc:
        if optional and exc.errno == errno.ENOENT:
            return False
        raise _error(step, "open", path, exc) from None
    try:
        os.write(fd, data)
    except OSError as exc:
        raise _error(step, f"write {data.decode()!r} to", path, exc) from None
    finally:
        os.close(fd)
    return True


def _read(path: str) -> bytes | None:
    """The content of a cgroup file, or ``None`` when it does not exist."""
    try:
        fd = os.open(path, _RFLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _error("read", "open", path, exc) from None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _error("read", "read", path, exc) from None
    finally:
        os.close(fd)


def _keyed(data: bytes | None) -> dict[str, int]:
    """Parse ``key value`` lines (cpu.stat, memory.events, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in (data or b"").splitlines():
        key, _, value = line.partition(b" ")
        if value.strip().lstrip(b"-").isdigit():
            out[key.decode()] = int(value)
    return out


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise SandboxError(
            f"invalid cgroup {what} {name!r}",
            where="cgroups: create",
            hint="use letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')",
        )


class CgroupStats(NamedTuple):
    """A snapshot of a cgroup's accounting; ``None`` where this host has no such file."""

    cpu_usage_ns: int | None
    memory_current: int | None
    memory_peak_bytes: int | None
    pids_current: int | None
    oom_kills: int | None
    cpu_throttled_periods: int | None
    cpu_throttled_ns: int | None


class CgroupHost(NamedTuple):
    """The cgroup layout of this host, as found by :func:`detect`.

    ``hierarchies`` maps each available controller to its hierarchy's mount point (on v2 every
    controller maps to ``root``).
    """

    version: Literal[1, 2]
    root: Path
    hierarchies: Mapping[str, Path]
    base: str = "clawpen"

    @property
    def controllers(self) -> frozenset[str]:
        """Controllers available to bot cgroups."""
        return frozenset(self.hierarchies)

    def names(self) -> list[str]:
        """Names of the cgroups under ``<base>`` (read from one hierarchy; all hold the same)."""
        if not self.hierarchies:
            return []
        first = next(iter(self.hierarchies.values()))
        try:
            with os.scandir(f"{first}/{self.base}") as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            return []

    def attach(self, name: str) -> Cgroup:
        """A handle on ``<base>/<name>`` without creating it (to inspect, kill or remove it)."""
        _check_name(name, "name")
        _check_name(self.base, "base")
        if self.version == 2:
            path = f"{self.root}/{self.base}/{name}"
            roles = {c: path for c in self.hierarchies}
            roles["core"] = path
        else:
            roles = {
                c: f"{self.hierarchies[c]}/{self.base}/{name}"
                for c in V1_CONTROLLERS
                if c in self.hierarchies
            }
        return Cgroup(name, self.version, roles)

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        """Create ``<base>/<name>`` with ``limits``; a stale one (a crashed run) is killed and recreated."""
        cg = self.attach(name)
        self._check_limits(limits)
        if self.version == 2:  # children see only controllers enabled in every ancestor
            self._enable(str(self.root))
            self._mkdir(f"{self.root}/{self.base}")
            self._enable(f"{self.root}/{self.base}")
        stale = False
        for path in cg.dirs:
            stale = self._mkdir(path) or stale
        if stale:
            cg.remove()
            for path in cg.dirs:
                if self._mkdir(path):
                    raise _error("create", "recreate", path, FileExistsError(errno.EEXIST, "still exists"))
        try:
            cg.apply(limits)
        except SandboxError:
            with contextlib.suppress(SandboxError):
                cg.remove()
            raise
        return cg

    def _check_limits(self, limits: CgroupLimits) -> None:
        needed = {"memory": limits.memory_max, "cpu": limits.cpu_quota_us, "pids": limits.pids_max}
        for controller, value in needed.items():
            if value is not None and controller not in self.hierarchies:
                raise SandboxError(
                    f"the {controller} controller is not available under {self.root}",
                    where="cgroups: create",
                    hint=f"mount/enable the {controller} controller or drop the {controller} limit",
                )

    def _enable(self, parent: str) -> None:
        """v2: let children of ``parent`` use our controllers."""
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in self.hierarchies)
        if wanted:
            _write(f"{parent}/cgroup.subtree_control", wanted.encode(), "enable controllers")

    def _mkdir(self, path: str) -> bool:
        """Create one cgroup directory (and ``<base>`` when missing); ``True`` if it already existed."""
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            return True
        except OSError as exc:
            parent = os.path.dirname(path)
            if exc.errno != errno.ENOENT or os.path.basename(parent) != self.base:
                raise _error("create", "create", path, exc) from None
            self._mkdir(parent)
            return self._mkdir(path)
        return False


class Cgroup:
    """One bot's cgroup, spread over one directory per hierarchy (a single one on v2).

    Usable as a context manager: leaving the block calls :meth:`remove`.
    """

    def __init__(self, name: str, version: Literal[1, 2], roles: Mapping[str, str]) -> None:
        self.name = name
        self.version: Literal[1, 2] = version
        self._roles = dict(roles)
        self.dirs: tuple[str, ...] = tuple(dict.fromkeys(roles.values()))
        """Distinct cgroup directories, one per hierarchy."""

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, v{self.version}, {list(self.dirs)})"

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    @property
    def paths(self) -> tuple[Path, ...]:
        """The cgroup's directories as paths."""
        return tuple(Path(d) for d in self.dirs)

    def apply(self, limits: CgroupLimits) -> None:
        """Write ``limits`` into a freshly created cgroup (unset limits stay at the kernel default)."""
        step = "limits"
        mem, cpu, pids = self._roles.get("memory"), self._roles.get("cpu"), self._roles.get("pids")
        io = self._roles.get("io" if self.version == 2 else "blkio")
        if self.version == 2:
            if mem is not None:
                if limits.memory_max is not None:
                    _write(f"{mem}/memory.max", b"%d" % limits.memory_max, step)
                _write(f"{mem}/memory.swap.max", b"%d" % limits.swap_max, step, optional=True)
            if cpu is not None and limits.cpu_quota_us is not None:
                value = b"%d %d" % (limits.cpu_quota_us, limits.cpu_period_us)
                _write(f"{cpu}/cpu.max", value, step)
            if pids is not None and limits.pids_max is not None:
                _write(f"{pids}/pids.max", b"%d" % limits.pids_max, step)
            if io is not None and limits.io_weight is not None:
                weight = _clamp(limits.io_weight, 1, 10000)
                if not _write(f"{io}/io.weight", b"default %d" % weight, step, optional=True):
                    bfq = b"default %d" % _clamp(weight, 1, 1000)
                    _write(f"{io}/io.bfq.weight", bfq, step, optional=True)
            return
        if mem is not None:
            if limits.memory_max is not None:
                # memsw >= limit_in_bytes at all times: on a fresh cgroup both are unlimited,
                # so lower the memory limit first, then memsw.
                _write(f"{mem}/memory.limit_in_bytes", b"%d" % limits.memory_max, step)
                memsw = b"%d" % (limits.memory_max + limits.swap_max)
                _write(f"{mem}/memory.memsw.limit_in_bytes", memsw, step, optional=True)
            if limits.swap_max == 0:
                _write(f"{mem}/memory.swappiness", b"0", step, optional=True)
            _write(f"{mem}/memory.oom_control", b"0", step, optional=True)  # OOM killer stays on
        if cpu is not None and limits.cpu_quota_us is not None:
            _write(f"{cpu}/cpu.cfs_period_us", b"%d" % limits.cpu_period_us, step)
            _write(f"{cpu}/cpu.cfs_quota_us", b"%d" % limits.cpu_quota_us, step)
        if pids is not None and limits.pids_max is not None:
            _write(f"{pids}/pids.max", b"%d" % limits.pids_max, step)
        if io is not None and limits.io_weight is not None:
            _write(f"{io}/blkio.bfq.weight", b"%d" % _clamp(limits.io_weight, 1, 1000), step, optional=True)
            _write(f"{io}/blkio.weight", b"%d" % _clamp(limits.io_weight, 10, 1000), step, optional=True)

    def set_cpu_quota(self, quota_us: int, period_us: int = 100_000) -> None:
        """Change a running cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_*``); raises without
        a cpu controller or when the write fails. The processes keep running."""
        cpu = self._roles.get("cpu")
        if cpu is None:
            raise SandboxError(f"the cgroup {self.name} has no cpu controller", where="cgroups: cpu quota")
        if self.version == 2:
            _write(f"{cpu}/cpu.max", b"%d %d" % (quota_us, period_us), "cpu quota")
        else:
            _write(f"{cpu}/cpu.cfs_period_us", b"%d" % period_us, "cpu quota")
            _write(f"{cpu}/cpu.cfs_quota_us", b"%d" % quota_us, "cpu quota")

    def cpu_quota(self) -> int | None:
        """The CPU quota in microseconds per period; None without a cpu controller or a limit."""
        v2 = self.version == 2
        text = (self._read("cpu", "cpu.max" if v2 else "cpu.cfs_quota_us") or b"").split()
        return int(text[0]) if text and text[0].isdigit() else None

    def add(self, pid: int) -> None:
        """Move process ``pid`` (its whole thread group) into the cgroup in every hierarchy."""
        data = b"%d" % pid
        for path in self.dirs:
            _write(f"{path}/cgroup.procs", data, "add")

    def pids(self) -> list[int]:
        """Processes (thread-group ids) in the cgroup in any hierarchy; ``[]`` once removed."""
        found: set[int] = set()
        for path in self.dirs:
            found.update(int(p) for p in (_read(f"{path}/cgroup.procs") or b"").split())
        return sorted(found)

    def stats(self) -> CgroupStats:
        """Current accounting: CPU time, memory use and peak, pid count, OOM kills, throttling."""
        v2 = self.version == 2
        cpu = _keyed(self._read("core" if v2 else "cpu", "cpu.stat"))
        usage = cpu.get("usage_usec", -1) * 1000 if v2 else self._int("cpuacct", "cpuacct.usage")
        throttled = cpu.get("throttled_usec", -1) * 1000 if v2 else cpu.get("throttled_time")
        return CgroupStats(
            cpu_usage_ns=None if usage is None or usage < 0 else usage,
            memory_current=self._int("memory", "memory.current" if v2 else "memory.usage_in_bytes"),
            memory_peak_bytes=self._int("memory", "memory.peak" if v2 else "memory.max_usage_in_bytes"),
            pids_current=self._int("pids", "pids.current"),
            oom_kills=self._oom_kills(),
            cpu_throttled_periods=cpu.get("nr_throttled"),
            cpu_throttled_ns=None if throttled is None or throttled < 0 else throttled,
        )

    def _read(self, role: str, name: str) -> bytes | None:
        path = self._roles.get(role)
        return None if path is None else _read(f"{path}/{name}")

    def _int(self, role: str, name: str) -> int | None:
        text = (self._read(role, name) or b"").strip()
        return int(text) if text.isdigit() else None

    def _oom_kills(self) -> int | None:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _keyed(self._read("memory", name)).get("oom_kill")

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this cgroup since it was created."""
        return (self._oom_kills() or 0) > 0

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every process in the cgroup (for example SIGTERM before :meth:`kill`)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self, timeout: float = 2.0) -> None:
        """SIGKILL every process, forks included, and wait until the cgroup is empty. Idempotent."""
        deadline = time.monotonic() + timeout
        core = self._roles.get("core")
        if core is not None and _write(f"{core}/cgroup.kill", b"1", "kill", optional=True):
            self._wait_empty(deadline, resignal=False)
            return
        if not self.pids():
            return
        frozen = self._freeze(True, time.monotonic() + timeout / 2)
        try:
            self.signal(SIGKILL)
        finally:
            if frozen:
                self._freeze(False, 0.0)
        self._wait_empty(deadline, resignal=True)

    def freeze(self, timeout: float = 5.0) -> bool:
        """Freeze every process (cgroup freezer) and wait until they are; ``False`` without a
        freezer on this host. A freeze not complete within ``timeout`` is undone, then raised."""
        if not self._freeze(True, time.monotonic() + timeout):
            return False
        if self.freezer_state() != "frozen":
            self._freeze(False, 0.0)
            raise SandboxError(
                f"the cgroup {self.dirs[0]} did not freeze within {timeout:g}s",
                where="cgroups: freeze",
                hint="a process is stuck in uninterruptible sleep (D state); check dmesg",
            )
        return True

    def thaw(self) -> None:
        """Let the processes run again (a no-op without a freezer)."""
        self._freeze(False, 0.0)

    def freezer_state(self) -> str | None:
        """``"frozen"``, ``"freezing"`` (v1, in progress) or ``"thawed"``; None without a freezer."""
        if self.version == 2:
            events = _read(f"{self.dirs[0]}/cgroup.events")
            if events is None:
                return None
            return "frozen" if b"frozen 1" in events else "thawed"
        freezer = self._roles.get("freezer")
        state = None if freezer is None else _read(f"{freezer}/freezer.state")
        return None if state is None else state.strip().decode().lower()

    def _freeze(self, on: bool, deadline: float) -> bool:
        """Freeze or thaw and wait for it (bounded); ``False`` without a freezer."""
        if self.version == 2:
            path, data, done = f"{self.dirs[0]}/cgroup.freeze", b"1" if on else b"0", b"frozen 1"
            state = f"{self.dirs[0]}/cgroup.events"
        elif (freezer := self._roles.get("freezer")) is not None:
            path = state = f"{freezer}/freezer.state"
            data = done = b"FROZEN" if on else b"THAWED"
        else:
            return False
        if not _write(path, data, "freeze" if on else "thaw", optional=True):
            return False
        delay = 0.0002
        while on and done not in (_read(state) or done) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        return True

    def _populated(self) -> bool:
        if self.version == 2:
            return b"populated 1" in (_read(f"{self.dirs[0]}/cgroup.events") or b"")
        return bool(self.pids())

    def _wait_empty(self, deadline: float, *, resignal: bool) -> None:
        """Wait until no process is left (SIGKILLing stragglers if ``resignal``); raise at ``deadline``."""
        delay = 0.0002
        while self._populated():
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"processes {self.pids()} survived SIGKILL in {self.dirs[0]}",
                    where="cgroups: kill",
                    hint="a process is stuck in uninterruptible sleep (D state); check dmesg",
                )
            if resignal:
                self.signal(SIGKILL)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def remove(self, timeout: float = 2.0) -> None:
        """Kill every process, then remove the directory in every hierarchy. Idempotent."""
        self.kill(timeout)
        for path in self.dirs:
            deadline = time.monotonic() + 1.0
            while True:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise _error("remove", "remove", path, exc) from None
                    time.sleep(0.005)
                    continue
                break


def detect(
    root: Path = Path("/sys/fs/cgroup"), mounts: Path = Path("/proc/self/mounts"), base: str = "clawpen"
) -> CgroupHost:
    """Find how cgroups are mounted under ``root``: unified v2, or v1/hybrid hierarchies."""
    _check_name(base, "base")
    try:
        table = mounts.read_text()
    except OSError as exc:
        raise _error("detect", "read", str(mounts), exc) from None
    top = os.path.normpath(root)
    v1: dict[str, Path] = {}
    is_v2 = False
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = os.path.normpath(_OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), fields[1]))
        fstype, options = fields[2], fields[3]
        if fstype == "cgroup2" and point == top:
            is_v2 = True
        elif fstype == "cgroup" and (point == top or point.startswith(top.rstrip("/") + "/")):
            for controller in options.split(","):
                if controller in V1_CONTROLLERS:
                    v1.setdefault(controller, Path(point))
    if is_v2 or (not v1 and (root / "cgroup.controllers").exists()):
        try:
            offered = (root / "cgroup.controllers").read_text().split()
        except OSError as exc:
            raise _error("detect", "read", str(root / "cgroup.controllers"), exc) from None
        return CgroupHost(2, root, {c: root for c in V2_CONTROLLERS if c in offered}, base)
    if not v1:
        raise SandboxError(
            f"no cgroup hierarchy is mounted under {root}",
            where="cgroups: detect",
            hint=f"mount cgroup2 at {root} (or the v1 controllers below it)",
        )
    return CgroupHost(1, root, v1, base)
