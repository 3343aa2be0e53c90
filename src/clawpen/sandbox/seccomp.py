"""The seccomp deny list of the bwrap tier: policy, BPF compilation and an on-disk cache.

:func:`default_policy` blocks at least what Docker's default profile blocks for an unprivileged
container (the mount family, namespaces, ptrace, kernel modules, kexec, keyrings, bpf, perf,
io_uring, userfaultfd, clock setting, swap, ...), makes clone3 fail with ENOSYS so libc falls
back to clone(2), whose namespace flags can be checked, and blocks the TIOCSTI / TIOCLINUX
ioctls. ``mknod``/``mknodat`` of a device node (character or block) fail with EPERM in the
filter, before the kernel's own check (no bot needs device nodes); FIFOs, sockets and regular
files made with mknod still work. Everything else is allowed.

:func:`compile_bpf` turns a :class:`SeccompPolicy` into a classic BPF program with libseccomp
(the ``pyseccomp`` binding, imported lazily because the import alone costs tens of ms). Every
rule is applied on every ABI of the policy (x86_64, i386 via ``int $0x80``, x32), so a 32-bit
call cannot slip past a 64-bit rule. The program is handed to bwrap as ``--seccomp FD`` (see
:func:`program_fd`); bwrap sets no_new_privs itself before loading it, so libseccomp's CTL_NNP
attribute (only used by ``seccomp_load``) plays no part here.

:func:`bpf_for` caches compiled programs in a directory, keyed by the policy and the installed
libseccomp; a cache hit needs neither pyseccomp nor hashlib. The cache directory must belong to
the invoking user and be writable by nobody else (sandboxed identities included): a cache entry
that fails this check, or any integrity check, is ignored and recompiled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import zlib
from typing import TYPE_CHECKING, Any

from clawpen.errors import SandboxError
from clawpen.fsutil import write_all
from clawpen.plan.model import SeccompPolicy

if TYPE_CHECKING:  # pathlib costs ~5 ms to import on Python 3.11; the cache only needs os
    from pathlib import Path

CLONE_NEWTIME = 0x00000080  # in clone(2) this bit is part of the exit-signal byte; blocked anyway
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_CLONE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP
) | CLONE_NEWTIME
TIOCSTI = 0x5412  # push a byte into a terminal's input: types commands into the parent's shell
TIOCLINUX = 0x541C  # virtual-console tricks, including selection paste (same attack)
# mknod(path, mode, dev) and mknodat(dirfd, path, mode, dev): which argument is the mode
MKNOD_MODE_ARG = {"mknod": 1, "mknodat": 2}
DEVICE_NODE_TYPES = (stat.S_IFCHR, stat.S_IFBLK)
S_IFMT = 0o170000  # the file type bits of a mode

_EPERM_DEFAULTS: tuple[str, ...] = (
    # mounts and filesystem views
    *("mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick"),
    *("move_mount", "open_tree", "mount_setattr", "open_by_handle_at", "name_to_handle_at"),
    # namespaces (clone(2) is checked by flag, clone3 fails with ENOSYS)
    *("unshare", "setns"),
    # looking into or controlling other processes
    *("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise"),
    # kernel code, kernel state, kernel attack surface
    *("init_module", "finit_module", "delete_module", "create_module", "get_kernel_syms"),
    *("query_module", "kexec_load", "kexec_file_load", "reboot", "bpf", "perf_event_open"),
    *("lookup_dcookie", "fanotify_init", "syslog", "userfaultfd"),
    *("io_uring_setup", "io_uring_enter", "io_uring_register", "add_key", "keyctl", "request_key"),
    # host-wide settings: clocks, swap, accounting, quotas, names, terminals
    *("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64"),
    *("adjtimex", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "sethostname"),
    *("setdomainname", "vhangup"),
    # NUMA placement of memory (Docker: CAP_SYS_NICE only)
    *("mbind", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "move_pages", "migrate_pages"),
    # raw hardware access and obsolete interfaces
    *("iopl", "ioperm", "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl"),
)

_CACHE_MAGIC = b"clawpen-seccomp-bpf v2"  # bump when compile_bpf's output changes for a same policy
_CACHE_MAX = 1 << 20
_MASK32 = 0xFFFFFFFF
_HINT = "this is a bug in the seccomp policy; run `clawpen plan BOT --json` to see it"


AF_VSOCK = 40


def default_policy() -> SeccompPolicy:
    """The deny list every bwrap sandbox gets unless its spec says otherwise."""
    return SeccompPolicy(
        arches=("x86_64", "x86", "x32"),
        errno_syscalls=_EPERM_DEFAULTS,
        enosys_syscalls=("clone3",),
        clone_ns_flags=NAMESPACE_CLONE_FLAGS,
        ioctls=(TIOCSTI, TIOCLINUX),
        socket_families=(AF_VSOCK,),
    )


def compile_bpf(policy: SeccompPolicy) -> bytes:
    """The policy as a classic BPF program (struct sock_filter array), ready for bwrap --seccomp."""
    program = _export(_build_filter(policy), "export_bpf")
    if not program or len(program) % 8:
        raise SandboxError(f"libseccomp produced a malformed program ({len(program)} bytes)", where="seccomp")
    return program


def export_pfc(policy: SeccompPolicy) -> str:
    """libseccomp's human-readable pseudo filter code for the policy (for debugging and tests)."""
    return _export(_build_filter(policy), "export_pfc").decode()


def program_fd(program: bytes) -> int:
    """A sealed, close-on-exec memfd holding ``program`` at offset 0; the caller closes it.

    Pass it to bwrap with ``pass_fds=(fd,)`` and ``--seccomp FD``.
    """
    import fcntl

    fd = os.memfd_create("clawpen-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        write_all(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def cache_key(policy: SeccompPolicy) -> str:
    """Everything the compiled program depends on, as one line of text."""
    fields = (policy.arches, policy.errno_syscalls, policy.enosys_syscalls, policy.clone_ns_flags)
    return repr((*fields, policy.ioctls, policy.socket_families, _libseccomp_id()))


def bpf_for(policy: SeccompPolicy, cache_dir: Path | None) -> bytes:
    """:func:`compile_bpf`, cached in ``cache_dir`` (``None``: no cache); cache trouble never fails."""
    if cache_dir is None or not _trusted_dir(cache_dir):
        return compile_bpf(policy)
    key = cache_key(policy).encode()
    path = os.path.join(cache_dir, f"seccomp-{zlib.crc32(key):08x}{zlib.adler32(key):08x}.bpf")
    program = _read_cache(path, key)
    if program is None:
        program = compile_bpf(policy)
        _write_cache(path, key, program)
    return program


def _pyseccomp() -> Any:
    try:
        import pyseccomp
    except (ImportError, OSError, RuntimeError) as err:
        raise SandboxError(
            f"libseccomp is not available: {err}",
            where="seccomp",
            hint="install libseccomp2 (apt install libseccomp2) and the pyseccomp Python package",
        ) from err
    return pyseccomp


def _build_filter(policy: SeccompPolicy) -> Any:
    sc = _pyseccomp()
    eperm = list(dict.fromkeys(policy.errno_syscalls))
    enosys = list(dict.fromkeys(policy.enosys_syscalls))
    if both := sorted(set(eperm) & set(enosys)):
        raise SandboxError(f"syscalls listed for both EPERM and ENOSYS: {', '.join(both)}", where="seccomp")
    if policy.clone_ns_flags and "clone3" not in (*eperm, *enosys):
        raise SandboxError(
            "clone_ns_flags cannot be enforced while clone3 is allowed (its flags are in memory)",
            where="seccomp",
            hint="add clone3 to enosys_syscalls so libc falls back to clone(2)",
        )
    for value in (policy.clone_ns_flags, *policy.ioctls):
        if not 0 <= value <= _MASK32:
            raise SandboxError(f"clone flag or ioctl request {value:#x} is not 32 bits", where="seccomp")
    arches = []
    for name in policy.arches:
        token = getattr(sc.Arch, name.upper(), None)
        if not isinstance(token, int) or not token:
            raise SandboxError(f"unknown seccomp architecture {name!r}", where="seccomp", hint=_HINT)
        arches.append(token)
    if sc.system_arch() not in arches:
        raise SandboxError(
            f"the policy's ABIs ({', '.join(policy.arches)}) do not include this machine's", where="seccomp"
        )
    try:
        flt = sc.SyscallFilter(sc.ALLOW)
        for token in arches:
            if not flt.exist_arch(token):
                flt.add_arch(token)
        flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary search over syscall numbers, not a linear list
    except OSError as err:
        raise SandboxError(f"libseccomp refused the filter setup: {err.strerror}", where="seccomp") from err

    def add(action: int, name: str, *args: Any) -> None:
        if all(sc.resolve_syscall(token, name) < 0 for token in arches):
            raise SandboxError(
                f"syscall {name!r} exists on none of the ABIs {', '.join(policy.arches)}",
                where="seccomp",
                hint=_HINT,
            )
        try:  # a name missing on some ABIs (vm86 on x86_64) is skipped there by libseccomp
            flt.add_rule(action, name, *args)
        except OSError as err:
            raise SandboxError(
                f"libseccomp rejected the rule for {name}: {err.strerror}", where="seccomp", hint=_HINT
            ) from err

    for name in eperm:
        add(sc.ERRNO(errno.EPERM), name)
    for name in enosys:
        add(sc.ERRNO(errno.ENOSYS), name)
    if "clone" not in eperm:
        for bit in (1 << i for i in range(32) if policy.clone_ns_flags >> i & 1):
            add(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    if "ioctl" not in eperm:  # the kernel reads the request as 32 bits: ignore the upper half
        for request in dict.fromkeys(policy.ioctls):
            add(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, _MASK32, request))
    if policy.socket_families and "socket" not in eperm:
        for family in dict.fromkeys(policy.socket_families):
            add(sc.ERRNO(errno.EPERM), "socket", sc.Arg(0, sc.MASKED_EQ, _MASK32, family))
        if "socketcall" not in eperm and sc.Arch.X86 in arches:  # its arguments sit in memory
            add(sc.ERRNO(errno.EPERM), "socketcall")
    for name, index in MKNOD_MODE_ARG.items():  # device nodes: the file type bits of the mode
        if name not in eperm:
            for kind in DEVICE_NODE_TYPES:
                add(sc.ERRNO(errno.EPERM), name, sc.Arg(index, sc.MASKED_EQ, S_IFMT, kind))
    return flt


def _export(flt: Any, method: str) -> bytes:
    try:
        with open(os.memfd_create("clawpen-seccomp"), "w+b", buffering=0) as out:
            getattr(flt, method)(out)
            out.seek(0)
            return out.read()
    except OSError as err:
        raise SandboxError(f"libseccomp could not export the filter: {err}", where="seccomp") from err


def _libseccomp_id() -> str:
    """The installed libseccomp's file, size and mtime, found without loading it."""
    multiarch = getattr(sys.implementation, "_multiarch", "")
    for folder in (f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/usr/local/lib", "/usr/lib"):
        path = os.path.join(folder, "libseccomp.so.2")
        with contextlib.suppress(OSError):
            info = os.stat(path)
            return f"{os.path.realpath(path)}:{info.st_size}:{info.st_mtime_ns}"
    return "libseccomp: not found"


def _owned_and_private(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trusted_dir(cache_dir: Path) -> bool:
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        info = os.stat(cache_dir)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and _owned_and_private(info)


def _read_cache(path: str, key: bytes) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as file:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) and _owned_and_private(info)) or info.st_size > _CACHE_MAX:
            return None
        data = file.read(_CACHE_MAX)
    parts = data.split(b"\n", 3)
    if len(parts) != 4 or parts[:2] != [_CACHE_MAGIC, key]:
        return None
    program = parts[3]
    if not program or len(program) % 8 or parts[2] != b"%08x" % zlib.crc32(program):
        return None
    return program


def _write_cache(path: str, key: bytes, program: bytes) -> None:
    """Write atomically (temp file, fsync, rename); failing to cache is not an error."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    data = b"\n".join((_CACHE_MAGIC, key, b"%08x" % zlib.crc32(program), program))
    try:
        with open(tmp, "xb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW, 0o644)) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
