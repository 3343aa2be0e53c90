"""The namespace tier: bubblewrap for namespaces and mounts, cgroups for limits, seccomp.

Running a plan is an ordered list of named steps; a failing step raises
:class:`~clawpen.errors.SandboxError` naming itself:

1. ``workspace``  check where the workspace is, create it or check who owns it
                  (:mod:`clawpen.sandbox.workspace`)
2. ``seccomp``    compile (or load from cache) the BPF filter into a memfd
3. ``files``      generated /etc files and the bwrap arguments into memfds; pin host paths as fds
4. ``cgroups``    create the bot's cgroup with its limits
5. ``spawn``      start bwrap as the bot's uid; it builds the sandbox and blocks before exec
6. ``enter``      move the sandbox into the cgroup while it is blocked (rlimits are set
                  inside by ``prlimit``, see :func:`clawpen.sandbox.bwrap.limited_command`)
7. ``start``      unblock; the bot's command runs
8. ``wait``       wait on a pidfd; timeout, disk cap and forwarded signals act on the cgroup
9. ``teardown``   kill whatever is left in the cgroup, read OOM and usage, remove it
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any

from clawpen.errors import HostError, SandboxError, UsageError
from clawpen.paths import cache_dir
from clawpen.plan.model import Plan
from clawpen.sandbox import cgroups, seccomp, spawnmark
from clawpen.sandbox.bwrap import BwrapFds, bwrap_argv
from clawpen.sandbox.foreground import FORWARDED_SIGNALS, wait
from clawpen.sandbox.handle import CgroupHandle
from clawpen.sandbox.procs import become_subreaper, memfd, readable, reap
from clawpen.sandbox.spawnbw import popen_bwrap
from clawpen.sandbox.tier import (
    EXIT_DISK,
    EXIT_SETUP,
    EXIT_TIMEOUT,
    Reason,
    RunResult,
    SandboxRecord,
    Stdio,
    result_from_status,
)
from clawpen.sandbox.workspace import prepare_workspace as prepare_workspace  # noqa: PLC0414 (re-export)
from clawpen.sandbox.workspace import unreachable_parent
from clawpen.spec.rules import check_workspace_location

if TYPE_CHECKING:
    from clawpen.sandbox.adopt import AdoptedSandbox

_CHILD_PID = re.compile(rb'"child-pid"\s*:\s*(\d+)')  # from bubblewrap's --info-fd JSON
INHERIT = Stdio()


class NamespaceTier:
    """Runs a plan under bubblewrap + cgroups + seccomp as the plan's unprivileged uid
    (a :class:`~clawpen.sandbox.tier.Tier`)."""

    name = "sandbox"
    makes_netns = False  # the bot joins the namespace of its plan's link (made before start)

    def __init__(
        self,
        state: Path,
        *,
        bwrap: str = "bwrap",
        cgroup_host: cgroups.CgroupHost | None = None,
        kill_grace: float = 10.0,
    ) -> None:
        self._state = state
        self._bwrap = bwrap
        self._cgroups = cgroup_host
        self._kill_grace = kill_grace

    def run(
        self, plan: Plan, *, timeout: float | None = None, secrets: Mapping[str, bytes] = MappingProxyType({})
    ) -> RunResult:
        """Run ``plan`` in the foreground (``clawpen run``): stdio inherited, signals forwarded.
        The handlers are in place before bubblewrap starts: a signal that comes while the sandbox
        is being built cancels the run (the sandbox is killed as soon as it exists: bubblewrap
        would not pass the signal on before the bot's command runs), never left to kill clawpen
        alone, which would leave the bot running."""
        box: dict[str, Any] = {"sandbox": None, "held": None}

        def hold(signum: int, _frame: FrameType | None) -> None:
            target = box["sandbox"]
            if target is not None:
                target.pending_signal = signum
            else:
                box["held"] = signum

        old = {s: signal.signal(s, hold) for s in FORWARDED_SIGNALS}
        try:
            sandbox = self.start(plan, secrets=secrets)
            box["sandbox"] = sandbox
            if box["held"] is not None:
                sandbox.kill()  # a Ctrl-C during the set-up: cancel, at once
            try:
                return sandbox.wait(timeout)
            finally:
                sandbox.teardown()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def start(
        self,
        plan: Plan,
        *,
        cgroup_name: str | None = None,
        stdio: Stdio = INHERIT,
        status_fd: int | None = None,
        secrets: Mapping[str, bytes] = MappingProxyType({}),
        wire_net: Callable[[int], None] | None = None,
        hold: bool = False,
    ) -> Sandbox:
        """Build the sandbox and start the bot; the caller waits (``sandbox.pidfd``), then calls
        :meth:`Sandbox.collect` and :meth:`Sandbox.teardown`. ``status_fd`` receives
        bubblewrap's JSON status, including the exit code, even if the caller is gone by then.
        ``wire_net`` is never called: this tier does not make the bot's network namespace.

        With ``hold`` the sandbox is built completely (mounts, cgroup, as the bot's uid in its
        network namespace) and bubblewrap waits just before seccomp and the exec, until
        :meth:`Sandbox.release` (a warm spare, see :meth:`prepare`)."""
        become_subreaper()
        sandbox = Sandbox(
            self,
            plan,
            cgroup_name=cgroup_name or f"{plan.bot}-{os.getpid()}",
            stdio=stdio,
            secrets=secrets,
            hold=hold,
        )
        try:
            sandbox.setup(status_fd)
            sandbox.spawn()
        except BaseException:
            sandbox.teardown()
            raise
        return sandbox

    def prepare(
        self,
        plan: Plan,
        *,
        cgroup_name: str,
        stdio: Stdio,
        status_fd: int,
        secrets: Mapping[str, bytes] = MappingProxyType({}),
    ) -> Sandbox:
        """A warm spare (a :class:`~clawpen.sandbox.tier.HoldingTier`): the sandbox of ``plan``
        built and held before its command; :meth:`Sandbox.release` runs the bot in it. Its
        isolation is a cold start's: the same steps build it, only the unblock waits."""
        return self.start(
            plan, cgroup_name=cgroup_name, stdio=stdio, status_fd=status_fd, secrets=secrets, hold=True
        )

    def adopt(self, record: SandboxRecord, *, status: Path, started_at: float) -> AdoptedSandbox | None:
        """The sandbox of ``record`` if its bubblewrap still runs (the same pid and start time),
        from its cgroup and the status file bubblewrap writes its exit code to."""
        from clawpen.procfs import same_process
        from clawpen.sandbox.adopt import AdoptedSandbox

        if record.cgroup is None or not same_process(record.pid, record.pid_start):
            return None
        cgroup = self.cgroup_host().attach(record.cgroup)
        return AdoptedSandbox(record.pid, record.sandbox_pid, cgroup, status, started_at)

    def cgroup_host(self) -> cgroups.CgroupHost:
        if self._cgroups is None:
            self._cgroups = cgroups.detect()
        return self._cgroups


class Sandbox(CgroupHandle):
    """One started sandbox (a :class:`~clawpen.sandbox.tier.RunningSandbox`); every resource
    it opens is released by :meth:`teardown`."""

    def __init__(
        self,
        tier: NamespaceTier,
        plan: Plan,
        *,
        cgroup_name: str,
        stdio: Stdio,
        secrets: Mapping[str, bytes] = MappingProxyType({}),
        hold: bool = False,
    ) -> None:
        self.secrets = secrets
        self.hold = hold
        self.tier = tier
        self.plan = plan
        self.cgroup_name = cgroup_name
        self.stdio = stdio
        self.fds: list[int] = []
        self.cgroup: cgroups.Cgroup | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.block_r = self.block_w = self.info_r = -1
        self.bwrap_fds = BwrapFds()
        self.started = 0.0
        self.unblocked = False
        self.stop_reason: str | None = None
        self.sandbox: tuple[int, int] | None = None  # (pid, pidfd) of the sandbox's pid 1
        self.pending_signal: int | None = None
        self.mark: Path | None = None  # while bubblewrap runs outside the cgroup (spawnmark)

    @property
    def kill_grace(self) -> float:
        """Seconds between a forwarded signal and SIGKILL (the tier's)."""
        return self.tier._kill_grace

    @property
    def cg(self) -> cgroups.Cgroup:
        if self.cgroup is None:
            raise SandboxError("the cgroup was used before it was created", where="cgroups")
        return self.cgroup

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise SandboxError("bubblewrap was waited on before it was started", where="spawn")
        return self.proc

    def _keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    @property
    def pid(self) -> int:
        """The host pid of bubblewrap (the sandbox's monitor, our child)."""
        return self.process.pid

    @property
    def sandbox_pid(self) -> int | None:
        """The host pid of the sandbox's pid 1 (in the bot's namespaces and cgroup)."""
        return None if self.sandbox is None else self.sandbox[0]

    def _secret(self, name: str) -> bytes:
        try:
            return self.secrets[name]
        except KeyError:
            raise SandboxError(
                f"secret {name} was not handed to the sandbox",
                where="files",
                hint=f"clawpen secrets set {name}",
            ) from None

    def setup(self, status_fd: int | None = None) -> None:
        """Everything before bubblewrap starts, as named steps (nsjail's model): each runs in
        turn, and an ``OSError`` in one becomes a ``SandboxError`` naming that step."""
        steps: tuple[tuple[str, Callable[[], None]], ...] = (
            ("checks", self._checks),
            ("workspace", self._workspace),
            ("seccomp", self._seccomp),
            ("files", self._files),
            ("argv", lambda: self._argv(status_fd)),
            ("cgroup", self._cgroup),
        )
        for where, step in steps:
            try:
                step()
            except OSError as err:
                raise SandboxError(
                    f"setting up the sandbox failed at step {where}: {err.strerror or err}",
                    where=where,
                    hint="see `clawpen doctor` for what this host is missing",
                ) from None

    def _checks(self) -> None:
        plan = self.plan
        if os.geteuid() != 0:
            raise HostError(
                "the namespace sandbox needs root: it starts each bot as its own host uid and "
                "creates its cgroup",
                where="sandbox",
                hint="run clawpen as root (sudo clawpen ...)",
            )
        if plan.link is not None and plan.link.preview:
            raise UsageError(
                "this bot has egress, which needs its link to the clawpen gateway",
                where="network",
                hint="run it under the daemon: clawpen up",
            )

    def _workspace(self) -> None:
        plan = self.plan
        uid, gid = plan.identity.uid, plan.identity.gid
        if plan.workspace:  # the last word on where it is, before anything is made or handed over
            check_workspace_location(
                plan.workspace, state_dir=self.tier._state, spec_file=None, what="workspace"
            )
        for m in plan.mounts:
            blocked = unreachable_parent(m.source, uid, gid) if m.pin and m.source else None
            if blocked:
                raise SandboxError(
                    f"the bot's uid {uid} cannot reach {m.source}: {blocked} is closed to it "
                    f"(mode {os.stat(blocked).st_mode & 0o777:o})",
                    where="workspace",
                    hint=f"move it below a folder others may enter, or `chmod o+x {blocked}`",
                )
        if plan.workspace:
            prepare_workspace(plan.workspace, uid, gid, adopt=plan.workspace_adopt)
        self._sweep_stale_cgroups()

    def _seccomp(self) -> None:
        bpf = seccomp.bpf_for(self.plan.seccomp, cache_dir(self.tier._state))
        self._seccomp_fd = self._keep(memfd("clawpen-seccomp", bpf))

    def _files(self) -> None:
        self._data: dict[str, int] = {}
        self._pinned: dict[str, int] = {}
        for m in self.plan.mounts:
            if m.kind == "data" and m.data is not None:
                self._data[m.dest] = self._keep(memfd("clawpen-file", m.data.encode()))
            elif m.kind == "secret" and m.source is not None:
                self._data[m.dest] = self._keep(memfd("clawpen-secret", self._secret(m.source)))
            elif m.pin and m.source:
                try:
                    fd = os.open(m.source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as err:
                    raise SandboxError(
                        f"cannot open {m.source} to mount at {m.dest}: {err.strerror}",
                        where="files",
                        hint="check the path exists",
                    ) from None
                self._pinned[m.dest] = self._keep(fd)

    def _argv(self, status_fd: int | None) -> None:
        plan = self.plan
        self.block_r, self.block_w = (self._keep(fd) for fd in os.pipe2(os.O_CLOEXEC))
        # bubblewrap takes EOF on its block fd as "go": it gets the pipe opened read-write, so it
        # holds a writer itself. If the daemon dies before releasing it (a held spare, or a cold
        # start before its cgroup join), it never reads EOF and waits, until the next daemon
        # removes it, rather than running an unsupervised copy of the bot outside its cgroup.
        # bubblewrap closes the fd once it has read the byte, before the bot's command runs.
        block = self._keep(os.open(f"/proc/self/fd/{self.block_r}", os.O_RDWR | os.O_CLOEXEC))
        self.info_r, info_w = (self._keep(fd) for fd in os.pipe2(os.O_CLOEXEC))
        self.info_w = info_w
        self.bwrap_fds = BwrapFds(
            block=block,
            info=info_w,
            seccomp=self._seccomp_fd,
            status=status_fd,
            data=self._data,
            pinned=self._pinned,
            secret_env={n: self._secret(n).decode(errors="replace") for n in plan.secret_env},
        )
        argv = bwrap_argv(plan, self.bwrap_fds, self.tier._bwrap)
        split = argv.index("--")
        # Options travel through a memfd (--args), so environment values never show in `ps`;
        # bubblewrap wants the command itself on its real argv.
        self.args_fd = self._keep(memfd("clawpen-args", b"".join(a.encode() + b"\0" for a in argv[1:split])))
        self.command_argv = argv[split:]

    def _cgroup(self) -> None:
        self.cgroup = self.tier.cgroup_host().create(self.cgroup_name, self.plan.cgroup)

    def _sweep_stale_cgroups(self) -> None:
        """Remove cgroups left by runs of this bot whose clawpen process was killed."""
        host = self.tier.cgroup_host()
        prefix = f"{self.plan.bot}-"
        for name in host.names():
            suffix = name.removeprefix(prefix)
            if name.startswith(prefix) and suffix.isdigit() and not os.path.exists(f"/proc/{suffix}"):
                with contextlib.suppress(SandboxError):
                    host.attach(name).remove()

    def spawn(self) -> None:
        fds = self.bwrap_fds
        passed = (
            fds.block,
            fds.info,
            fds.seccomp,
            fds.status,
            self.args_fd,
            *fds.data.values(),
            *fds.pinned.values(),
            *self.stdio.extra,
        )
        self.started = time.monotonic()
        try:
            self.proc = popen_bwrap(
                self.plan,
                [self.tier._bwrap, "--args", str(self.args_fd), *self.command_argv],
                passed,
                self.stdio,
            )
        except OSError as err:
            raise SandboxError(
                f"cannot start bubblewrap ({self.tier._bwrap}): {err.strerror}",
                where="spawn",
                hint="install it: apt-get install bubblewrap",
            ) from None
        if not self.plan.die_with_parent:  # it outlives a killed daemon: see spawnmark
            uid = self.plan.identity.uid
            self.mark = spawnmark.write(self.tier._state, self.cgroup_name, self.proc.pid, uid)
        # bubblewrap has its own copies now: only the block pipe, the info pipe's read end and
        # the pidfds stay open here (a daemon with 500 bots and their spares holds thousands
        # fewer descriptors, and each fork copies fewer)
        handed = {self.info_w, self.args_fd, *fds.data.values(), *fds.pinned.values()}
        handed |= {fd for fd in (fds.seccomp, fds.block) if fd is not None and fd != self.block_r}
        for fd in handed:
            os.close(fd)
        self.fds = [fd for fd in self.fds if fd not in handed]
        child = self._read_child_pid()  # info_r stays open: bubblewrap writes more after the pid
        with contextlib.suppress(ProcessLookupError):
            self.sandbox = (child, self._keep(os.pidfd_open(child)))
        try:
            self.cg.add(child)
        except SandboxError:
            if os.path.exists(f"/proc/{child}") and self.process.poll() is None:
                raise
            return  # bwrap failed its set-up and exited; wait() reports it
        finally:
            spawnmark.clear(self.mark)
        if not self.hold:
            self.release()

    def release(self) -> None:
        """Let bubblewrap go on (seccomp, its pid 1, the exec of the bot): a start's last step,
        or the whole restart of a held spare. The run is timed from here."""
        if not self.unblocked:
            os.write(self.block_w, b"1")
            self.unblocked = True
            self.started = time.monotonic()

    def _read_child_pid(self) -> int:
        buf = b""
        while True:
            chunk = os.read(self.info_r, 4096)
            if not chunk:
                break
            buf += chunk
            found = _CHILD_PID.search(buf)
            if found:
                return int(found.group(1))
        status = self.process.wait()
        if status in (126, 127):  # setpriv could not exec it
            raise SandboxError(
                f"cannot start bubblewrap ({self.tier._bwrap}): "
                + ("not found" if status == 127 else "not executable"),
                where="spawn",
                hint="install it: apt-get install bubblewrap",
            )
        raise SandboxError(
            f"bubblewrap failed before the sandbox started (exit status {status})",
            where="spawn",
            hint="run `clawpen doctor`; bubblewrap's own message is printed above",
        )

    def wait(self, timeout: float | None) -> RunResult:
        """Wait in the foreground (``clawpen run``): see :func:`clawpen.sandbox.foreground.wait`."""
        return wait(self, timeout)

    def collect(self) -> RunResult:
        """How the run ended, once bubblewrap has exited (waits for it otherwise)."""
        status = self.process.wait()
        return self._result(status, time.monotonic() - self.started)

    def _result(self, status: int, duration: float) -> RunResult:
        cg = self.cg
        setup_failed = not self.unblocked or readable(self.block_r, 0)
        stats = cg.stats()

        def result(code: int, reason: Reason, sig: int | None = None, message: str = "") -> RunResult:
            cpu = None if stats.cpu_usage_ns is None else stats.cpu_usage_ns / 1e9
            return RunResult(code, reason, sig, duration, cpu, stats.memory_peak_bytes, message)

        if setup_failed:
            return result(EXIT_SETUP, "setup-failed", message="bubblewrap could not build the sandbox")
        if self.stop_reason == "timeout":
            return result(EXIT_TIMEOUT, "timeout", message="killed: timeout reached")
        if self.stop_reason == "disk":
            return result(EXIT_DISK, "disk", message="killed: workspace disk cap exceeded")
        cpu = None if stats.cpu_usage_ns is None else stats.cpu_usage_ns / 1e9
        return result_from_status(
            status, oom=cg.oom_killed(), duration_s=duration, cpu_s=cpu, memory_peak=stats.memory_peak_bytes
        )

    def teardown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.cgroup is not None:
                self.cgroup.kill()
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        if self.sandbox is not None:
            reap(*self.sandbox)
        if self.cgroup is not None:
            self.cgroup.remove()
        spawnmark.clear(self.mark)
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
