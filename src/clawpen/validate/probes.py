"""The probe programs of ``clawpen validate --hostile``: small Python scripts (stdlib + ctypes only).

Each script runs with Debian's ``/usr/bin/python3`` (the host's ``/usr``, which every sandbox
sees read-only; in the container tier the image's ``python3``), once inside a throwaway sandbox
and once on the host as the positive control. Where python3 has no ctypes (``python3-minimal``)
the actions that need a raw system call exec ``clawpen-sysprobe`` instead
(:mod:`clawpen.validate.sysprobe`, its JSON line says ``"via"``); a probe that cannot attempt
its action at all says ``"judged": false``. The output is written without the json module.
It attempts one hostile action and prints one JSON line: ``{"did": true|false, "detail": ...}``
where ``did`` means "the action worked". Arguments come from the runner (paths, pids, ports);
``A[0]`` is always the probe's scratch folder (``/workspace`` inside, a host folder outside).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any


def last_json(text: str) -> dict[str, Any] | None:
    """A probe's answer: the last JSON line of its output with a ``did`` key, or None."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict) and "did" in data:
                    return data
    return None


PRELUDE = r"""
import errno, os, socket, sys, time
A = sys.argv[1:]
try:
    import ctypes
except ImportError:  # python3-minimal (a slim container image): see SYSPROBE
    ctypes = None
SYSPROBE = ctypes is None or os.environ.get("CLAWPEN_HOSTILE_SYSPROBE") == "1"
if ctypes is not None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
def en(e):
    return errno.errorcode.get(e, str(e))
def sc(*a):
    ctypes.set_errno(0)
    r = libc.syscall(*[ctypes.c_long(x) if isinstance(x, int) else x for x in a])
    return r, ctypes.get_errno()
BOOT = ""  # set by KERNEL_ID: the boot id of the kernel the probe ran on, in its answer
def js(s):
    return '"' + "".join(c if c >= " " and c not in '"\\' else "\\u%04x" % ord(c) for c in s) + '"'
def out(did, detail="", judged=True):
    tail = ("" if judged else ', "judged": false') + (', "boot": ' + js(BOOT) if BOOT else "")
    did = "true" if did else "false"
    sys.stdout.write('{"did": %s, "detail": %s%s}\n' % (did, js(str(detail)[:300]), tail))
    sys.stdout.flush()
    os._exit(0)
def sysprobe(*args):
    path = os.path.join(A[0], "clawpen-sysprobe")
    try:
        os.execv(path, [path, *args])
    except OSError as e:
        out(False, "no ctypes here, and clawpen-sysprobe cannot run: " + en(e.errno), judged=False)
def attempt(fn):
    try:
        r = fn()
    except OSError as e:
        out(False, en(e.errno or 0) + " " + str(e.strerror or e))
    out(True, "ok" if r is None else r)
def call(r_e, what):
    r, e = r_e
    out(r >= 0, what + (" ok" if r >= 0 else " " + en(e)))
"""

# After PRELUDE in the vm tier: each answer names the kernel it ran on (its boot id), so the
# runner can tell the guest's kernel from the host's.
KERNEL_ID = r"""
try:
    BOOT = open("/proc/sys/kernel/random/boot_id").read().strip()
except OSError:
    BOOT = "unknown"
"""

# --- filesystem ------------------------------------------------------------------------------

READ_FILE = r"""
def f():
    with open(A[1], "rb") as fh:
        return f"read {len(fh.read())} bytes of {A[1]}"
attempt(f)
"""

CREATE_FILE = r"""
def f():
    fd = os.open(A[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"clawpen hostile probe\n")
    os.close(fd)
    os.unlink(A[1])
    return "created " + A[1]
attempt(f)
"""

LIST_DIR = 'attempt(lambda: f"listed {len(os.listdir(A[1]))} entries of {A[1]}")'

HOST_PID1 = r"""
import hashlib
def f():
    data = open("/proc/1/cmdline", "rb").read()
    if hashlib.sha256(data).hexdigest() != A[1]:
        raise OSError(errno.ESRCH, "/proc/1 is not the host's pid 1")
    try:
        env = f"and {len(open('/proc/1/environ', 'rb').read())} bytes of its environ"
    except OSError as e:
        env = "(its environ: " + en(e.errno) + ")"
    return "read the host pid 1's cmdline " + env
attempt(f)
"""

SYMLINK_ESCAPE = r"""
link = os.path.join(A[0], "escape-link")
try:
    os.unlink(link)
except OSError:
    pass
os.symlink(A[1], link)
attempt(lambda: "read through the link: " + open(link).read().strip()[:40])
"""

MOUNT = r"""
if SYSPROBE:
    sysprobe("mount", A[1], os.path.join(A[0], "mnt"))
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
os.makedirs(os.path.join(A[0], "mnt"), exist_ok=True)
ctypes.set_errno(0)
r = libc.mount(A[1].encode(), os.path.join(A[0], "mnt").encode(), b"tmpfs", 0, None)
out(r == 0, "mount tmpfs " + ("ok" if r == 0 else en(ctypes.get_errno())))
"""

OPEN_WRITE = r"""
def f():
    os.close(os.open(A[1], os.O_WRONLY))
    return "opened " + A[1] + " for writing"
attempt(f)
"""

MKNOD = r"""
import stat
def f():
    p = os.path.join(A[0], "disk-node")
    os.mknod(p, stat.S_IFBLK | 0o600, os.makedev(8, 0))
    os.unlink(p)
    return "created a block device node"
attempt(f)
"""

# --- processes --------------------------------------------------------------------------------

SEE_PROCESS = r"""
found, mark = [], A[1][::-1].encode()  # given reversed: this probe's own argv must not match
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            if mark in open(f"/proc/{p}/cmdline", "rb").read():
                found.append(int(p))
        except OSError:
            pass
n = len(os.listdir("/proc"))
out(bool(found), f"found pids {found}" if found else f"marker not among {n} /proc entries")
"""

SIGNAL = r"""
attempt(lambda: os.kill(int(A[1]), 0) or f"signal 0 to pid {A[1]} delivered")
"""

PIDFD = r"""
if SYSPROBE:
    sysprobe("pidfd", A[1])
r = sc(434, int(A[1]), 0)
call(r, f"pidfd_open({A[1]})")
"""

PTRACE = r"""
if SYSPROBE:
    sysprobe("ptrace")
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
sleeper = os.fork()
if sleeper == 0:
    time.sleep(30)
    os._exit(0)
child = os.fork()
if child == 0:
    if libc.ptrace(16, sleeper, None, None) != 0:
        os._exit(min(ctypes.get_errno(), 255))
    os.waitpid(sleeper, 0)
    libc.ptrace(17, sleeper, None, None)
    os._exit(0)
code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
os.kill(sleeper, 9)
os.waitpid(sleeper, 0)
out(code == 0, "PTRACE_ATTACH " + ("ok" if code == 0 else en(code)))
"""

FORK_BOMB = r"""
bound = int(A[1])
r, w = os.pipe()
kids, err = 0, ""
for _ in range(bound):
    try:
        pid = os.fork()
    except OSError as e:
        err = en(e.errno)
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    kids += 1
os.close(w)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
out(kids >= bound, f"forked {kids} of {bound}" + (f", then {err}" if err else ""))
"""

CGROUP_ESCAPE = r"""
cands = [f"/sys/fs/cgroup/{c}cgroup.procs" for c in ("", "pids/", "memory/")]
errs = []
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
for c in cands:
    try:
        with open(c, "w") as f:
            f.write(str(child))
        os.kill(child, 9)
        out(True, "moved a process into " + c)
    except OSError as e:
        errs.append(f"{c}: {en(e.errno)}")
os.kill(child, 9)
out(False, "; ".join(errs))
"""

PRIORITY = "attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, -10) or 'nice -10')"

# --- privilege --------------------------------------------------------------------------------

SETUID = r"""
import subprocess
p = subprocess.run([A[1]], capture_output=True, text=True)
out("euid=0(" in p.stdout, (p.stdout or p.stderr).strip())
"""

UNSHARE = r"""
if SYSPROBE:
    sysprobe("unshare", A[1])
flags = {"user": 0x10000000, "net": 0x40000000, "mount": 0x00020000}[A[1]]
pid = os.fork()
if pid == 0:
    ctypes.set_errno(0)
    os._exit(0 if libc.unshare(flags) == 0 else min(ctypes.get_errno(), 255))
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out(code == 0, f"unshare({A[1]}) " + ("ok" if code == 0 else en(code)))
"""

CHROOT = r"""
pid = os.fork()
if pid == 0:
    try:
        os.chroot(A[0])
        os._exit(0)
    except OSError as e:
        os._exit(e.errno)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out(code == 0, "chroot " + ("ok" if code == 0 else en(code)))
"""

KEYCTL = r"""
if SYSPROBE:
    sysprobe("keyctl")
pid = os.fork()
if pid == 0:
    r, e = sc(250, 1, 0)  # KEYCTL_JOIN_SESSION_KEYRING, anonymous
    os._exit(0 if r >= 0 else min(e, 255))
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out(code == 0, "keyctl(JOIN_SESSION_KEYRING) " + ("ok" if code == 0 else en(code)))
"""

BPF = r"""
if SYSPROBE:
    sysprobe("bpf")
attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
r, e = sc(321, 0, ctypes.addressof(attr), ctypes.sizeof(attr))
if r >= 0:
    os.close(r)
out(r >= 0, "bpf(BPF_MAP_CREATE) " + ("ok" if r >= 0 else en(e)))
"""

PERF = r"""
if SYSPROBE:
    sysprobe("perf")
attr = (ctypes.c_uint32 * 32)()
attr[0], attr[1] = 1, 128  # PERF_TYPE_SOFTWARE, size
attr[2] = 0  # PERF_COUNT_SW_CPU_CLOCK
attr[10] = 1 << 5 | 1 << 6  # exclude_kernel, exclude_hv (first flags word, byte offset 40)
r, e = sc(298, ctypes.addressof(attr), 0, -1, -1, 0)
if r >= 0:
    os.close(r)
out(r >= 0, "perf_event_open " + ("ok" if r >= 0 else en(e)))
"""

MODULE = r"""
if SYSPROBE:
    sysprobe("module")
fd = os.open("/dev/null", os.O_RDONLY)
empty = ctypes.create_string_buffer(b"")
r, e = sc(313, fd, ctypes.addressof(empty), 0)
# "did": the call reached the module loader (which rejects /dev/null), i.e. it was not refused
out(e != errno.EPERM, "finit_module(/dev/null) " + en(e))
"""

IO_URING = r"""
if SYSPROBE:
    sysprobe("io_uring")
params = (ctypes.c_uint32 * 30)()  # struct io_uring_params (120 bytes), zeroed
r, e = sc(425, 1, ctypes.addressof(params))
if r >= 0:
    os.close(r)
out(r >= 0, "io_uring_setup " + ("ok" if r >= 0 else en(e)))
"""

USERFAULTFD = r"""
if SYSPROBE:
    sysprobe("userfaultfd")
r, e = sc(323, os.O_CLOEXEC | 1)  # UFFD_USER_MODE_ONLY: allowed to any uid unless refused
if r >= 0:
    os.close(r)
out(r >= 0, "userfaultfd " + ("ok" if r >= 0 else en(e)))
"""

RAW_SOCKET = r"""
def f():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    return "opened a raw ICMP socket"
attempt(f)
"""

SET_CLOCK = r"""
if SYSPROBE:
    sysprobe("clock")
class Ts(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
ts = Ts()
libc.clock_gettime(0, ctypes.byref(ts))
r = sc(227, 0, ctypes.addressof(ts))
call(r, "clock_settime(to the current time)")
"""

CAPABILITIES = r"""
eff = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")][0]
out(int(eff, 16) != 0, "CapEff " + eff)
"""

# --- resources --------------------------------------------------------------------------------

MEMORY = r"""
target, chunk, blocks = int(A[1]), 16 << 20, []
try:
    while len(blocks) * chunk < target:
        b = bytearray(chunk)
        for i in range(0, chunk, 4096):
            b[i] = 1
        blocks.append(b)
except MemoryError:
    out(False, f"MemoryError after {len(blocks) * 16} MiB")
out(True, f"allocated {len(blocks) * 16} MiB")
"""

FILE_SIZE = r"""
def f():
    p = os.path.join(A[0], "big-file")
    with open(p, "wb") as fh:
        fh.seek(int(A[1]))
        fh.write(b"x")
    os.unlink(p)
    return f"a file reached {int(A[1]) >> 20} MiB"
attempt(f)
"""

FILL_TMP = r"""
bound, n = int(A[2]), 0
p = os.path.join(A[1], "clawpen-hostile-fill")
blk = b"\0" * (1 << 20)
try:
    with open(p, "wb") as fh:
        while n < bound:
            fh.write(blk)
            n += len(blk)
            fh.flush()
except OSError as e:
    os.unlink(p)
    out(False, f"wrote {n >> 20} MiB, then {en(e.errno)}")
os.unlink(p)
out(True, f"wrote {n >> 20} MiB")
"""

FDS = r"""
bound = int(A[1])
if A[2:] == ["raise"]:
    import resource  # not in python3-minimal: only the control raises its limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (bound + 64, bound + 64))
fds = []
try:
    while len(fds) < bound:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    out(False, f"opened {len(fds)}, then {en(e.errno)}")
out(True, f"opened {len(fds)} files")
"""

# --- network ---------------------------------------------------------------------------------

CONNECT = r"""
host, port, token = A[1], int(A[2]), A[3] if len(A) > 3 else ""
def f():
    s = socket.create_connection((host, port), timeout=float(A[4]) if len(A) > 4 else 3)
    data = s.recv(64).decode(errors="replace") if token else ""
    s.close()
    if token and token not in data:
        raise OSError(errno.EPROTO, "connected, but not to the host's service")
    return f"connected to {host}:{port}"
attempt(f)
"""

ABSTRACT = r"""
def f():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect("\0" + A[1])
    data = s.recv(64).decode(errors="replace")
    s.close()
    if A[2] not in data:
        raise OSError(errno.EPROTO, "connected, but not to the host's socket")
    return "connected to @" + A[1]
attempt(f)
"""

DNS_EXFIL = r"""
import random, struct
name = A[2]
q = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
def f():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (A[1], 53))
    data, src = s.recvfrom(512)
    if src[0] != A[1]:
        raise OSError(errno.EPROTO, "a reply, but not from the resolver")
    return f"the resolver {A[1]} answered a query for {name}"
attempt(f)
"""

# --- secrets ---------------------------------------------------------------------------------

SCAN_RUN_FILES = r"""
value, name, hits, seen = A[1].encode(), A[2], [], 0
pids = [p for p in os.listdir("/proc") if p.isdigit()]
paths = ["/run/secrets/" + name] + [f"/proc/{p}/root/run/secrets/{name}" for p in pids]
for path in paths:
    try:
        seen += 1
        if value in open(path, "rb").read():
            hits.append(path)
    except OSError:
        pass
out(bool(hits), f"read the secret at {hits[0]}" if hits else f"not readable in {seen} places")
"""

SCAN_ENVIRON = r"""
value, hits, n = A[1].encode(), [], 0
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            n += 1
            if value in open(f"/proc/{p}/environ", "rb").read():
                hits.append(int(p))
        except OSError:
            pass
out(bool(hits), f"found the secret in the environment of pids {hits}" if hits else f"not in {n} environments")
"""

PEER_SERVER = r"""
import os, socket, sys, time
banner = sys.argv[1].encode()
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", int(sys.argv[2])))
tcp.listen(8)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind("\0" + sys.argv[3])
unix.listen(8)
print("ready", flush=True)
import select
poller = select.poll()
socks = {tcp.fileno(): tcp, unix.fileno(): unix}
for fd in socks:
    poller.register(fd, select.POLLIN)
while True:
    for fd, _ in poller.poll():
        c, _ = socks[fd].accept()
        c.sendall(banner)
        c.close()
"""
