"""The seccomp policy, its compilation with libseccomp, and the on-disk cache of compiled programs."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyseccomp
import pytest

from clawpen.errors import SandboxError
from clawpen.plan.model import SeccompPolicy
from clawpen.sandbox import seccomp
from clawpen.sandbox.seccomp import bpf_for, cache_key, compile_bpf, default_policy, export_pfc, program_fd

# What Docker's default profile denies an unprivileged container (its allow list minus the
# CAP_SYS_ADMIN / CAP_SYS_PTRACE / CAP_SYS_MODULE / ... sections), plus what the brief adds.
REQUIRED = {
    *("mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick"),
    *("move_mount", "open_tree", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev"),
    *("kcmp", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module"),
    *("create_module", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "unshare"),
    *("setns", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "io_uring_setup"),
    *("io_uring_enter", "io_uring_register", "reboot", "settimeofday", "clock_settime"),
    *("clock_adjtime", "adjtimex", "stime", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd"),
    *("lookup_dcookie", "nfsservctl", "vm86", "vm86old", "iopl", "ioperm", "syslog", "uselib"),
    *("ustat", "sysfs", "_sysctl", "get_kernel_syms", "query_module", "fanotify_init"),
    *("pidfd_getfd", "process_madvise", "vhangup", "sethostname", "setdomainname", "move_pages"),
    *("mbind", "get_mempolicy", "set_mempolicy", "clock_settime64", "clock_adjtime64"),
}
NAMESPACE_FLAGS = 0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
NAMESPACE_FLAGS |= 0x02000000 | 0x00000080  # CLONE_NEWCGROUP, CLONE_NEWTIME
ABIS = ("x86_64", "x86", "x32")


def _sections(pfc: str) -> dict[str, str]:
    """The PFC text per ABI: '# filter for arch NAME (token)' up to the next one."""
    parts = re.split(r"^# filter for arch (\S+) \(\d+\)$", pfc, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def pfc() -> str:
    return export_pfc(default_policy())


# --- the default policy -------------------------------------------------------------------------


def test_default_policy_denies_at_least_what_docker_denies() -> None:
    policy = default_policy()
    assert set(policy.errno_syscalls) >= REQUIRED, REQUIRED - set(policy.errno_syscalls)
    assert "personality" not in policy.errno_syscalls
    assert policy.enosys_syscalls == ("clone3",)
    assert policy.clone_ns_flags == NAMESPACE_FLAGS
    assert policy.ioctls == (0x5412, 0x541C)
    assert policy.arches == ABIS


def test_default_policy_lists_are_clean_and_known_to_libseccomp() -> None:
    policy = default_policy()
    names = policy.errno_syscalls + policy.enosys_syscalls
    assert len(names) == len(set(names))
    tokens = [getattr(pyseccomp.Arch, abi.upper()) for abi in ABIS]
    unknown = [n for n in names if all(pyseccomp.resolve_syscall(t, n) < 0 for t in tokens)]
    assert unknown == []


# --- compilation --------------------------------------------------------------------------------


def test_compile_bpf_returns_a_deterministic_program() -> None:
    program = compile_bpf(default_policy())
    assert isinstance(program, bytes)
    assert program
    assert len(program) % 8 == 0  # struct sock_filter is 8 bytes
    assert len(program) // 8 <= 4096  # BPF_MAXINSNS
    assert compile_bpf(default_policy()) == program
    code = "from clawpen.sandbox.seccomp import *; print(compile_bpf(default_policy()).hex())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert bytes.fromhex(other.stdout) == program


def test_pfc_has_every_rule_on_every_abi(pfc: str) -> None:
    sections = _sections(pfc)
    assert sorted(sections) == sorted(ABIS)
    for abi, text in sections.items():
        for name in ("mount", "ptrace", "unshare", "bpf", "keyctl", "io_uring_setup", "clone", "ioctl"):
            assert f'syscall "{name}"' in text, (abi, name)
        # clone3 -> ENOSYS; clone with a namespace flag -> EPERM
        assert re.search(r'syscall "clone3".*\n\s+if .*\n\s+action ERRNO\(38\);', text), abi
        assert re.search(r"\$a0(\.lo32)? & 0x10000000 == 268435456\)\n\s+action ERRNO\(1\);", text), abi
        # TIOCSTI (21522) and TIOCLINUX (21532), compared on the low 32 bits only
        for request in (0x5412, 0x541C):
            assert re.search(rf"\$a1(\.lo32)? & 0xffffffff == {request}\)\n\s+action ERRNO\(1\);", text), abi
    assert "$a1.hi32 & 0x00000000 == 0" in sections["x86_64"]  # the upper half is ignored
    assert "# invalid architecture action\naction KILL;" in pfc


def test_pfc_uses_each_abis_own_numbers(pfc: str) -> None:
    sections = _sections(pfc)
    assert 'syscall "unshare" (272)' in sections["x86_64"]
    assert 'syscall "unshare" (310)' in sections["x86"]
    assert f'syscall "unshare" ({272 | 0x40000000})' in sections["x32"]
    # i386-only calls: a 32-bit process could otherwise set the clock or enter vm86 mode
    assert 'syscall "clock_settime64" (404)' in sections["x86"]
    assert 'syscall "vm86" (166)' in sections["x86"]


def test_a_syscall_missing_on_some_abis_compiles() -> None:
    policy = SeccompPolicy(errno_syscalls=("vm86", "uselib"))  # vm86: i386 only; uselib: not x32
    assert compile_bpf(policy)
    assert 'syscall "vm86" (166)' in _sections(export_pfc(policy))["x86"]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (SeccompPolicy(errno_syscalls=("mount", "no_such_call")), "no_such_call"),
        (SeccompPolicy(arches=("x86_64", "x32"), errno_syscalls=("vm86",)), "vm86"),
        (SeccompPolicy(arches=("x86_64", "sparc")), "sparc"),
        (SeccompPolicy(arches=("x86",)), "do not include this machine's"),
        (SeccompPolicy(errno_syscalls=("clone3",), enosys_syscalls=("clone3",)), "clone3"),
        (SeccompPolicy(clone_ns_flags=0x10000000), "clone3 is allowed"),
        (SeccompPolicy(ioctls=(1 << 32,)), "not 32 bits"),
    ],
    ids=[
        "unknown name",
        "name on no policy ABI",
        "unknown ABI",
        "native ABI missing",
        "EPERM and ENOSYS",
        "clone flags without clone3",
        "ioctl over 32 bits",
    ],
)
def test_a_broken_policy_is_a_sandbox_error(policy: SeccompPolicy, message: str) -> None:
    with pytest.raises(SandboxError) as caught:
        compile_bpf(policy)
    assert caught.value.where == "seccomp"
    assert message in caught.value.what


def test_missing_libseccomp_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # makes `import pyseccomp` fail
    with pytest.raises(SandboxError) as caught:
        compile_bpf(default_policy())
    assert caught.value.where == "seccomp"
    assert "libseccomp is not available" in caught.value.what
    assert caught.value.hint is not None
    assert "libseccomp2" in caught.value.hint


def test_a_rejected_rule_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(pyseccomp.SyscallFilter, "add_rule", refuse)
    with pytest.raises(SandboxError, match="rejected the rule for mount: Invalid argument") as caught:
        compile_bpf(SeccompPolicy(errno_syscalls=("mount",)))
    assert caught.value.where == "seccomp"


def test_program_fd_is_a_sealed_copy_at_offset_zero() -> None:
    program = compile_bpf(default_policy())
    fd = program_fd(program)
    try:
        assert not os.get_inheritable(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert os.read(fd, len(program) + 1) == program
        with pytest.raises(PermissionError):
            os.write(fd, b"\0" * 8)
    finally:
        os.close(fd)


# --- the cache ----------------------------------------------------------------------------------


def _refuse_to_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(policy: SeccompPolicy) -> bytes:
        raise AssertionError("compiled although the cache holds the program")

    monkeypatch.setattr(seccomp, "compile_bpf", refuse)


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_second_call_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = bpf_for(default_policy(), tmp_path)
    assert program == compile_bpf(default_policy())
    [entry] = _entries(tmp_path)
    assert entry.name.startswith("seccomp-")
    assert entry.name.endswith(".bpf")
    assert stat.S_IMODE(entry.stat().st_mode) & 0o022 == 0
    _refuse_to_compile(monkeypatch)
    assert bpf_for(default_policy(), tmp_path) == program


def test_a_cache_hit_loads_neither_pyseccomp_nor_hashlib(tmp_path: Path) -> None:
    bpf_for(default_policy(), tmp_path)
    code = (
        "import sys; from pathlib import Path; from clawpen.sandbox.seccomp import bpf_for, default_policy;"
        "assert bpf_for(default_policy(), Path(sys.argv[1]));"
        "print(sorted({'pyseccomp', 'ctypes', 'hashlib'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_policies_and_libseccomp_have_their_own_entries(tmp_path: Path) -> None:
    small = SeccompPolicy(errno_syscalls=("mount",))
    assert cache_key(small) != cache_key(default_policy())
    assert "libseccomp.so" in cache_key(small)  # a libseccomp upgrade is a new key
    assert bpf_for(small, tmp_path) == compile_bpf(small)
    assert bpf_for(default_policy(), tmp_path) == compile_bpf(default_policy())
    assert len(_entries(tmp_path)) == 2
    assert bpf_for(small, tmp_path) == compile_bpf(small) != compile_bpf(default_policy())


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: data[:-3],
        lambda data: data[:-8],  # still a whole number of instructions: caught by the checksum
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),
        lambda data: b"garbage\n" * 40,
        lambda data: data.replace(b"'mount'", b"'mount!'"),  # an entry for another policy
    ],
    ids=["empty", "torn", "truncated", "bit flip", "garbage", "other key"],
)
def test_a_damaged_entry_is_recompiled_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Callable[[bytes], bytes]
) -> None:
    program = bpf_for(default_policy(), tmp_path)
    [entry] = _entries(tmp_path)
    entry.write_bytes(damage(entry.read_bytes()))
    assert bpf_for(default_policy(), tmp_path) == program
    _refuse_to_compile(monkeypatch)
    assert bpf_for(default_policy(), tmp_path) == program
    assert _entries(tmp_path) == [entry]  # no temporary files left behind


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_an_unusable_cache_dir_still_gives_the_program(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    cache_dir = blocker if where == "a file" else blocker / "cache"
    assert bpf_for(default_policy(), cache_dir) == compile_bpf(default_policy())
    assert blocker.read_text() == "not a directory"


def test_a_missing_cache_dir_is_created_private(tmp_path: Path) -> None:
    cache_dir = tmp_path / "a" / "b"
    bpf_for(default_policy(), cache_dir)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert len(_entries(cache_dir)) == 1


def test_no_cache_dir_compiles() -> None:
    assert bpf_for(default_policy(), None) == compile_bpf(default_policy())


def test_a_cache_dir_others_can_write_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bpf_for(default_policy(), tmp_path)
    [entry] = _entries(tmp_path)
    before = entry.read_bytes()
    tmp_path.chmod(0o777)
    monkeypatch.setattr(seccomp, "compile_bpf", lambda policy: b"\x06\0\0\0\0\0\xff\x7f")
    assert bpf_for(default_policy(), tmp_path) == b"\x06\0\0\0\0\0\xff\x7f"  # not the cached one
    assert entry.read_bytes() == before  # and nothing written there either


def test_an_entry_others_can_write_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = bpf_for(default_policy(), tmp_path)
    [entry] = _entries(tmp_path)
    entry.chmod(0o666)
    assert bpf_for(default_policy(), tmp_path) == program
    assert stat.S_IMODE(entry.stat().st_mode) & 0o022 == 0
    _refuse_to_compile(monkeypatch)
    assert bpf_for(default_policy(), tmp_path) == program
