"""The seccomp filter refuses device nodes (mknod/mknodat of S_IFCHR or S_IFBLK) with EPERM,
while FIFOs and regular files made with mknod still work.

As in test_seccomp_filter.py, the probe runs under ``bwrap --ro-bind / / ... --unshare-pid``
started as root and so keeps root's capabilities: without the filter the kernel lets it make a
device node (the positive control, in a scratch folder, removed at once), so the filter's EPERM
cannot come from the kernel's own CAP_MKNOD check. A real bot (``clawpen run``) gets the same
answer, and can still make a FIFO.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import PY, Clawpen, host_py

from clawpen.sandbox.seccomp import bpf_for, default_policy, export_pfc, program_fd

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

# argv[1]: a writable folder. Each call in order; prints {name: "ok" | errno name}.
PROBE = r"""
import ctypes, errno, json, os, stat, sys
folder = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NULL_DEV = os.makedev(1, 3)
out = {}

def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as err:
        out[name] = errno.errorcode.get(err.errno, str(err.errno))

def raw_mknod(path, mode, dev):  # the old mknod(2), x86_64 number 133 (libc uses mknodat)
    ctypes.set_errno(0)
    if libc.syscall(ctypes.c_long(133), path.encode(), ctypes.c_ulong(mode), ctypes.c_ulong(dev)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

p = lambda n: os.path.join(folder, n)
attempt("mknodat chr", lambda: os.mknod(p("chr"), stat.S_IFCHR | 0o600, NULL_DEV))
attempt("mknodat blk", lambda: os.mknod(p("blk"), stat.S_IFBLK | 0o600, os.makedev(7, 0)))
attempt("mknod chr", lambda: raw_mknod(p("chr2"), stat.S_IFCHR | 0o600, NULL_DEV))
attempt("mknodat chr with extra bits", lambda: os.mknod(p("chr3"), stat.S_IFCHR | 0o7777, NULL_DEV))
attempt("mknodat fifo", lambda: os.mknod(p("fifo"), stat.S_IFIFO | 0o600))
attempt("mkfifo", lambda: os.mkfifo(p("fifo2"), 0o600))
attempt("mknodat regular", lambda: os.mknod(p("reg"), stat.S_IFREG | 0o600))
attempt("mknod fifo", lambda: raw_mknod(p("fifo3"), stat.S_IFIFO | 0o600, 0))
made = {n: stat.S_IFMT(os.lstat(p(n)).st_mode) for n in os.listdir(folder)}
for n in list(made):
    os.unlink(p(n))
out["made"] = sorted(n for n, kind in made.items() if kind in (stat.S_IFCHR, stat.S_IFBLK))
print(json.dumps(out))
"""
DEVICES = ("mknodat chr", "mknodat blk", "mknod chr", "mknodat chr with extra bits")
OTHERS = ("mknodat fifo", "mkfifo", "mknodat regular", "mknod fifo")


def _bwrap_probe(folder: Path, program: bytes | None) -> dict[str, object]:
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid"]
    argv += ["--bind", str(folder), str(folder)]
    fds: tuple[int, ...] = ()
    if program is not None:
        fds = (program_fd(program),)
        argv += ["--seccomp", str(fds[0])]
    try:
        proc = subprocess.run(
            [*argv, "--", PY, "-c", PROBE, str(folder)],
            pass_fds=fds,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_the_filter_not_the_kernel_refuses_device_nodes(tmp_path: Path) -> None:
    folder = tmp_path / "nodes"
    folder.mkdir()
    program = bpf_for(default_policy(), tmp_path / "cache")
    control = _bwrap_probe(folder, None)
    filtered = _bwrap_probe(folder, program)
    # positive control: with root's capabilities and no filter, the kernel makes every node
    assert {control[n] for n in (*DEVICES, *OTHERS)} == {"ok"}, control
    assert len(control["made"]) == len(DEVICES)  # type: ignore[arg-type]
    # the same calls under the filter: EPERM for device nodes, the rest still works
    assert {filtered[n] for n in DEVICES} == {"EPERM"}, filtered
    assert {filtered[n] for n in OTHERS} == {"ok"}, filtered
    assert filtered["made"] == []
    assert os.listdir(folder) == []  # the probe removed what it made
    # every ABI carries the rule (i386 and x32 have their own mknod numbers)
    pfc = export_pfc(default_policy())
    for nr in (133, 259, 14, 297, 133 | 0x40000000, 259 | 0x40000000):
        assert f"({nr})" in pfc, nr


def test_a_bot_cannot_make_a_device_node_but_can_make_a_fifo(clawpen: Clawpen, pub: Path) -> None:
    res = clawpen.run("--", PY, "-c", PROBE, "/tmp")
    assert res.rc == 0, res.err
    inside = res.json()
    assert {inside[n] for n in DEVICES} == {"EPERM"}, inside
    assert {inside[n] for n in OTHERS} == {"ok"}, inside
    assert inside["made"] == []
    # control: host root makes the same node in a scratch folder (the probe removes it again)
    host = host_py(PROBE, str(pub)).json()
    assert {host[n] for n in DEVICES} == {"ok"}, host
    assert not [n for n in os.listdir(pub) if stat.S_ISCHR(os.lstat(pub / n).st_mode)]
