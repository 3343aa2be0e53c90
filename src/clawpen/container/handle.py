"""A running container bot, as the daemon's supervisor uses it
(:class:`clawpen.sandbox.tier.RunningSandbox`).

The host pid clawpen watches is the container's init (Docker's ``--init``): its pidfd turns
readable when the container ends. The bot's namespaces are reached through that pid (`exec`,
``cmd`` checks through :mod:`clawpen.sandbox.enter`; sockets through
:mod:`clawpen.sandbox.netsock`); signals and the exit status go through the engine; accounting
comes from clawpen's cgroup ``clawpen/<cgroup>``, the container's cgroup parent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from clawpen.errors import SandboxError
from clawpen.procfs import pid_start_time
from clawpen.sandbox.cgroups import Cgroup
from clawpen.sandbox.tier import RunResult, SandboxRecord, result_from_status

if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Sequence
    from typing import IO

    from docker.models.containers import Container

    from clawpen.container.files import InstanceFiles
    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import CgroupStats

    _Stream = int | IO[bytes] | None

EXIT_UNKNOWN = 255
WAIT_TIMEOUT = 10.0
OOM_GRACE = 2.0  # seconds the engine may take to record an OOM kill after the exit (late_oom_possible)
SIGKILLED = 128 + 9


def _seconds(stamp: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, ``Z``) as a Unix time; None for its zero time."""
    if not stamp or stamp.startswith("0001-"):
        return None
    text = stamp.rstrip("Z")
    whole, _, frac = text.partition(".")
    try:
        base = datetime.fromisoformat(whole + "+00:00").timestamp()
    except ValueError:
        return None
    return base + (float(f"0.{frac[:9]}") if frac.isdigit() else 0.0)


def result_from_state(state: dict[str, Any], *, fallback_started: float, oom: bool = False) -> RunResult:
    """How a container ended, from ``docker inspect``'s ``State`` (pure); ``oom``: clawpen saw
    the OOM killer at work (Podman on cgroup v1 leaves ``OOMKilled`` false)."""
    started = _seconds(state.get("StartedAt")) or fallback_started
    finished = _seconds(state.get("FinishedAt")) or time.time()
    code = state.get("ExitCode")
    result = result_from_status(
        EXIT_UNKNOWN if not isinstance(code, int) else code,
        oom=oom or bool(state.get("OOMKilled")),
        duration_s=max(0.0, finished - started),
    )
    if not isinstance(code, int):
        return result._replace(message="exit status lost: the engine reported none")
    return result


def late_oom_possible(state: dict[str, Any], host_config: dict[str, Any], peak: int | None) -> bool:
    """Whether a container's end may be an OOM kill the engine has not recorded yet (pure).
    Docker records an OOM kill when containerd's OOM event arrives, which on a loaded host can
    come after the exit it caused: a SIGKILLed container (exit 137) whose memory peaked near
    its limit is worth asking again for :data:`OOM_GRACE` seconds."""
    limit = host_config.get("Memory") or 0
    return (
        state.get("ExitCode") == SIGKILLED
        and not state.get("OOMKilled")
        and isinstance(limit, int)
        and limit > 0
        and peak is not None
        and peak >= limit * 0.9
    )


def remove_parent(cgroup: Cgroup, timeout: float = 2.0) -> None:
    """Remove clawpen's cgroup around a container in every hierarchy the engine made it in (on v1
    also cpuset, devices, name=systemd and the unified one, which clawpen itself does not use),
    with the ``conmon`` cgroup Podman makes in it for the container's monitor and never removes."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            points = [ln.split()[1] for ln in f if ln.split()[2:3] in (["cgroup"], ["cgroup2"])]
    except OSError:
        points = []
    base = os.path.basename(os.path.dirname(cgroup.dirs[0])) if cgroup.dirs else "clawpen"
    paths = [f"{point}/{base}/{cgroup.name}" for point in points]
    for path in paths:
        with contextlib.suppress(OSError):
            os.rmdir(f"{path}/conmon")
    with contextlib.suppress(SandboxError):
        cgroup.remove()
    deadline = time.monotonic() + timeout
    for path in paths:
        while True:
            try:
                os.rmdir(path)
            except OSError as err:
                if err.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
            break


def cgroup_dirs(member: str, mountinfo: str) -> list[str]:
    """The cgroup directories a process is in, one per hierarchy mounted here (pure): ``member``
    is its ``/proc/PID/cgroup``, ``mountinfo`` this mount namespace's ``/proc/self/mountinfo``
    (only mounts of a hierarchy's root count: a bind of a sub-folder would give wrong paths).
    A hierarchy where the process is in the root cgroup is left out."""
    roots: list[tuple[str, set[str]]] = []  # (mount point, controllers; empty for cgroup2)
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3 or fields[3] != "/":
            continue
        if after[0] == "cgroup2":
            roots.append((fields[4], set()))
        elif after[0] == "cgroup":
            roots.append((fields[4], set(after[2].split(","))))
    found: list[str] = []
    for line in member.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[2].strip() == "/":
            # a hierarchy the engine did not place the container in (clawpen's own favordynmods
            # hierarchy, any named one mounted after the engine started): its root holds every
            # process of the host, which a kill must never reach
            continue
        wanted = set(parts[1].split(",")) - {""}
        for point, options in roots:
            if (not wanted and not options) or (wanted and wanted <= options):
                found.append(point if parts[2] == "/" else point + parts[2].rstrip("/"))
                break
    return found


def _cgroup_dirs(pid: int) -> list[str]:
    """:func:`cgroup_dirs` of process ``pid``; ``[]`` when it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            member = f.read()
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mountinfo = f.read()
    except OSError:
        return []
    return cgroup_dirs(member, mountinfo)


def cgroup_of(pid: int, parent: Cgroup) -> Cgroup:
    """The cgroup container init ``pid`` is in, in every hierarchy (the engine's cgroup of the
    container, under clawpen's ``parent``); ``parent`` itself when the init is gone."""
    dirs = _cgroup_dirs(pid)
    if not dirs:
        return parent
    return Cgroup(parent.name, parent.version, {str(i): d for i, d in enumerate(dirs)})


def oom_eventfd(cgroup: Cgroup) -> int | None:
    """An eventfd the kernel signals when the memory limit of ``cgroup`` (cgroup v1) leaves no
    choice but the OOM killer (``cgroup.event_control`` on ``memory.oom_control``); None where
    there is no such file."""
    from clawpen.sandbox.memevents import event_fd

    return event_fd(cgroup, "memory.oom_control")


class ContainerSandbox:
    """One container bot instance this daemon started or adopted."""

    def __init__(
        self,
        container: Container,
        pid: int,
        cgroup: Cgroup,
        files: InstanceFiles,
        *,
        started_at: float,
        uid: int,
        oom_fd: int | None = None,
    ) -> None:
        self.container = container
        self.oom_fd = oom_fd  # see oom_eventfd: where the engine's OOMKilled cannot be trusted
        self._pid = pid
        self._pid_start = pid_start_time(pid)
        self.cgroup = cgroup
        self.files = files
        self.started_at = started_at
        self.uid = uid
        self._removed = False
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def sandbox_pid(self) -> int | None:
        return self._pid

    @property
    def cgroup_name(self) -> str:
        return self.cgroup.name

    def exit_fd(self) -> int:
        if self._pidfd is None:  # already gone (and reaped by the engine's shim): readable now
            return os.eventfd(1, os.EFD_CLOEXEC)
        return os.dup(self._pidfd)

    def signal(self, signum: int) -> None:
        """``signum`` to the container's init (Docker's init forwards it to the bot), by the pidfd
        taken at start: what ``docker kill`` does, without a call to the engine on the daemon's
        event loop (a stuck engine cannot stall it) and without a pid reuse race."""
        if self._pidfd is None:
            return  # it had ended before we looked
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self, *, monitor: bool = False) -> None:
        """SIGKILL to the init of the container's pid namespace: the kernel kills the rest."""
        self.signal(signal.SIGKILL)

    def stats(self) -> CgroupStats:
        return self.cgroup.stats()

    def record(self) -> SandboxRecord:
        return SandboxRecord(self._pid, self._pid, self._pid_start, self.cgroup.name)

    def collect(self) -> RunResult:
        """How it ended, from the engine (it waits the moment the engine needs to notice)."""
        import docker.errors

        try:
            self.container.wait(timeout=WAIT_TIMEOUT)
            self.container.reload()
        except docker.errors.NotFound:
            return result_from_state({}, fallback_started=self.started_at)
        except (docker.errors.DockerException, OSError) as err:  # what the engine said last
            self.container.attrs.setdefault("State", {}).setdefault("Error", str(err))
        state = self.container.attrs.get("State") or {}
        stats = self.cgroup.stats()
        if late_oom_possible(state, self.container.attrs.get("HostConfig") or {}, stats.memory_peak_bytes):
            state = self._await_oom(state)
        result = result_from_state(state, fallback_started=self.started_at, oom=self._oom_signalled())
        cpu = None if stats.cpu_usage_ns is None else stats.cpu_usage_ns / 1e9
        return result._replace(cpu_s=cpu, memory_peak=stats.memory_peak_bytes)

    def _await_oom(self, state: dict[str, Any], grace: float = OOM_GRACE) -> dict[str, Any]:
        """The engine's ``State`` again, until it says ``OOMKilled`` or ``grace`` passes."""
        import docker.errors

        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                self.container.reload()
            except (docker.errors.DockerException, OSError):
                break
            state = self.container.attrs.get("State") or state
            if state.get("OOMKilled"):
                break
        return state

    def _oom_signalled(self) -> bool:
        if self.oom_fd is None:
            return False
        try:
            return os.eventfd_read(self.oom_fd) > 0
        except BlockingIOError:
            return False

    def teardown(self) -> None:
        """Remove the container, its host files (secrets) and clawpen's cgroup around it."""
        import docker.errors

        if not self._removed:
            with contextlib.suppress(docker.errors.NotFound):
                try:
                    self.container.remove(force=True)
                except (docker.errors.DockerException, OSError) as err:
                    raise SandboxError(
                        f"cannot remove container {self.container.name}: {err}",
                        where="container: teardown",
                        hint="is the engine running? (docker info)",
                    ) from None
            self._removed = True
        self.files.remove()
        remove_parent(self.cgroup)
        for fd in (self._pidfd, self.oom_fd):
            if fd is not None:
                os.close(fd)
        self._pidfd = self.oom_fd = None

    def own_cgroup(self) -> Cgroup:
        """The container's own cgroup, as its init is in it: the engine's, under clawpen's
        ``clawpen/<cgroup>``, in every hierarchy (memory, pids, devices, cpuset...). A command
        entered into the container joins it, as ``docker exec`` does: clawpen's parent has none
        of the container's limits. Falls back to clawpen's cgroup when the init is gone."""
        return cgroup_of(self._pid, self.cgroup)

    def enter(
        self,
        plan: Plan,
        command: Sequence[str],
        *,
        bpf: bytes,
        stdin: _Stream = None,
        stdout: _Stream = None,
        stderr: _Stream = None,
        start_timeout: float = 10.0,
    ) -> subprocess.Popen[bytes]:
        from clawpen.sandbox.enter import enter

        return enter(
            self._pid,
            plan,
            self.own_cgroup(),
            command,
            bpf=bpf,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_timeout=start_timeout,
        )

    def open_socket(self, host: str, *, uid: int | None = None) -> tuple[socket.socket, str]:
        from clawpen.sandbox.netsock import netns_socket

        return netns_socket(self._pid, host, uid)
