"""Run a command inside a running sandbox, confined like the bot (``clawpen exec``, ``cmd`` checks).

:func:`enter` starts a small helper: this very file, run by the daemon's Python as
``python -I -S enter.py CONFIG_FD REPORT_FD`` (isolated: no environment, no site, no script
folder on ``sys.path``), as root with no supplementary groups and an empty environment. The
bot's environment travels in the config pipe, never on the helper's own environment (where
``LD_PRELOAD`` would act on a root process) nor on an argv (``ps``). The helper:

1. waits for its config: the caller first moves it into the bot's cgroup (``cgroup.procs``), so
   it and everything it starts are counted, limited and killed with the bot;
2. joins the sandbox's namespaces in one ``setns(pidfd, user|mount|pid|net|ipc|uts|cgroup)``
   (Linux >= 5.8), after checking that the pid still belongs to the bot's uid;
3. drops the capability bounding set and the ambient set (possible only here: joining a user
   namespace gives a full set in it, and util-linux ``nsenter`` has no option for this), then
   ``setresgid``/``setresuid`` to the bot's ids, which clears every capability;
4. sets umask 022 and the plan's rlimits (as ``prlimit`` does for the bot), no_new_privs, then
   loads the bot's seccomp BPF with ``prctl(PR_SET_SECCOMP)``;
5. forks, since a pid namespace is entered by children only. The child takes ``PDEATHSIG``,
   changes to the plan's cwd and execs the command with the bot's environment (the plan's, and
   ``PWD`` as bubblewrap sets it). The parent, now the bot's uid without capabilities under the
   filter, waits, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT and exits like the child (a signal
   death is re-raised).

A failure before the command runs is written to the close-on-exec report pipe; :func:`enter`
reads it to its end, so it returns a process that runs the command or raises
:class:`~clawpen.errors.SandboxError` (``where="exec"``). This module imports only the
standard library at module level, so the helper runs without clawpen on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import Cgroup

NAMESPACE_FLAGS = {
    "user": 0x10000000,
    "mount": 0x00020000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "cgroup": 0x02000000,
}
"""CLONE_NEW* of each namespace a plan may unshare (the time namespace is never unshared)."""
EXIT_SETUP = 125
_PR_SET_PDEATHSIG = 1
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SECCOMP_MODE_FILTER = 2
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
_Stream = int | IO[bytes] | None


def enter_config(
    sandbox_pid: int,
    plan: Plan,
    command: Sequence[str],
    bpf: bytes,
    secret_env: Mapping[str, str] = MappingProxyType({}),
) -> bytes:
    """What the helper needs, as the JSON it reads from its config pipe (pure). ``secret_env``
    (the bot's ``secret_env`` values) follows the plan's env, as bubblewrap sets it for the bot."""
    flags = NAMESPACE_FLAGS["mount"]
    for name in plan.namespaces:
        flags |= NAMESPACE_FLAGS.get(name, 0)
    rl = plan.rlimits
    config = {
        "pid": sandbox_pid,
        "uid": plan.identity.uid,
        "gid": plan.identity.gid,
        "flags": flags,
        "cwd": plan.cwd,
        "env": [[k, v] for k, v in (*plan.env, *secret_env.items())],
        "argv": list(command),
        "rlimits": {"nofile": rl.nofile, "core": rl.core, "fsize": rl.fsize},
        "bpf": bpf.hex(),
    }
    return json.dumps(config).encode()


def enter_argv(config_fd: int, report_fd: int, python: str | None = None) -> list[str]:
    """The helper's argv: this file run by ``python`` (default: the running interpreter) (pure)."""
    helper = os.path.abspath(__file__)
    return [python or sys.executable, "-I", "-S", "-B", helper, str(config_fd), str(report_fd)]


def enter(
    sandbox_pid: int,
    plan: Plan,
    cgroup: Cgroup | None,
    command: Sequence[str],
    *,
    bpf: bytes,
    stdin: _Stream = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    new_group: bool = True,
    python: str | None = None,
    start_timeout: float = 10.0,
    secret_env: Mapping[str, str] = MappingProxyType({}),
) -> subprocess.Popen[bytes]:
    """Start ``command`` inside the running sandbox whose pid 1 is host pid ``sandbox_pid``.

    It runs in all the sandbox's namespaces, as the bot's uid/gid with no capabilities,
    no_new_privs and the seccomp program ``bpf``, in ``plan.cwd`` with only ``plan.env``, in
    ``cgroup`` (the bot's; ``None`` leaves it in the caller's). ``secret_env`` adds the bot's
    secret environment variables; like the rest of the config they travel in the config pipe,
    never on an argv or the helper's environment. Returns once the command has
    been exec'd; the returned process is the helper, whose exit status is the command's.
    ``new_group`` puts it in its own process group, so :func:`stop` kills the command's
    children too; pass ``False`` to keep a terminal's foreground group (interactive use).
    Raises :class:`~clawpen.errors.SandboxError` when the sandbox is gone or a step fails.
    """
    from clawpen.errors import SandboxError

    hint = "is the bot running? its sandbox must be up to run a command in it"
    if not command:
        raise SandboxError("no command to run", where="exec", hint="give a command, e.g. -- sh")
    try:
        owner = os.stat(f"/proc/{sandbox_pid}").st_uid
    except OSError:
        owner = None
    if owner != plan.identity.uid:
        raise SandboxError(f"the sandbox of {plan.bot} (pid {sandbox_pid}) is gone", where="exec", hint=hint)
    config = enter_config(sandbox_pid, plan, command, bpf, secret_env)
    cfg_r, cfg_w = os.pipe2(os.O_CLOEXEC)
    rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            proc = subprocess.Popen(
                enter_argv(cfg_r, rep_w, python),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(cfg_r, rep_w),
                env={},
                cwd="/",
                extra_groups=[],
                process_group=0 if new_group else None,
            )
        except OSError as err:
            raise SandboxError(f"cannot start the exec helper: {err}", where="exec") from None
        finally:
            os.close(cfg_r)
            os.close(rep_w)
        try:
            if cgroup is not None:
                try:
                    cgroup.add(proc.pid)
                except SandboxError:
                    if os.path.exists(f"/proc/{sandbox_pid}"):
                        raise
                    raise SandboxError(
                        f"the sandbox of {plan.bot} (pid {sandbox_pid}) is gone", where="exec", hint=hint
                    ) from None
            view = memoryview(config)
            while view:
                view = view[os.write(cfg_w, view) :]
            os.close(cfg_w)
            cfg_w = -1
            report = _read_report(rep_r, start_timeout)
        except BaseException as err:
            _discard(proc, new_group)
            if isinstance(err, OSError):  # e.g. EPIPE: the helper died before it read its config
                raise SandboxError(f"the exec helper failed: {err}", where="exec") from None
            raise
        if report is None:
            _discard(proc, new_group)
            what = f"the command did not start within {start_timeout:g}s"
            raise SandboxError(what, where="exec", hint=hint)
        if report:
            _discard(proc, new_group)
            message = report.decode(errors="replace").strip()
            what = f"cannot run {command[0]} in the sandbox of {plan.bot}: {message}"
            if "gone" not in message:
                hint = "check the command exists in the sandbox and the bot's cwd and limits"
            raise SandboxError(what, where="exec", hint=hint)
        return proc
    finally:
        for fd in (cfg_w, rep_r):
            if fd >= 0:
                os.close(fd)


def stop(proc: subprocess.Popen[bytes], *, group: bool = True) -> int:
    """SIGKILL an entered command (its whole process group if ``group``), reap it, return its status.

    Also right after it exited on its own: until it is reaped, its pid (the group's id) cannot
    be reused, so what it left running in its group is killed and nothing else."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
    code = proc.wait()
    if group:
        _reap_group(proc.pid)
    return code


def _reap_group(pgid: int, timeout: float = 2.0) -> None:
    """Reap members of the helper's group that became our children: when the helper dies before
    the command, the command is re-parented to the nearest child subreaper, which the daemon is
    (see :mod:`clawpen.sandbox.namespace`), and it would stay a zombie there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)


def _discard(proc: subprocess.Popen[bytes], group: bool) -> None:
    """Stop a helper that failed and close the pipes the caller would have read."""
    stop(proc, group=group)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _read_report(fd: int, timeout: float) -> bytes | None:
    """The helper's report up to EOF: ``b""`` once the command is exec'd, ``None`` on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    poller = select.poll()  # not select(): the daemon may hold descriptors above 1024
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(1, math.ceil(left * 1000))):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


# ---- the helper (``python -I -S enter.py CONFIG_FD REPORT_FD``) -------------------------------


class _StepError(Exception):
    """A helper step failed; the message names it."""


def _prctl(libc: Any, option: int, arg: int, step: str, arg3: Any = 0) -> None:
    """prctl(option, arg, arg3, 0, 0), raising a :class:`_StepError` naming ``step``."""
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), arg3 or zero, zero, zero) != 0:
        raise _StepError(f"{step}: {os.strerror(ctypes.get_errno())}")


def _join(config: dict[str, Any], libc: Any) -> None:
    """Steps 2 and 3: namespaces, then the bot's ids without any capability."""
    pid, uid, gid = config["pid"], config["uid"], config["gid"]
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise _StepError(f"the sandbox (pid {pid}) is gone") from None
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            raise _StepError(f"pid {pid} is not the bot's sandbox any more (its uid changed)")
        if libc.setns(pidfd, config["flags"]) != 0:
            err = ctypes.get_errno()
            if err == errno.ESRCH:  # it exited and is a zombie
                raise _StepError(f"the sandbox (pid {pid}) is gone")
            raise _StepError(f"cannot join the sandbox's namespaces: {os.strerror(err)}")
    except FileNotFoundError:
        raise _StepError(f"the sandbox (pid {pid}) is gone") from None
    finally:
        os.close(pidfd)
    for cap in range(64):
        if libc.prctl(ctypes.c_int(_PR_CAPBSET_DROP), ctypes.c_ulong(cap), ctypes.c_ulong(0), 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:  # past the last capability
                break
            raise _StepError(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clear ambient capabilities")
    try:
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as err:
        raise _StepError(f"cannot become uid {uid}/gid {gid}: {err.strerror}") from None


def _confine(config: dict[str, Any], libc: Any) -> None:
    """Step 4: umask, rlimits, no_new_privs and the seccomp filter."""
    os.umask(0o022)
    which = {"nofile": resource.RLIMIT_NOFILE, "core": resource.RLIMIT_CORE, "fsize": resource.RLIMIT_FSIZE}
    for name, value in config["rlimits"].items():
        try:
            if value is not None:  # None (fsize): inherited, as prlimit leaves it for the bot
                resource.setrlimit(which[name], (value, value))
        except (OSError, ValueError) as err:
            raise _StepError(f"cannot set the {name} limit to {value}: {err}") from None
    _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    program = bytes.fromhex(config["bpf"])
    if not program or len(program) % 8:
        raise _StepError(f"seccomp: malformed BPF program ({len(program)} bytes)")

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    _prctl(libc, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, "cannot load the seccomp filter", ctypes.byref(fprog))


def _exec_child(config: dict[str, Any], libc: Any, report_fd: int) -> None:
    """Step 5, in the child: never returns."""
    code = 126
    try:
        _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL, "parent-death signal")
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *_FORWARDED):  # Python ignores SIGPIPE/SIGXFSZ
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.chdir(config["cwd"])
        except OSError as err:
            raise _StepError(f"cannot change to {config['cwd']}: {err.strerror}") from None
        argv, env = config["argv"], dict(config["env"])
        env["PWD"] = config["cwd"]  # as bubblewrap's --chdir sets it for the bot
        try:
            os.execvpe(argv[0], argv, env)  # noqa: S606 - an argv list, searched in the bot's PATH
        except FileNotFoundError:
            code = 127
            raise _StepError(f"command not found: {argv[0]}") from None
        except OSError as err:
            raise _StepError(f"cannot execute {argv[0]}: {err.strerror}") from None
    except BaseException as err:  # report whatever happened, then leave without Python's teardown
        with contextlib.suppress(OSError):
            os.write(report_fd, str(err).encode() or repr(err).encode())
    os._exit(code)


def _wait_child(child: int) -> int:
    """The parent's part of step 5: forward signals, then exit like the child."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP keep their action
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


def _helper_main(argv: list[str]) -> int:
    config_fd, report_fd = int(argv[1]), int(argv[2])
    os.set_inheritable(report_fd, False)  # pass_fds made it inheritable; EOF must mean "exec'd"
    chunks = []
    while chunk := os.read(config_fd, 1 << 16):
        chunks.append(chunk)
    os.close(config_fd)
    if not chunks:  # the caller gave up (it could not join the cgroup)
        return EXIT_SETUP
    config = json.loads(b"".join(chunks))
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        _join(config, libc)
        _confine(config, libc)
        child = os.fork()
    except (_StepError, OSError) as err:
        with contextlib.suppress(OSError):
            os.write(report_fd, str(err).encode())
        return EXIT_SETUP
    if child == 0:
        _exec_child(config, libc, report_fd)
    os.close(report_fd)
    return _wait_child(child)


if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv))
