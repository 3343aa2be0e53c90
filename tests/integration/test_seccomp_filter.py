"""The compiled default filter, loaded for real by bwrap, blocks what it claims on every x86 ABI.

A probe script (Debian's /usr/bin/python3 + ctypes) makes each call in a forked child and reports
0 or the errno. It runs three times in the same kind of sandbox (``bwrap --ro-bind / / --dev
/dev --proc /proc --unshare-pid``, started as root, so the probe keeps root's capabilities
unless told otherwise):

* control: no filter. This is the positive control: every call reaches the kernel, which answers
  with something other than the filter's errno. The arguments are chosen to be rejected by the
  kernel (bad pointer, bad flags, bad magic), so the control is harmless even with root's
  capabilities, and it runs in fresh mount and pid namespaces.
* filtered (``--seccomp FD``): the same calls now fail with the filter's errno. Since the probe
  has every capability, that errno cannot come from a permission check in the kernel.
* filtered with ``--cap-drop ALL``, closer to how a bot runs: same result.

i386 calls go through ``int $0x80`` and x32 calls through ``syscall`` with bit 30 set, from
hand-written machine code in an executable mmap. This kernel is built without
CONFIG_X86_X32_ABI: without the filter the x32 call gets ENOSYS from the syscall dispatcher, but
seccomp runs before dispatch, so with the filter it gets EPERM.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyseccomp
import pytest

from clawpen.sandbox.seccomp import (
    CLONE_NEWNS,
    CLONE_NEWUSER,
    TIOCLINUX,
    TIOCSTI,
    bpf_for,
    compile_bpf,
    default_policy,
    program_fd,
)

pytestmark = pytest.mark.bwrap

CLONE_FS = 0x200  # CLONE_NEWNS|CLONE_FS and CLONE_NEWUSER|CLONE_FS are EINVAL: no child is made
TIOCGWINSZ = 0x5413
X32_BIT = 0x40000000

PROBE = r"""
import ctypes, json, mmap, os, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
MASK = (1 << 64) - 1

# (nr, arg0) -> eax: push rbx; mov eax, edi; mov ebx, esi; int $0x80; pop rbx; ret
I386 = bytes.fromhex("53 89f8 89f3 cd80 5b c3")
# (nr, arg0) -> rax: mov eax, edi; mov rdi, rsi; syscall; ret  (nr already has bit 30 set)
X32 = bytes.fromhex("89f8 4889f7 0f05 c3")
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(I386.ljust(64, b"\xcc") + X32)
base = ctypes.addressof(ctypes.c_char.from_buffer(page))
int80 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int)(base)
x32 = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long)(base + 64)


def native(nr, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & MASK) for a in args))
    if ret == 0 and nr in (56, 435):  # a clone that made a child: never run on in it
        os._exit(0)
    return 0 if ret >= 0 else ctypes.get_errno()


def raw(ret):
    return -ret if -4096 < ret < 0 else 0


def run(kind, nr, args):
    if kind == "syscall":
        return native(nr, *args)
    if kind == "pty-ioctl":
        _master, slave = os.openpty()
        byte = ctypes.create_string_buffer(b"x", 64)
        return native(nr, slave, args[0], ctypes.addressof(byte))
    if kind == "i386":
        return raw(int80(nr, args[0]))
    if kind == "x32":
        return raw(x32(nr, args[0]))
    raise ValueError(kind)


results = {}
for name, kind, nr, args in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        try:
            code = run(kind, nr, args)
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results[name] = os.waitstatus_to_exitcode(status)
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Case:
    """One probe call; ``blocked`` is the filter's answer (None: the filter allows it)."""

    kind: str  # "syscall" (x86_64), "pty-ioctl" (x86_64 ioctl on a fresh pty), "i386", "x32"
    syscall: str
    nr: int
    args: tuple[int, ...]
    blocked: int | None = errno.EPERM
    control: int | None = None  # the kernel's exact answer without the filter, where it is stable


CASES: dict[str, Case] = {
    "unshare(CLONE_NEWUSER)": Case("syscall", "unshare", 272, (CLONE_NEWUSER,), control=0),
    "mount(type=bad pointer)": Case("syscall", "mount", 165, (0, 0, 1, 0, 0), control=errno.EFAULT),
    "umount2(bad flags)": Case("syscall", "umount2", 166, (0, 0xFFFF0000), control=errno.EINVAL),
    "pivot_root(NULL, NULL)": Case("syscall", "pivot_root", 155, (0, 0)),
    "fsopen(NULL, bad flags)": Case("syscall", "fsopen", 430, (0, 0xFF)),
    "open_tree(-1, NULL, bad flags)": Case("syscall", "open_tree", 428, (-1, 0, 0xFFFFFFFF)),
    "setns(-1, 0)": Case("syscall", "setns", 308, (-1, 0), control=errno.EBADF),
    "ptrace(PTRACE_TRACEME)": Case("syscall", "ptrace", 101, (0, 0, 0, 0), control=0),
    "process_vm_readv(flags=1)": Case("syscall", "process_vm_readv", 310, (0, 0, 0, 0, 0, 1)),
    "kcmp(bad type)": Case("syscall", "kcmp", 312, (0, 0, 99, 0, 0)),
    "keyctl(bad op)": Case("syscall", "keyctl", 250, (0xFFFF, 0, 0, 0, 0)),
    "add_key(NULL)": Case("syscall", "add_key", 248, (0, 0, 0, 0, 0)),
    "bpf(bad cmd)": Case("syscall", "bpf", 321, (0xFFFF, 0, 0)),
    "perf_event_open(NULL)": Case("syscall", "perf_event_open", 298, (0, 0, -1, -1, 0)),
    "io_uring_setup(0, NULL)": Case("syscall", "io_uring_setup", 425, (0, 0)),
    "userfaultfd(bad flags)": Case("syscall", "userfaultfd", 323, (2,), control=errno.EINVAL),
    "clock_settime(bad clock)": Case("syscall", "clock_settime", 227, (100, 0), control=errno.EINVAL),
    "init_module(NULL, 0)": Case("syscall", "init_module", 175, (0, 0, 0)),
    "finit_module(-1)": Case("syscall", "finit_module", 313, (-1, 0, 0)),
    "kexec_load(bad flags)": Case("syscall", "kexec_load", 246, (0, 0, 0, 0xFFFFFFFF)),
    "reboot(bad magic)": Case("syscall", "reboot", 169, (0, 0, 0, 0), control=errno.EINVAL),
    "swapon(NULL, bad flags)": Case("syscall", "swapon", 167, (0, 0xFFFFFFFF), control=errno.EINVAL),
    "open_by_handle_at(-1, NULL)": Case("syscall", "open_by_handle_at", 304, (-1, 0, 0)),
    "clone(CLONE_NEWNS|CLONE_FS)": Case(
        "syscall", "clone", 56, (CLONE_NEWNS | CLONE_FS, 0, 0, 0, 0), control=errno.EINVAL
    ),
    "clone(CLONE_NEWUSER|CLONE_FS)": Case(
        "syscall", "clone", 56, (CLONE_NEWUSER | CLONE_FS, 0, 0, 0, 0), control=errno.EINVAL
    ),
    "clone3(NULL, 0)": Case("syscall", "clone3", 435, (0, 0), blocked=errno.ENOSYS, control=errno.EINVAL),
    "ioctl(pty, TIOCSTI)": Case("pty-ioctl", "ioctl", 16, (TIOCSTI,), control=0),
    "ioctl(pty, TIOCSTI | 1 << 32)": Case("pty-ioctl", "ioctl", 16, (TIOCSTI | 1 << 32,), control=0),
    "ioctl(pty, TIOCLINUX)": Case("pty-ioctl", "ioctl", 16, (TIOCLINUX,)),
    "i386 unshare(CLONE_NEWUSER)": Case("i386", "unshare", 310, (CLONE_NEWUSER,), control=0),
    "i386 clone(CLONE_NEWNS|CLONE_FS)": Case(
        "i386", "clone", 120, (CLONE_NEWNS | CLONE_FS,), control=errno.EINVAL
    ),
    "x32 unshare(CLONE_NEWUSER)": Case("x32", "unshare", 272 | X32_BIT, (CLONE_NEWUSER,)),
    # allowed: the filter must not get in the way of ordinary calls, on any ABI
    "personality(query)": Case("syscall", "personality", 135, (0xFFFFFFFF,), blocked=None, control=0),
    "ioctl(pty, TIOCGWINSZ)": Case("pty-ioctl", "ioctl", 16, (TIOCGWINSZ,), blocked=None, control=0),
    "i386 getpid()": Case("i386", "getpid", 20, (0,), blocked=None, control=0),
}

ARCH = {"syscall": pyseccomp.Arch.X86_64, "pty-ioctl": pyseccomp.Arch.X86_64}
ARCH |= {"i386": pyseccomp.Arch.X86, "x32": pyseccomp.Arch.X32}


def _name(code: int) -> str:
    return "success" if code == 0 else errno.errorcode.get(code, f"exit {code}")


def _probe(probe: Path, program: bytes | None, *, drop_caps: bool = False) -> dict[str, int]:
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid"]
    argv += ["--cap-drop", "ALL"] if drop_caps else []
    fds: tuple[int, ...] = ()
    if program is not None:
        fds = (program_fd(program),)
        argv += ["--seccomp", str(fds[0])]
    cases = [(name, c.kind, c.nr, c.args) for name, c in CASES.items()]
    argv += ["--", "/usr/bin/python3", str(probe), json.dumps(cases)]
    try:
        proc = subprocess.run(argv, pass_fds=fds, capture_output=True, text=True, timeout=120, check=False)
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.returncode == 0, proc.stderr
    results: dict[str, int] = json.loads(proc.stdout)
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    folder = tmp_path_factory.mktemp("seccomp-probe")
    probe = folder / "probe.py"
    probe.write_text(PROBE)
    program = bpf_for(default_policy(), folder / "cache")
    return {
        "control": _probe(probe, None),
        "filtered": _probe(probe, program),
        "filtered, --cap-drop ALL": _probe(probe, program, drop_caps=True),
    }


@pytest.mark.parametrize("name", list(CASES))
def test_probe_numbers_match_libseccomp(name: str) -> None:
    case = CASES[name]
    assert pyseccomp.resolve_syscall(ARCH[case.kind], case.syscall) == case.nr


@pytest.mark.parametrize("name", list(CASES))
def test_filter_decides_and_control_reaches_the_kernel(name: str, runs: dict[str, dict[str, int]]) -> None:
    case = CASES[name]
    seen = {run: _name(results[name]) for run, results in runs.items()}
    control = runs["control"][name]
    if case.blocked is None:
        assert set(seen.values()) == {"success"}, seen
        return
    assert control >= 0, f"the control was killed: {seen}"
    assert control != case.blocked, f"without the filter the kernel already says so: {seen}"
    if case.control is not None:
        assert control == case.control, seen
    assert runs["filtered"][name] == case.blocked, seen
    assert runs["filtered, --cap-drop ALL"][name] == case.blocked, seen


VSOCK_PROBE = """
import ctypes, errno, os, socket
try:
    s = socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK
    print("vsock-ok")
except OSError as err:
    print("vsock-" + errno.errorcode[err.errno])
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    print("inet-ok")
except OSError as err:
    print("inet-" + errno.errorcode[err.errno])
"""


@pytest.mark.bwrap
def test_vsock_sockets_are_refused_but_inet_works():
    """A VM's host services listen on vsock, which network namespaces do not cover."""
    program = compile_bpf(default_policy())
    fd = program_fd(program)
    try:
        base = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid"]
        control = subprocess.run(
            [*base, "--", "/usr/bin/python3", "-c", VSOCK_PROBE], capture_output=True, text=True, check=True
        )
        filtered = subprocess.run(
            [*base, "--seccomp", str(fd), "--", "/usr/bin/python3", "-c", VSOCK_PROBE],
            capture_output=True,
            text=True,
            pass_fds=(fd,),
            check=True,
        )
    finally:
        os.close(fd)
    assert "vsock-EPERM" not in control.stdout  # the family reaches the kernel outside
    assert "vsock-EPERM" in filtered.stdout
    assert "inet-ok" in filtered.stdout
